"""Numbered, atomically written checkpoints under checkpoints-<run.name>/, and the original's format.

Layout: `checkpoints-<name>/checkpoint_<step>.pt`, `step` = number of completed training
iterations (training resumes at that iteration). A checkpoint is written to a hidden temporary file
(`.checkpoint_<step>.pt.tmp-<pid>`), flushed to disk and renamed, so a `checkpoint_<step>.pt` is
always complete; a temporary file left by a killed process is ignored by readers and removed at the
next training start. The newest `max_allowed_checkpoints` are kept; older ones are deleted only after
the new one is completely written. Readers fall back past unreadable files to the newest readable
one, and refuse (rather than start from scratch) when none is readable. A checkpoint of the original
code (one file `checkpoints-<name>` with keys `global_step`, `model_state_dict`, ...) is recognised
and can be resumed from.
"""
import errno
import os
import re
import time
import warnings
import zipfile
from pathlib import Path

import torch

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import fsync_dir

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
_TEMPORARY = re.compile(r"^\.checkpoint_\d+\.pt\.tmp-\d+$")
ORIGINAL_KEYS = ("global_step", "model_state_dict", "ema_model_state_dict")
RETRY_BACKOFF_S = 2.0  # first wait before retrying a failed checkpoint write; doubles at every retry


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the file named."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (the earlier ones are intact)."""


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
    """Write `payload` as checkpoint_<step>.pt via a temp file + rename, then prune to `keep` files.

    On any failure (disk full, I/O error, interruption) the temporary file is removed, the exception
    propagates and the existing checkpoints are untouched. Pruning only deletes checkpoints of earlier
    steps, and a failure to delete one is ignored.
    """
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
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # left for remove_temporaries at the next start; the original error matters
        raise
    fsync_dir(directory)
    for _, old in [(s, p) for s, p in list_checkpoints(directory) if s <= step][:-keep]:
        try:
            old.unlink(missing_ok=True)
        except OSError:
            pass  # an old checkpoint left behind costs disk space, nothing else
    return final


def write_checkpoint(directory, step, payload, keep, on_failure="stop", retries=0, log=print):
    """`save_checkpoint`, with a policy for an OSError (disk full, I/O error...): 'stop' raises
    CheckpointWriteError at once, 'retry' first retries `retries` times after 2, 4, 8... seconds."""
    attempts = 1 + (retries if on_failure == "retry" else 0)
    for attempt in range(1, attempts + 1):
        try:
            return save_checkpoint(directory, step, payload, keep)
        except OSError as exc:
            reason = os_error_reason(exc)
            if attempt == attempts:
                tried = f" (tried {attempts} times)" if attempts > 1 else ""
                raise CheckpointWriteError(
                    f"could not write checkpoint {checkpoint_path(directory, step)}: {reason}{tried}; "
                    f"{newest_intact(directory)}; fix the disk problem and run the same command again to resume "
                    "(or set [run] checkpoint_write_failure = 'retry')") from None
            delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
            log(f"warning: writing checkpoint {step} failed ({reason}); retry {attempt} of {attempts - 1} "
                f"in {delay:g} s")
            time.sleep(delay)


def os_error_reason(exc):
    """'No space left on device (ENOSPC)' for an OSError."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text} ({name})" if name else text


def newest_intact(directory):
    """A few words on the newest checkpoint in `directory`, for messages of a stopped run."""
    found = list_checkpoints(directory)
    if not found:
        return "no checkpoint of this run has been written yet"
    step, path = found[-1]
    return f"the earlier checkpoints are intact (newest: {path.name}, step {step})"


def remove_temporaries(directory):
    """Delete the temporary files of interrupted checkpoint writes in `directory`; returns their names.

    Call it only while no other process writes checkpoints there (training holds the run's lock).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = sorted(n for n in os.listdir(directory) if _TEMPORARY.match(n))
    for name in names:
        (directory / name).unlink(missing_ok=True)
    return names



def read_checkpoint(path, map_location="cpu"):
    """Load one checkpoint file (ours or the original's); CheckpointError names an unreadable file."""
    try:
        with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, pickle error, wrong file type...
        raise CheckpointError(f"{path}: unreadable checkpoint ({_unreadable_reason(path, exc)})") from None
    if not isinstance(state, dict) or "model_state_dict" not in state:
        raise CheckpointError(f"{path}: not an Efficient-VDVAE checkpoint (no 'model_state_dict')")
    return state


def _unreadable_reason(path, exc):
    """Why torch.load failed, in a few words (torch's own messages run over many lines)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, EOFError) or os.path.getsize(path) == 0:
        return "empty or truncated file"
    if not zipfile.is_zipfile(path):
        return "truncated, or not a PyTorch checkpoint: no complete zip archive"
    text = str(exc).split("WeightsUnpickler error:", 1)[-1].strip()
    return f"corrupt: {type(exc).__name__}: {text.splitlines()[0][:200] if text else '(no message)'}"


def is_original_format(state):
    """True for a checkpoint written by the original code (no format_version)."""
    return "format_version" not in state and all(k in state for k in ORIGINAL_KEYS)


def adopt_original_file(checkpoints, log=print):
    """If `checkpoints` is the original's single checkpoint FILE, move it to `<dir>/original_checkpoint.pt`.

    The move goes through `<checkpoints>.original-moving`; a move interrupted there is completed.
    """
    checkpoints = Path(checkpoints)
    staged = checkpoints.with_name(checkpoints.name + ".original-moving")
    if checkpoints.is_file():
        os.replace(checkpoints, staged)
    if not staged.is_file():
        return None
    checkpoints.mkdir(exist_ok=True)
    target = checkpoints / "original_checkpoint.pt"
    os.replace(staged, target)
    log(f"Found a checkpoint file of the original code; moved it to {target}")
    return target


def latest_checkpoint(directory, map_location="cpu", log=print):
    """Newest readable checkpoint as (path, state), falling back past unreadable ones; (None, None) if none.

    Raises CheckpointError when checkpoints exist but none can be read: starting again from step 0 would
    silently throw the run away.
    """
    directory = Path(directory)
    candidates = [p for _, p in reversed(list_checkpoints(directory))]
    original = directory / "original_checkpoint.pt"
    if original.is_file():
        candidates.append(original)
    problems = []
    for i, path in enumerate(candidates):
        if not path.exists():
            continue  # pruned by a training run since the listing: an older one, never the newest complete one
        try:
            return path, read_checkpoint(path, map_location)
        except CheckpointError as exc:
            problems.append(str(exc))
            if i + 1 < len(candidates):
                log(f"warning: {exc}; falling back to {candidates[i + 1].name}")
    if problems:
        raise CheckpointError(f"none of the {len(problems)} checkpoint file(s) in {directory} can be read (newest: "
                              f"{problems[0]}); restore them from a backup, or move them out of the folder to "
                              "train this run again from step 0")
    return None, None


def mismatch_message(own_state, state_dict):
    """'' when `state_dict` fits the keys and shapes of `own_state`, else what differs (first keys of each kind)."""
    missing = [k for k in own_state if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own_state]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                  for k, v in own_state.items() if k in state_dict and state_dict[k].shape != v.shape]
    parts = []
    if mismatched:
        parts.append("shape mismatch (checkpoint vs config): " + ", ".join(mismatched[:3]))
    if missing:
        parts.append("missing: " + ", ".join(missing[:3]))
    if unexpected:
        parts.append("unexpected: " + ", ".join(unexpected[:3]))
    return "; ".join(parts)


def load_model_state(model, state_dict, source):
    """load_state_dict(strict) with a one-line error naming the first mismatching keys."""
    problem = mismatch_message(model.state_dict(), state_dict)
    if problem:
        raise CheckpointError(f"{source}: does not match the model of this config; {problem}")
    model.load_state_dict(state_dict, strict=True)
