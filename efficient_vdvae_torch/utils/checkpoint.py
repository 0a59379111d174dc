"""Numbered, atomically written checkpoints under checkpoints-<run.name>/, and the original's format.

Layout: `checkpoints-<name>/checkpoint_<step>.pt`, `step` = number of completed training
iterations (training resumes at that iteration). The newest `max_allowed_checkpoints` are kept;
older ones are deleted only after the new one is completely written. A checkpoint of the
original code (one file `checkpoints-<name>` with keys `global_step`, `model_state_dict`, ...)
is recognised and can be resumed from.
"""
import os
import re
from pathlib import Path

import torch

from efficient_vdvae_core.errors import UserError

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
ORIGINAL_KEYS = ("global_step", "model_state_dict", "ema_model_state_dict")


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the file named."""


def checkpoint_path(directory, step):
    return Path(directory) / f"checkpoint_{step}.pt"


def list_checkpoints(directory):
    """(step, path) of the numbered checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / n) for n in os.listdir(directory) if (m := _NAME.match(n))]
    return sorted(found)


def save_checkpoint(directory, step, payload, keep):
    """Write `payload` as checkpoint_<step>.pt via a temp file + rename, then prune to `keep` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(payload, format_version=FORMAT_VERSION), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path, map_location="cpu"):
    """Load one checkpoint file (ours or the original's); CheckpointError names an unreadable file."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, pickle error, wrong file type...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or "model_state_dict" not in state:
        raise CheckpointError(f"{path}: not an Efficient-VDVAE checkpoint (no 'model_state_dict')")
    return state


def is_original_format(state):
    """True for a checkpoint written by the original code (no format_version)."""
    return "format_version" not in state and all(k in state for k in ORIGINAL_KEYS)


def adopt_original_file(checkpoints, log=print):
    """If `checkpoints` is the original's single checkpoint FILE, move it to `<dir>/original_checkpoint.pt`."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_file():
        return None
    staged = checkpoints.with_name(checkpoints.name + ".original-moving")
    os.replace(checkpoints, staged)
    checkpoints.mkdir()
    target = checkpoints / "original_checkpoint.pt"
    os.replace(staged, target)
    log(f"Found a checkpoint file of the original code; moved it to {target}")
    return target


def latest_checkpoint(directory, map_location="cpu", log=print):
    """Newest readable checkpoint as (path, state), falling back past unreadable ones; (None, None) if none."""
    directory = Path(directory)
    candidates = [p for _, p in reversed(list_checkpoints(directory))]
    original = directory / "original_checkpoint.pt"
    if original.is_file():
        candidates.append(original)
    for i, path in enumerate(candidates):
        try:
            return path, read_checkpoint(path, map_location)
        except CheckpointError as exc:
            if i + 1 < len(candidates):
                log(f"warning: {exc}; falling back to {candidates[i + 1].name}")
            else:
                log(f"warning: {exc}; no older checkpoint to fall back to")
    return None, None


def load_model_state(model, state_dict, source):
    """load_state_dict(strict) with a one-line error naming the first mismatching keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("shape mismatch (checkpoint vs config): " + ", ".join(mismatched[:3]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:3]))
        raise CheckpointError(f"{source}: does not match the model of this config; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
