"""Model weights from any checkpoint: ours (an Orbax folder checkpoint_<step>/) or a PyTorch file.

A PyTorch checkpoint (ours, `checkpoint_<step>.pt`, or the original's single file) is read with torch
(needed only then) and converted with `efficient_vdvae_jax.convert`, so a model trained in either
framework can be fine-tuned or run for inference here.
"""
from dataclasses import dataclass
from pathlib import Path

import jax

from efficient_vdvae_core.config import ConfigError, config_from_dict
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_jax.utils.checkpoint import CheckpointError, on_device, read_checkpoint, read_meta


@dataclass(frozen=True)
class Weights:
    """Raw and EMA parameters (pure dicts of arrays) with where they came from."""
    params: dict
    ema: dict | None  # None when the checkpoint holds no EMA weights
    step: int  # training iterations completed when the checkpoint was written
    config_dict: dict | None  # the config stored with the checkpoint (None for the original's files)
    source: Path
    framework: str  # 'jax' or 'pytorch'


def stored_config(config_dict, source):
    """The Config stored in a checkpoint; CheckpointError if it cannot be read."""
    try:
        return config_from_dict(config_dict, source=f"{source} (stored config)")
    except ConfigError as exc:
        raise CheckpointError(f"{source}: its stored config cannot be read ({exc})") from None


def read_orbax_state(folder):
    """(TrainState on the first device, meta) of one of our Orbax checkpoint folders, shaped by its stored config."""
    from efficient_vdvae_jax.model.autoencoder import build_model
    from efficient_vdvae_jax.utils.optim import build_direction
    from efficient_vdvae_jax.utils.state import init_state, split_model
    folder = Path(folder)
    config = stored_config(read_meta(folder)["config"], folder)
    shapes = jax.eval_shape(lambda: init_state(split_model(build_model(config))[1], build_direction(config.optimizer)))
    return read_checkpoint(folder, on_device(shapes, jax.devices()[0]))


def read_orbax_weights(folder):
    """Weights of one of our Orbax checkpoint folders."""
    folder = Path(folder)
    state, meta = read_orbax_state(folder)
    return Weights(params=state["params"], ema=state["ema"], step=int(meta["step"]), config_dict=meta["config"],
                   source=folder, framework="jax")


def load_torch_file(path):
    """The dict of a PyTorch checkpoint file (ours or the original's), tensors on the CPU."""
    try:
        import torch
    except ImportError:
        raise UserError(f"{path}: reading a PyTorch checkpoint needs torch (pip install -e '.[torch]')") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model_state_dict" not in state:
        raise CheckpointError(f"{path}: not an Efficient-VDVAE checkpoint (no 'model_state_dict')")
    return state


def read_torch_weights(path):
    """Weights of a PyTorch checkpoint file (ours or the original's), converted to JAX parameters."""
    from efficient_vdvae_jax.convert import torch_state_dict_to_jax
    state = load_torch_file(path)
    ema = state.get("ema_model_state_dict")
    step = int(state["step"]) if "step" in state else int(state.get("global_step", -1)) + 1
    original = "format_version" not in state

    def convert(state_dict):
        return torch_state_dict_to_jax({k: v.detach().cpu().numpy() for k, v in state_dict.items()})
    return Weights(params=convert(state["model_state_dict"]), ema=None if ema is None else convert(ema), step=step,
                   config_dict=None if original else state.get("config"), source=Path(path), framework="pytorch")


def load_weights_file(path, config=None, log=print):
    """Weights of an Orbax checkpoint folder or a PyTorch checkpoint file, shapes checked against `config`."""
    path = Path(path)
    if path.is_dir():
        weights = read_orbax_weights(path)
    elif path.is_file():
        weights = read_torch_weights(path)
    else:
        raise CheckpointError(f"{path}: checkpoint not found")
    if config is not None:
        check_shapes(weights, config)
    return weights


def check_shapes(weights, config):
    """CheckpointError unless the weights have exactly the parameters of `config`'s model."""
    from efficient_vdvae_jax.model.autoencoder import build_model
    from efficient_vdvae_jax.utils.optim import path_name
    from efficient_vdvae_jax.utils.state import split_model
    expected = _shapes(jax.eval_shape(lambda: split_model(build_model(config))[1]), path_name)
    for what, tree in (("weights", weights.params), ("EMA weights", weights.ema)):
        if tree is None:
            continue
        found = _shapes(tree, path_name)
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        mismatched = [f"{k} {found[k]} vs {v}" for k, v in expected.items() if k in found and found[k] != v]
        if missing or unexpected or mismatched:
            parts = ([("shape mismatch (checkpoint vs config): " + ", ".join(mismatched[:3]))] if mismatched else []) + \
                    ([("missing: " + ", ".join(missing[:3]))] if missing else []) + \
                    ([("unexpected: " + ", ".join(unexpected[:3]))] if unexpected else [])
            raise CheckpointError(f"{weights.source}: {what} do not match the model of this config; " + "; ".join(parts))


def _shapes(tree, path_name):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(path): tuple(leaf.shape) for path, leaf in leaves}
