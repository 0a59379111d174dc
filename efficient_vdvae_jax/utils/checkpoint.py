"""JAX checkpoints: Orbax folders `checkpoints-<name>/checkpoint_<step>/{state,meta}`, and weights of any format.

`state` is the TrainState pytree (params, EMA params, optimizer state, all jax.Arrays); `meta` is JSON
(format_version, step, skips, consecutive_skips, framework, config). Orbax writes each checkpoint into
a temporary folder and renames it when complete; every process takes part in a multi-process save. A
folder of the same step already there (an unreadable one that resuming fell back past) is replaced.
Numbering, fall-back, pruning and the write-failure policy are `efficient_vdvae_core.checkpoints`.
"""
import re
import zipfile
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from efficient_vdvae_core.checkpoints import Checkpoint, CheckpointError
from efficient_vdvae_core.weights import Weights

_TEMPORARY = re.compile(r"^checkpoint_\d+\.orbax-checkpoint-tmp")


def _checkpointer():
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _reason(exc):
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return text


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: a restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def on_device(shapes, device):
    """A restore target: ShapeDtypeStructs (e.g. from jax.eval_shape) placed on one device."""
    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


class OrbaxCodec:
    """One checkpoint as one Orbax folder; `target` (abstract state with shardings) shapes what is read."""
    suffix = ""

    def __init__(self, target=None):
        self.target = target

    def write(self, path, checkpoint):
        _checkpointer().save(Path(path).absolute(), args=ocp.args.Composite(
            state=ocp.args.StandardSave(checkpoint.state), meta=ocp.args.JsonSave(checkpoint.meta)), force=True)

    def read(self, path):
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not an Orbax checkpoint folder")
        try:
            restored = _checkpointer().restore(path.absolute(), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(self.target), meta=ocp.args.JsonRestore()))
        except Exception as exc:  # a truncated or foreign folder
            raise CheckpointError(f"{path}: unreadable checkpoint ({_reason(exc)})") from None
        return Checkpoint(meta=restored["meta"], state=restored["state"])

    def is_temporary(self, name):
        return bool(_TEMPORARY.match(name))

    def extra_candidates(self, directory):
        return []


def read_meta(folder):
    """The JSON meta (step, counters, config dict) of a checkpoint folder checkpoint_<step>/."""
    folder = Path(folder)
    try:
        return _checkpointer().restore(folder.absolute(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as exc:
        raise CheckpointError(f"{folder}: unreadable checkpoint ({_reason(exc)})") from None


def read_orbax_state(folder):
    """(TrainState on the first device, meta) of one of our Orbax folders, shaped by its stored config."""
    from efficient_vdvae_core.weights import stored_config
    from efficient_vdvae_jax.model.autoencoder import build_model
    from efficient_vdvae_jax.utils.optim import build_direction
    from efficient_vdvae_jax.utils.state import init_state, split_model
    meta = read_meta(folder)
    config = stored_config(meta["config"], folder)
    shapes = jax.eval_shape(lambda: init_state(split_model(build_model(config))[1], build_direction(config.optimizer)))
    checkpoint = OrbaxCodec(on_device(shapes, jax.devices()[0])).read(folder)
    return checkpoint.state, checkpoint.meta


def _is_npz(path):
    """True for a NumPy .npz archive (a zip of .npy members; a PyTorch file is a zip of pickles)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def read_weights(path):
    """Weights (NumPy, PyTorch layout) of an Orbax folder, a converted .npz or a PyTorch .pt file."""
    from efficient_vdvae_core.params import jax_params_to_torch_state_dict
    from efficient_vdvae_core.npz_weights import load_jax_params
    path = Path(path)
    if path.is_dir():
        state, meta = read_orbax_state(path)
        to_torch = (lambda tree: jax_params_to_torch_state_dict(jax.tree.map(lambda x: jax.device_get(x), tree)))
        return Weights(params=to_torch(state["params"]), ema=to_torch(state["ema"]), step=int(meta["step"]),
                       config_dict=meta["config"], source=path, kind="jax")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if _is_npz(path):
        saved = load_jax_params(path)
        return Weights(params=jax_params_to_torch_state_dict(saved.params),
                       ema=None if saved.ema is None else jax_params_to_torch_state_dict(saved.ema),
                       step=saved.step, config_dict=saved.config, source=path, kind="npz")
    return read_torch_file(path)


def load_torch_file(path):
    """The dict of a PyTorch checkpoint file (ours or the original's), tensors on the CPU (needs torch only here)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading a PyTorch checkpoint needs torch (pip install -e '.[torch]')") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({_reason(exc)})") from None
    if not isinstance(state, dict) or "model_state_dict" not in state:
        raise CheckpointError(f"{path}: not an Efficient-VDVAE checkpoint (no 'model_state_dict')")
    return state


def read_torch_file(path):
    """Weights of a PyTorch checkpoint file (ours or the original's)."""
    state = load_torch_file(path)
    original = "format_version" not in state
    step = int(state["step"]) if "step" in state else int(state.get("global_step", -1)) + 1

    def numpy(state_dict):
        return None if state_dict is None else {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    return Weights(params=numpy(state["model_state_dict"]), ema=numpy(state.get("ema_model_state_dict")), step=step,
                   config_dict=None if original else state.get("config"), source=path,
                   kind="original-torch" if original else "torch")
