"""Rules beyond one key's type and bounds: what a run name may be, and the checks across keys."""
import re

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.dataset_kinds import is_binarized
from efficient_vdvae_core.errors import ConfigError

MAX_RUN_NAME_LENGTH = 100
RUN_NAME_RULE = (f"a run name is 1 to {MAX_RUN_NAME_LENGTH} characters among ASCII letters, digits, '.', '_' and "
                 "'-' (no slashes, spaces, quotes or other symbols) and does not start with '.'")
_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def run_name_problem(name):
    """Why `name` cannot name a run (it becomes part of folder and file names), or None when it can."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or len(name) > MAX_RUN_NAME_LENGTH:
        return RUN_NAME_RULE
    return None


def validate(config, source):
    """Cross-key checks of a Config; raises ConfigError naming the key and value."""
    m, d = config.model, config.data
    problem = run_name_problem(config.run.name)
    if problem:
        raise ConfigError(f"{source}: [run] name = {shorten(repr(config.run.name))}: {problem}")
    if is_binarized(d) and (d.channels != 1 or d.target_res != 32):
        raise ConfigError(f"{source}: [data] dataset_source = '{d.dataset_source}' needs channels = 1 and target_res = 32 "
                          f"(found channels = {d.channels}, target_res = {d.target_res})")
    opt = config.optimizer
    if opt.learning_rate_scheme == "cosine" and opt.warmup_steps > opt.decay_start:
        raise ConfigError(f"{source}: [optimizer] warmup_steps = {opt.warmup_steps}: must be <= decay_start "
                          f"({opt.decay_start}) for the cosine schedule")
    if config.loss.use_weight_decay and config.loss.l2_weight == 0:
        raise ConfigError(f"{source}: [loss] l2_weight = 0 with use_weight_decay = True: set l2_weight > 0 "
                          "or use_weight_decay = False")
    for item in config.synthesis.temperature_settings:
        if isinstance(item, tuple) and item and not isinstance(item[0], str) and len(item) != len(m.down_strides):
            raise ConfigError(f"{source}: [synthesis] temperature_settings: a per-level list has {len(item)} "
                              f"entries, expected len(down_strides) = {len(m.down_strides)}")
    try:
        build_architecture(m, d)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def shorten(text, limit=80):
    """`text` cut to `limit` characters with '...' (for values quoted in one-line messages)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
