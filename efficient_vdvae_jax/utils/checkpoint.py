"""JAX checkpoints: Orbax folders `checkpoints-<name>/checkpoint_<step>/{state,meta}`, and weights of any format.

`state` is the TrainState pytree (params, EMA params, optimizer state, all jax.Arrays); `meta` is JSON
(format_version, step, skips, consecutive_skips, framework, config). Orbax writes each checkpoint into
a temporary folder and renames it when complete; every process takes part in a multi-process save. A
folder of the same step already there (an unreadable one that resuming fell back past) is replaced.
Numbering, fall-back, pruning and the write-failure policy are `efficient_vdvae_core.checkpoints`.
"""
import re
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from efficient_vdvae_core import checkpoint_formats
from efficient_vdvae_core.checkpoints import (PART_CHECKSUMS_KEY, Checkpoint, CheckpointError, as_checkpoint,
                                              original_candidates, part_checksums, verify_checksum)
from efficient_vdvae_core.weights import Weights
from efficient_vdvae_jax.utils.torch_files import read_torch_file

_TEMPORARY = re.compile(r"^checkpoint_\d+\.orbax-checkpoint-tmp")


def _checkpointer():
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _reason(exc):
    """The first line of an Orbax / TensorStore error, without the pointer to TensorStore's details."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". See full TensorStore details", 1)[0][:200]


def named_leaves(tree):
    """(key path, NumPy array) of every leaf of a state pytree (gathered from the devices)."""
    def host(leaf):  # replicated state: every process holds the whole array
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(jax.device_get(leaf))
    return [(jax.tree_util.keystr(path), host(leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def state_parts(state):
    """{part: (key path, NumPy array) pairs} of a state dict's parts (params, ema, opt_state): what checksums cover."""
    return {part: named_leaves(tree) for part, tree in state.items()}


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
    collective = True  # every process writes its shards, Orbax coordinates

    def __init__(self, target=None):
        self.target = target

    def write(self, path, checkpoint):
        checkpoint.meta[PART_CHECKSUMS_KEY] = part_checksums(state_parts(checkpoint.state))
        _checkpointer().save(Path(path).absolute(), args=ocp.args.Composite(
            state=ocp.args.StandardSave(checkpoint.state), meta=ocp.args.JsonSave(checkpoint.meta)), force=True)

    def read(self, path):
        path = Path(path)
        if path.is_file():  # the original code's checkpoint_<N> (JAX) or adopted checkpoints-<name> (PyTorch) file
            from efficient_vdvae_jax.utils.original import read_original_checkpoint
            return as_checkpoint(read_original_checkpoint(path))
        if not path.is_dir():
            raise CheckpointError(f"{path}: not an Orbax checkpoint folder")
        try:
            restored = _checkpointer().restore(path.absolute(), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(self.target), meta=ocp.args.JsonRestore()))
        except Exception as exc:  # a truncated or foreign folder
            raise CheckpointError(f"{path}: unreadable checkpoint ({_reason(exc)})") from None
        verify_checksum(path, restored["meta"], state_parts(restored["state"]),
                        whole=lambda: named_leaves(restored["state"]))
        return Checkpoint(meta=restored["meta"], state=restored["state"])

    def is_temporary(self, name):
        return bool(_TEMPORARY.match(name))

    def owns(self, path):
        """Only our folders are pruned; the original code's checkpoint_<N> files in the folder are never deleted."""
        return Path(path).is_dir()

    def extra_candidates(self, directory):
        return original_candidates(directory, self.suffix)


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


def read_weights(path):
    """Weights (NumPy, PyTorch layout) of any accepted checkpoint (efficient_vdvae_core.checkpoint_formats)."""
    return checkpoint_formats.read_weights(path, read_pt=read_torch_file, read_orbax=read_orbax_weights)


def read_orbax_weights(folder):
    """Weights of one of our Orbax checkpoint folders: params and EMA only (Orbax partial restore)."""
    from efficient_vdvae_core.params import jax_params_to_torch_state_dict
    from efficient_vdvae_core.weights import stored_config
    from efficient_vdvae_jax.model.autoencoder import build_model
    from efficient_vdvae_jax.utils.state import split_model
    meta = read_meta(folder)
    shapes = jax.eval_shape(lambda: split_model(build_model(stored_config(meta["config"], folder)))[1])
    target = on_device({"params": shapes, "ema": shapes}, jax.devices()[0])
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    try:
        state = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        restored = _checkpointer().restore(Path(folder).absolute(), args=ocp.args.Composite(state=state))["state"]
    except Exception as exc:  # a truncated or foreign folder
        raise CheckpointError(f"{folder}: unreadable checkpoint ({_reason(exc)})") from None
    verify_checksum(folder, meta, state_parts(restored))  # the parts read; the optimizer state is not
    to_torch = (lambda tree: jax_params_to_torch_state_dict(jax.tree.map(jax.device_get, tree)))
    return Weights(params=to_torch(restored["params"]), ema=to_torch(restored["ema"]), step=int(meta["step"]),
                   config_dict=meta["config"], source=Path(folder), kind="jax")
