"""The .cfg schema: typed frozen sections, strict parsing and validation, overrides.

A .cfg file is INI: `[section]` headers, `key = value` lines, `#` comments. Values are Python
literals plus simple arithmetic (see `safe_eval.parse_value`). Every key of the original
Efficient-VDVAE configs is required; keys this codebase added are optional (see `Field.default`).
Every problem raises `ConfigError` with one line naming the file, the key and the value.
"""
import configparser
import dataclasses
import difflib
import math
from dataclasses import dataclass

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.safe_eval import UnsafeValueError, parse_value


class ConfigError(UserError, ValueError):
    """A config problem, reported to the user as one line (exit code 2)."""


REQUIRED = object()

DATASET_SOURCES = ("binarized_mnist", "cifar-10", "imagenet", "celebA", "celebAHQ", "ffhq", "custom",
                   "embedded_rgb", "embedded_digits")
# Sources with {0, 1} pixels, a 28x28 digit padded to 32x32, and the Bernoulli output head.
BINARIZED_SOURCES = ("binarized_mnist", "embedded_digits")


def is_binarized(data):
    """True when `data` (a DataConfig) uses binarized digits and the Bernoulli head."""
    return data.dataset_source in BINARIZED_SOURCES
OPTIMIZERS = {"adamax": "Adamax", "adam": "Adam", "radam": "RAdam"}
LR_SCHEMES = ("constant", "cosine", "exponential", "noam")
VARIATION_SCHEDULES = ("None", "Logistic", "Linear")
SYNTHESIS_MODES = ("reconstruction", "generation", "div_stats", "encoding", "decoding")
DISTRIBUTION_BASES = ("std", "logstd")


def field(kind, default=REQUIRED, choices=None, low=None, high=None, low_open=False, doc=""):
    """A config key: its value kind, optional default (keys new in this codebase), and bounds."""
    meta = dict(kind=kind, choices=choices, low=low, high=high, low_open=low_open, doc=doc)
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    name: str = field("name")
    seed: int = field("int", low=0)
    num_gpus: int = field("int", low=0)
    num_cpus: int = field("int", low=0)
    max_allowed_checkpoints: int = field("int", low=1)
    device: str = field("choice", "auto", choices=("auto", "cpu", "cuda"),
                        doc="where to run: auto picks CUDA when available")
    checkpoint_write_failure: str = field("choice", "stop", choices=("stop", "retry"),
                                          doc="when a checkpoint cannot be written (disk full, I/O error): stop "
                                              "with a one-line error, or retry checkpoint_write_retries times first")
    checkpoint_write_retries: int = field("int", 3, low=0,
                                          doc="retries of a failed checkpoint write with 'retry', after 2, 4, 8... s")


@dataclass(frozen=True)
class DataConfig:
    dataset_source: str = field("choice", choices=DATASET_SOURCES)
    train_data_path: str = field("str")
    val_data_path: str = field("str")
    synthesis_data_path: str = field("str")
    target_res: int = field("int", low=1)
    channels: int = field("int", choices=(1, 3))
    num_bits: float = field("float", low=1, high=8)
    random_horizontal_flip: bool = field("bool")
    download_dir: str = field("str", "~/.cache/efficient_vdvae",
                              doc="MNIST/CIFAR-10 downloads and decoded caches (~ expanded, relative to the cwd)")
    decoded_cache: bool = field("bool", False,
                                doc="decode imagenet/folder datasets once into a uint8 .npy memory map under "
                                    "download_dir/decoded (pays off for small images, e.g. celebA 64, imagenet)")
    bad_files: str = field("choice", "refuse", choices=("refuse", "skip"),
                           doc="folder datasets: files that fail the check when opened (empty, broken link, not "
                               "an image, too large, truncated): refuse with a list, or skip them (listed once)")


@dataclass(frozen=True)
class ModelConfig:
    stable_init: bool = field("bool")
    initialize_prior_weights_as_zero: bool = field("bool")
    use_1x1_conv: bool = field("bool")
    distribution_base: str = field("choice", choices=DISTRIBUTION_BASES)
    output_distribution_base: str = field("choice", choices=DISTRIBUTION_BASES)
    gradient_smoothing_beta: float = field("float", low=0, low_open=True)
    output_gradient_smoothing_beta: float = field("float", low=0, low_open=True)
    input_conv_filters: int = field("int", low=1)
    input_kernel_size: tuple = field("kernel")
    up_strides: tuple = field("int_list", low=1)
    up_n_blocks_per_res: tuple = field("int_list", low=0)
    up_n_blocks: tuple = field("int_list", low=0)
    up_n_layers: tuple = field("int_list", low=0)
    up_filters: tuple = field("int_list", low=1)
    up_mid_filters_ratio: tuple = field("float_list", low=0, low_open=True)
    up_kernel_size: tuple = field("int_list", low=1)
    up_skip_filters: tuple = field("int_list", low=1)
    use_residual_distribution: bool = field("bool")
    down_strides: tuple = field("int_list", low=1)
    down_n_blocks_per_res: tuple = field("int_list", low=0)
    down_n_blocks: tuple = field("int_list", low=0)
    down_n_layers: tuple = field("int_list", low=0)
    down_filters: tuple = field("int_list", low=1)
    down_mid_filters_ratio: tuple = field("float_list", low=0, low_open=True)
    down_kernel_size: tuple = field("int_list", low=1)
    down_latent_variates: tuple = field("int_list", low=1)
    output_kernel_size: tuple = field("kernel")
    num_output_mixtures: int = field("int", low=1)


@dataclass(frozen=True)
class LossConfig:
    min_mol_logscale: float = field("float")
    variation_schedule: str = field("choice", choices=VARIATION_SCHEDULES)
    vae_beta_anneal_start: int = field("int", low=0)
    vae_beta_anneal_steps: int = field("int", low=0)
    vae_beta_min: float = field("float", low=0, high=1)
    vae_beta_activation_steps: int = field("int", low=0)
    vae_beta_growth_rate: float = field("float")
    use_gamma_schedule: bool = field("bool")
    gamma_max_steps: int = field("int", low=0)
    scaled_gamma: bool = field("bool")
    use_weight_decay: bool = field("bool")
    l2_weight: float = field("float", low=0)


@dataclass(frozen=True)
class MetricsConfig:
    latent_active_threshold: float = field("float", low=0)


@dataclass(frozen=True)
class OptimizerConfig:
    type: str = field("choice", choices=tuple(OPTIMIZERS.values()))
    learning_rate_scheme: str = field("choice", choices=LR_SCHEMES)
    learning_rate: float = field("float", low=0)
    warmup_steps: float = field("float", low=0)
    decay_steps: int = field("int", low=1)
    decay_start: int = field("int", low=0)
    min_learning_rate: float = field("float", low=0)
    decay_rate: float = field("float", low=0, low_open=True)
    beta1: float = field("float", low=0, high=1)
    beta2: float = field("float", low=0, high=1)
    epsilon: float = field("float", low=0)
    clip_gradient_norm: bool = field("bool")
    gradient_clip_norm_value: float = field("float", low=0, low_open=True)
    gradient_skip: bool = field("bool")
    gradient_skip_threshold: float = field("float", low=0, low_open=True)


@dataclass(frozen=True)
class InitConfig:
    batch_size: int = field("int", low=1)


@dataclass(frozen=True)
class TrainConfig:
    total_train_steps: int = field("int", low=0)
    batch_size: int = field("int", low=1)
    ema_decay: float = field("float", low=0, high=1)
    resume_from_ema: bool = field("bool")
    logging_interval_in_steps: int = field("int", low=1)
    checkpoint_and_eval_interval_in_steps: int = field("int", low=1)
    mixed_precision: str = field("choice", "none", choices=("none", "bf16"),
                                 doc="bf16 autocast of the networks on CUDA (losses stay float32)")
    compile: bool = field("bool", False, doc="torch.compile the model for training")
    activation_checkpointing: bool = field("bool", False, doc="recompute block activations in backward")
    channels_last: bool = field("bool", False, doc="channels-last memory format for convolutions")
    max_consecutive_skips: int = field("int", 100, low=0,
                                       doc="stop when this many updates in a row were skipped (0: never)")


@dataclass(frozen=True)
class ValConfig:
    n_samples_for_validation: int = field("int", low=1)
    batch_size: int = field("int", low=1)


@dataclass(frozen=True)
class SynthesisConfig:
    synthesis_mode: str = field("choice", choices=SYNTHESIS_MODES)
    load_ema_weights: bool = field("bool")
    variate_masks_quantile: float = field("float", low=0, high=1, low_open=True)
    save_target_in_reconstruction: bool = field("bool")
    mask_reconstruction: bool = field("bool")
    div_stats_subset_ratio: float = field("float", low=0, high=1, low_open=True)
    n_generation_batches: int = field("int", low=1)
    temperature_settings: tuple = field("temperatures")
    output_temperature: float = field("float", low=0, low_open=True)
    batch_size: int = field("int", low=1)


@dataclass(frozen=True)
class Config:
    run: RunConfig
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    metrics: MetricsConfig
    optimizer: OptimizerConfig
    init: InitConfig
    train: TrainConfig
    val: ValConfig
    synthesis: SynthesisConfig

    def replace(self, **sections):
        """Return a copy with whole sections replaced, re-validated."""
        new = dataclasses.replace(self, **sections)
        validate(new, "<replace>")
        return new

    def to_dict(self):
        """Nested plain dict of every value (lists as lists), e.g. for checkpoints and JSON."""
        return {s.name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, s.name)).items()}
                for s in dataclasses.fields(self)}


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
SECTIONS = {name: globals()[cls] if isinstance(cls, str) else cls for name, cls in SECTIONS.items()}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def section_fields(section):
    """The dataclass fields of one section, by key name."""
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def _where(source, section, key, raw):
    return f"{source}: [{section}] {key} = {raw}"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_bounds(value, meta):
    if meta["kind"] in ("int", "float") and meta["choices"] is not None and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}"
    low, high = meta["low"], meta["high"]
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        return f"must be {'>' if meta['low_open'] else '>='} {low}"
    if high is not None and value > high:
        return f"must be <= {high}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be finite"
    return None


def _coerce_temperature(item):
    if _is_number(item):
        return float(item)
    if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str):
        if item[0] != "linear":
            raise TypeError(f"unknown temperature function {item[0]!r} (known: 'linear')")
        if not (_is_number(item[1]) and _is_number(item[2])):
            raise TypeError("('linear', a, b) needs two numbers")
        return ("linear", float(item[1]), float(item[2]))
    if isinstance(item, list) and item and all(_is_number(t) for t in item):
        return tuple(float(t) for t in item)
    raise TypeError("each temperature setting must be a number, ('linear', a, b) or a list of numbers")


def coerce(value, meta):
    """Check one evaluated value against its field kind; return the normalised value or raise TypeError."""
    kind = meta["kind"]
    if kind == "name":
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError("expected True or False")
        return value
    if kind == "int":
        if not _is_int(value):
            raise TypeError("expected an integer")
        out = value
    elif kind == "float":
        if not _is_number(value):
            raise TypeError("expected a number")
        out = float(value)
    elif kind == "choice":
        choices = meta["choices"]
        if value is None and "None" in choices:
            value = "None"
        if isinstance(value, str):
            lowered = {str(c).lower(): c for c in choices}
            if choices == tuple(OPTIMIZERS.values()):
                lowered = {k: v for k, v in OPTIMIZERS.items()}
            if value.lower() in lowered:
                return lowered[value.lower()]
        if value in choices:
            return value
        raise TypeError(f"expected one of {', '.join(map(str, choices))}")
    elif kind == "kernel":
        if _is_int(value):
            value = (value, value)
        if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value)):
            raise TypeError("expected a kernel size: an integer or a pair (kh, kw) of positive integers")
        return tuple(value)
    elif kind in ("int_list", "float_list"):
        if not isinstance(value, (list, tuple)) or not value:
            raise TypeError("expected a non-empty list")
        check = _is_int if kind == "int_list" else _is_number
        if not all(check(v) for v in value):
            raise TypeError(f"expected a list of {'integers' if kind == 'int_list' else 'numbers'}")
        out = tuple(v if kind == "int_list" else float(v) for v in value)
        for v in out:
            problem = _check_bounds(v, meta)
            if problem:
                raise TypeError(f"every element {problem} (found {v})")
        return out
    elif kind == "temperatures":
        if not isinstance(value, (list, tuple)) or not value:
            raise TypeError("expected a non-empty list of temperature settings")
        return tuple(_coerce_temperature(item) for item in value)
    else:
        raise AssertionError(kind)
    problem = _check_bounds(out, meta)
    if problem:
        raise TypeError(problem)
    return out


def evaluate_raw(section, key, raw):
    """Evaluate a raw string for (section, key); the run name is taken verbatim, quotes stripped."""
    meta = section_fields(section)[key].metadata
    if meta["kind"] == "name":
        try:
            value = parse_value(raw)
        except ValueError:
            value = raw.strip()
        return value if isinstance(value, str) else raw.strip()
    return parse_value(raw)


@dataclass
class RawConfig:
    """The raw value strings of a .cfg file, by section and key, with the file's text."""
    source: str
    text: str
    values: dict  # section -> {key -> raw string}

    def get(self, section, key):
        return self.values.get(section, {}).get(key)


def read_raw(path):
    """Read a .cfg file into a RawConfig without evaluating anything."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (pass --config PATH)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text config file (byte {exc.start} is not UTF-8)") from None
    return parse_raw_text(text, str(path))


def parse_raw_text(text, source):
    """Parse INI text into a RawConfig, refusing unknown sections and keys."""
    parser = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=None, default_section="\0none")
    parser.optionxform = str
    try:
        parser.read_string(text, source=source)
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"{source}: line {exc.lineno}: key '{exc.option}' appears twice in [{exc.section}]") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{source}: line {exc.lineno}: section [{exc.section}] appears twice") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"{source}: line {exc.lineno}: a key appears before any [section] header") from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0] if exc.errors else (0, "")
        raise ConfigError(f"{source}: line {lineno}: cannot parse {line.strip()!r} (expected 'key = value')") from None
    values = {}
    for section in parser.sections():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        known = section_fields(section)
        for key, raw in parser.items(section):
            if key not in known:
                hint = _closest(key, known)
                raise ConfigError(f"{source}: unknown key [{section}] {key}" + (f" (did you mean {hint}?)" if hint else ""))
        values[section] = dict(parser.items(section))
    return RawConfig(source=source, text=text, values=values)


def _closest(key, known):
    match = difflib.get_close_matches(key, list(known), n=1)
    return match[0] if match else None


def parse_override(text):
    """Split 'section.key=value' into (section, key, raw value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text}: expected section.key=value, e.g. --set train.batch_size=8")
    lhs, raw = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"--set {text}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
    if key not in section_fields(section):
        hint = _closest(key, section_fields(section))
        raise ConfigError(f"--set {text}: unknown key [{section}] {key}" + (f" (did you mean {hint}?)" if hint else ""))
    return section, key, raw.strip()


def with_overrides(raw, overrides):
    """Return a RawConfig with `--set` overrides (list of 'section.key=value') applied."""
    values = {s: dict(kv) for s, kv in raw.values.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        values.setdefault(section, {})[key] = value
    return RawConfig(source=raw.source, text=render_text(raw.text, values), values=values)


def render_text(text, values):
    """Rewrite `text` so that each key holds its raw value from `values` (comments kept)."""
    lines = text.splitlines()
    out, section, seen = [], None, set()
    section_end = {}
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
        elif section and "=" in stripped and not stripped.startswith(("#", ";")):
            key = stripped.split("=", 1)[0].strip()
            if key in values.get(section, {}):
                line = f"{key} = {values[section][key]}"
                seen.add((section, key))
        out.append(line)
        if section:
            section_end[section] = len(out)
    inserts = {}
    for sec, kv in values.items():
        for key, raw in kv.items():
            if (sec, key) not in seen:
                inserts.setdefault(sec, []).append(f"{key} = {raw}")
    for sec in sorted(inserts, key=lambda s: -section_end.get(s, len(out) + 1)):
        if sec in section_end:
            out[section_end[sec]:section_end[sec]] = inserts[sec]
        else:
            out += ["", f"[{sec}]"] + inserts[sec]
    return "\n".join(out) + "\n"


def build_config(raw):
    """Evaluate, type-check and validate a RawConfig into a frozen Config."""
    sections = {}
    for section, cls in SECTIONS.items():
        given = raw.values.get(section, {})
        kwargs = {}
        for key, f in section_fields(section).items():
            if key not in given:
                if f.default is dataclasses.MISSING:
                    raise ConfigError(f"{raw.source}: missing key [{section}] {key}")
                continue
            text = given[key]
            try:
                value = evaluate_raw(section, key, text)
            except UnsafeValueError as exc:
                raise ConfigError(f"{_where(raw.source, section, key, text)}: refused, {exc}; write a literal value") from None
            except ValueError as exc:
                raise ConfigError(f"{_where(raw.source, section, key, text)}: {exc}") from None
            try:
                kwargs[key] = coerce(value, f.metadata)
            except TypeError as exc:
                raise ConfigError(f"{_where(raw.source, section, key, text)}: {exc}") from None
        sections[section] = cls(**kwargs)
    config = Config(**sections)
    validate(config, raw.source)
    return config


def load_config(path, overrides=()):
    """Read, override, evaluate and validate a .cfg file; returns (Config, RawConfig)."""
    raw = with_overrides(read_raw(path), overrides)
    return build_config(raw), raw


def validate(config, source):
    """Cross-key checks; raises ConfigError naming the key and value."""
    from efficient_vdvae_core.architecture import build_architecture
    m, d = config.model, config.data
    if not config.run.name or any(c in config.run.name for c in "/\\\0") or config.run.name in (".", ".."):
        raise ConfigError(f"{source}: [run] name = {config.run.name!r}: must be a non-empty name without slashes")
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


def config_to_text(config):
    """Serialise a Config to .cfg text that `build_config` reads back to an equal Config."""
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            if key == "name":
                lines.append(f"{key} = {value}")
            else:
                lines.append(f"{key} = {_literal(value)}")
        lines.append("")
    return "\n".join(lines)


def _literal(value):
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def config_from_dict(data, source="<checkpoint>"):
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    values = {}
    for section, kv in data.items():
        values[section] = {k: (v if k == "name" else _literal(_tuplify(v))) for k, v in kv.items()}
    return build_config(RawConfig(source=source, text="", values=values))


def _tuplify(value):
    if isinstance(value, list):
        if len(value) == 3 and isinstance(value[0], str):
            return tuple(value)
        return tuple(_tuplify(v) for v in value)
    return value


def differing_keys(a, b):
    """Keys (as 'section.key') whose values differ between two Configs."""
    out = []
    da, db = a.to_dict(), b.to_dict()
    for section in da:
        for key in da[section]:
            if da[section][key] != db[section].get(key):
                out.append(f"{section}.{key}")
    return out
