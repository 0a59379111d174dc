"""PyTorch checkpoint files: `checkpoints-<name>/checkpoint_<step>.pt`, and the original code's single file.

A checkpoint is one `torch.save`d dict: the meta of `efficient_vdvae_core.training.loop.TrainingRun.meta`
(format_version, step, skips, consecutive_skips, global_step, framework, config) and the state
(`model_state_dict`, `ema_model_state_dict`, `optimizer_state_dict`). It is written to a hidden temporary
file (`.checkpoint_<step>.pt.tmp-<pid>`), flushed to disk and renamed, so a `checkpoint_<step>.pt` is always
complete. Files are read with `weights_only=True`: no code in a checkpoint ever runs. A checkpoint of the
original code (keys `global_step`, `model_state_dict`, `ema_model_state_dict`, ... and no `format_version`)
is recognised; numbering, fall-back, pruning and the write-failure policy are `efficient_vdvae_core.checkpoints`.
"""
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from efficient_vdvae_core import checkpoint_formats
from efficient_vdvae_core.checkpoints import (PART_CHECKSUMS_KEY, Checkpoint, CheckpointError, as_checkpoint,
                                              original_candidates, part_checksums, verify_checksum)
from efficient_vdvae_core.original_checkpoints import file_kind, parse_original_torch, read_original_jax
from efficient_vdvae_core.runs import fsync_dir
from efficient_vdvae_core.weights import Weights

ORIGINAL_KEYS = ("global_step", "model_state_dict", "ema_model_state_dict")
STATE_KEYS = ("model_state_dict", "ema_model_state_dict", "optimizer_state_dict")
_TEMPORARY = re.compile(r"^\.checkpoint_\d+\.pt\.tmp-\d+$")
MAX_PICKLE_SCAN = 64 << 20  # bytes of a plain pickle read to name what it would import


def named_tensors(tree, prefix=""):
    """(name, NumPy array) of every tensor of a nested dict/list payload (state dicts, optimizer state)."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree.detach().cpu().numpy()
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from named_tensors(value, f"{prefix}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from named_tensors(value, f"{prefix}/{i}")


def state_parts(state):
    """{part: (name, NumPy array) pairs} of the weights, EMA weights and optimizer state present: what checksums cover."""
    return {key: list(named_tensors(state[key])) for key in STATE_KEYS if state.get(key) is not None}


def read_checkpoint(path, map_location="cpu"):
    """The dict of one checkpoint file (ours or the original's); CheckpointError names an unreadable file."""
    try:
        with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, pickle error, wrong file type, pickled code...
        raise _load_error(path, exc) from None
    problem = _structure_problem(state)
    if problem:
        raise CheckpointError(f"{path}: not an Efficient-VDVAE checkpoint ({problem})")
    return state


def _structure_problem(state):
    """Why a loaded object is not a checkpoint dict (model weights as a dict of tensors, a whole-number step), or ''."""
    if not isinstance(state, dict):
        return f"it holds {_describe(state)}, not a dict"
    if "model_state_dict" not in state:
        keys = ", ".join(map(str, list(state)[:4])) + (", ..." if len(state) > 4 else "")
        return f"no 'model_state_dict'; its keys: {keys or 'none'}"
    for key in ("model_state_dict", "ema_model_state_dict"):
        value = state.get(key)
        if value is None and key != "model_state_dict":
            continue
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in value.items()):
            return f"'{key}' is {_describe(value)}, not a dict of named tensors"
    for key in ("step", "global_step", "skips", "consecutive_skips"):
        if key in state and (isinstance(state[key], bool) or not isinstance(state[key], int)):
            return f"'{key}' is {_describe(state[key])}, not a whole number"
    return ""


def _describe(value):
    if isinstance(value, dict):
        return f"a dict of {len(value)} entries"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _load_error(path, exc):
    """The CheckpointError of a file torch.load refused: pickled code is named as such, damage in a few words."""
    names = pickled_globals(path, exc)
    if names:
        return CheckpointError(f"{path}: refused: it holds pickled Python objects that loading would run as code "
                               f"({', '.join(names[:3])}), which no Efficient-VDVAE checkpoint holds; nothing of "
                               "it was run")
    return CheckpointError(f"{path}: unreadable checkpoint ({_unreadable_reason(path, exc)})")


def pickled_globals(path, exc):
    """The Python names (classes, functions) that torch's weights-only loader refused to import from `path`.

    Taken from its message, or, for a plain pickle it cannot even parse, read with pickletools (nothing runs).
    """
    names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    if names or not isinstance(exc, pickle.UnpicklingError):
        return list(dict.fromkeys(names))
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PICKLE_SCAN)
        strings = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a pickle, or cut short: what was found so far stands
        pass
    return list(dict.fromkeys(names))


def _unreadable_reason(path, exc):
    """Why torch.load failed, in a few words (torch's own messages run over many lines)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, EOFError) or os.path.getsize(path) == 0:
        return "empty or truncated file"
    if not zipfile.is_zipfile(path):
        if file_kind(path) == "pickle" and "Unsupported operand" in str(exc):
            return "a plain Python pickle, not a PyTorch checkpoint file"
        return "truncated, or not a PyTorch checkpoint: no complete zip archive"
    text = str(exc).split("WeightsUnpickler error:", 1)[-1].strip()
    return f"corrupt: {type(exc).__name__}: {text.splitlines()[0][:200] if text else '(no message)'}"


def is_original_format(state):
    """True for a checkpoint written by the original code (no format_version)."""
    return "format_version" not in state and all(k in state for k in ORIGINAL_KEYS)


def checkpoint_step(state):
    """Training iterations completed when the file was written (the original stores the last index)."""
    return int(state["step"]) if "step" in state else int(state.get("global_step", -1)) + 1


class TorchCodec:
    """One checkpoint as one .pt file (see the module docstring)."""
    suffix = ".pt"
    collective = False  # one file, written by the main process alone

    def write(self, path, checkpoint):
        path = Path(path)
        checkpoint.meta[PART_CHECKSUMS_KEY] = part_checksums(state_parts(checkpoint.state))
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save({**checkpoint.meta, **checkpoint.state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # left for the next start's clean-up; the original error matters
            raise
        fsync_dir(path.parent)

    def read(self, path):
        if file_kind(path) == "msgpack":  # a checkpoint_<N> file of the original JAX code
            return as_checkpoint(read_original_jax(path))
        state = read_checkpoint(path)
        if is_original_format(state):
            return as_checkpoint(parse_original_torch(state, path))
        meta = {k: v for k, v in state.items() if k not in STATE_KEYS}
        payload = {k: state[k] for k in STATE_KEYS if state.get(k) is not None}
        if not isinstance(payload.get("optimizer_state_dict"), dict):
            raise CheckpointError(f"{path}: not a training checkpoint of this code (no optimizer state to resume with)")
        verify_checksum(path, meta, state_parts(payload), whole=lambda: named_tensors(payload))
        return Checkpoint(meta=meta, state=payload)

    def is_temporary(self, name):
        return bool(_TEMPORARY.match(name))

    def owns(self, path):
        return Path(path).suffix == self.suffix

    def extra_candidates(self, directory):
        """The adopted original PyTorch file, then the original JAX code's checkpoint_<N> files, newest first."""
        return original_candidates(directory, self.suffix)


def read_weights(path):
    """Weights (NumPy, PyTorch layout) of any accepted checkpoint (efficient_vdvae_core.checkpoint_formats)."""
    return checkpoint_formats.read_weights(path, read_pt=read_pt_weights, read_orbax=read_orbax_weights)


def read_orbax_weights(folder):
    """Weights of one of our JAX checkpoint folders, read with Orbax (needs JAX: pip install -e '.[jax]')."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise CheckpointError(f"{folder}: reading a JAX checkpoint needs JAX (pip install -e '.[jax]')") from None
    from efficient_vdvae_core.params import jax_params_to_torch_state_dict
    try:
        with warnings.catch_warnings():  # restoring without a target is what we want here
            warnings.simplefilter("ignore")
            restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
                Path(folder).absolute(), args=ocp.args.Composite(state=ocp.args.PyTreeRestore(),
                                                                 meta=ocp.args.JsonRestore()))
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{folder}: unreadable checkpoint ({reason})") from None
    state, meta = restored["state"], restored["meta"]

    def numpy(tree):
        import numpy as np
        return jax_params_to_torch_state_dict(_map_leaves(tree, np.asarray))
    return Weights(params=numpy(state["params"]), ema=numpy(state["ema"]), step=int(meta["step"]),
                   config_dict=meta.get("config"), source=Path(folder), kind="jax")


def _map_leaves(tree, fn):
    return {k: _map_leaves(v, fn) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def read_pt_weights(path):
    """Weights (NumPy, PyTorch layout) of a PyTorch checkpoint file, ours or the original's."""
    state = read_checkpoint(path)
    original = is_original_format(state)
    weights = {k: state[k] for k in STATE_KEYS[:2] if state.get(k) is not None}
    verify_checksum(path, state, state_parts(weights))  # the parts read; the optimizer state is not

    def numpy(state_dict):
        return None if state_dict is None else {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    return Weights(params=numpy(state["model_state_dict"]), ema=numpy(state.get("ema_model_state_dict")),
                   step=checkpoint_step(state), config_dict=None if original else state.get("config"),
                   source=Path(path), kind="original-torch" if original else "torch")
