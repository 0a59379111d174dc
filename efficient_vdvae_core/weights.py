"""Model weights outside a training state, framework-neutral: what fine-tuning and synthesis load.

Every checkpoint reader of either framework returns `Weights`: parameters as float32 NumPy arrays
named and laid out as the PyTorch model's state_dict (OIHW kernels, (1, C, H, W) `scale_bias` and
`trainable_h`), which is also the original code's naming, so one shape check and one config rule serve
every format and both frameworks.
"""
from dataclasses import dataclass, fields
from pathlib import Path

from efficient_vdvae_core.config import ConfigError, config_from_dict, is_binarized
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.params import torch_key_order

MODEL_DATA_KEYS = ("channels", "target_res", "num_bits")  # [data] keys the weights depend on


class WeightsError(UserError):
    """Weights that cannot be used for this run, with the file named."""


@dataclass(frozen=True)
class Weights:
    """Raw and EMA parameters with where they came from."""
    params: dict  # torch state_dict name -> NumPy array (PyTorch layout)
    ema: dict | None  # the same for the EMA weights; None when the checkpoint has none
    step: int  # training iterations completed when the checkpoint was written
    config_dict: dict | None  # Config.to_dict() stored with the checkpoint; None for the original's files
    source: Path
    kind: str  # what wrote it, e.g. 'torch', 'jax', 'original-torch'

    def shapes(self, which="params"):
        tree = self.params if which == "params" else self.ema
        return {name: tuple(value.shape) for name, value in tree.items()}


def shape_mismatch(expected, found):
    """'' when the {name: shape} dicts agree, else what differs (the first few names of each kind, in the
    PyTorch model's state_dict order, so that both frameworks name the same ones)."""
    missing = sorted((k for k in expected if k not in found), key=torch_key_order)
    unexpected = sorted((k for k in found if k not in expected), key=torch_key_order)
    mismatched = [f"{k} {tuple(found[k])} vs {tuple(expected[k])}" for k in sorted(expected, key=torch_key_order)
                  if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if mismatched:
        parts.append("shape mismatch (checkpoint vs config): " + ", ".join(mismatched[:3]))
    if missing:
        parts.append("missing: " + ", ".join(missing[:3]))
    if unexpected:
        parts.append("unexpected: " + ", ".join(unexpected[:3]))
    return "; ".join(parts)


def check_fits(weights, expected_shapes, what="does not match the model of this config"):
    """WeightsError unless the raw (and EMA) weights have exactly the parameters of `expected_shapes`."""
    for which in ("params", "ema"):
        if getattr(weights, which) is None:
            continue
        problem = shape_mismatch(expected_shapes, weights.shapes(which))
        if problem:
            label = "" if which == "params" else " (EMA weights)"
            raise WeightsError(f"{weights.source}{label}: {what}; {problem}")


def stored_config(config_dict, source):
    """The Config stored with a checkpoint; WeightsError if it cannot be read."""
    try:
        return config_from_dict(config_dict, source=f"{source} (stored config)")
    except ConfigError as exc:
        raise WeightsError(f"{source}: its stored config cannot be read ({exc})") from None


def model_config(weights, run_config, log=print):
    """The config to build the model with: the run's, with [model] and [loss] stored with the weights.

    Weights of the original code store no config: the run's config describes their model. Weights
    trained for other data (channels, resolution, bit depth, binarized or not) are refused.
    """
    if weights.config_dict is None:
        return run_config
    source = weights.source
    stored = stored_config(weights.config_dict, source)
    run_data, ckpt_data = run_config.data, stored.data
    differ = [f"[data] {k} = {getattr(ckpt_data, k)} in the checkpoint but {getattr(run_data, k)} in the run config"
              for k in MODEL_DATA_KEYS if getattr(ckpt_data, k) != getattr(run_data, k)]
    if is_binarized(ckpt_data) != is_binarized(run_data):
        differ.insert(0, f"[data] dataset_source = {ckpt_data.dataset_source} in the checkpoint but "
                         f"{run_data.dataset_source} in the run config")
    if differ:
        raise WeightsError(f"{source}: trained for other data than this run: " + "; ".join(differ))
    changed = [f"[{section}] {f.name}" for section in ("model", "loss") for f in fields(getattr(stored, section))
               if getattr(getattr(stored, section), f.name) != getattr(getattr(run_config, section), f.name)]
    if changed:
        log(f"Model built from the config stored in {source}; the run config differs in (ignored): "
            + ", ".join(changed))
    try:
        return run_config.replace(model=stored.model, loss=stored.loss)
    except ConfigError as exc:
        raise UserError(f"{source}: the run config does not fit the checkpoint's model: {exc}") from None
