"""The numbered checkpoints of a run, whatever the framework writes: `checkpoints-<name>/checkpoint_<step><suffix>`.

`step` = the number of completed training iterations; training resumes at that iteration. A codec (one
per framework: a `.pt` file for PyTorch, an Orbax folder for JAX) writes one checkpoint atomically and
reads one back. This module owns everything else, the same for both frameworks:
* numbering and listing;
* reading the newest readable checkpoint, falling back past unreadable ones with a warning that names
  each, and refusing (never starting again from step 0) when checkpoints exist but none can be read;
* pruning to the newest `keep` checkpoints, only after a new one is completely written;
* removing what interrupted writes left behind (only while the caller holds the run's lock);
* the write-failure policy of `[run] checkpoint_write_failure`: 'stop' ends the run in one line,
  'retry' first retries `checkpoint_write_retries` times after 2, 4, 8... seconds.
"""
import errno
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from efficient_vdvae_core.errors import UserError

PREFIX = "checkpoint_"
ORIGINAL_FILE = "original_checkpoint.pt"  # where the original PyTorch code's single checkpoint file is moved
RETRY_BACKOFF_S = 2.0  # first wait before retrying a failed write; doubles at every retry
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}  # the disk, not the code


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the file named."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (the earlier ones are intact)."""


@dataclass
class Checkpoint:
    """What a codec reads back: `meta` (plain values: step, counters, config dict...) and the framework's `state`."""
    meta: dict
    state: Any


class Codec(Protocol):
    """How one framework stores one checkpoint."""
    suffix: str  # appended to checkpoint_<step>: '.pt' for a file, '' for a folder
    collective: bool  # True: every process writes its part (Orbax); False: the main process writes the file

    def write(self, path: Path, checkpoint: Checkpoint) -> None:
        """Write atomically (complete or absent); raise OSError for disk problems."""

    def read(self, path: Path) -> Checkpoint:
        """Read one checkpoint; raise CheckpointError naming `path` when it is unreadable."""

    def is_temporary(self, name: str) -> bool:
        """True for a file or folder name that an interrupted write leaves behind."""

    def extra_candidates(self, directory: Path) -> list:
        """Checkpoints outside the numbering that resuming tries last (e.g. an adopted original file)."""

    def owns(self, path: Path) -> bool:
        """True for a numbered entry this codec wrote (only those are pruned)."""


CHECKSUM_KEY = "payload_sha256"  # meta key of the checksum of all arrays (the first checkpoints with checksums)
PART_CHECKSUMS_KEY = "part_sha256"  # meta key of {part: checksum of its arrays}, e.g. weights, EMA, optimizer
PART_LABELS = {"model_state_dict": "weights", "params": "weights", "ema_model_state_dict": "EMA weights",
               "ema": "EMA weights", "optimizer_state_dict": "optimizer state", "opt_state": "optimizer state",
               "payload": "arrays"}  # the parts as messages name them, alike in both frameworks


def payload_checksum(named_arrays):
    """SHA-256 (hex) of (name, dtype, shape, bytes) of every array, in name order: the checkpoint's payload."""
    digest = hashlib.sha256()
    for name, array in sorted(named_arrays, key=lambda item: item[0]):
        array = np.ascontiguousarray(array)
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.view(np.uint8).reshape(-1).data if array.size else b"")
    return digest.hexdigest()


def part_checksums(parts):
    """{part: payload_checksum} of {part: (name, array) pairs}: stored in the meta, each part verifiable alone."""
    return {part: payload_checksum(named_arrays) for part, named_arrays in parts.items()}


def verify_checksum(path, meta, parts, whole=None):
    """CheckpointError when a checksum stored in `meta` does not match the arrays read.

    `parts`: {part: (name, array) pairs} of the parts read, each checked against its stored checksum;
    `whole()`: every array of the checkpoint, for a checkpoint with one checksum of the whole payload (the
    first ones written with checksums). A checkpoint written without checksums passes.
    """
    stored_parts = meta.get(PART_CHECKSUMS_KEY) or {}
    changed = [part for part, arrays in parts.items()
               if part in stored_parts and payload_checksum(arrays) != stored_parts[part]]
    stored = meta.get(CHECKSUM_KEY)
    if whole is not None and stored is not None and payload_checksum(whole()) != stored:
        changed.append("payload")
    if changed:
        labels = ", ".join(PART_LABELS.get(part, part) for part in changed)
        raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch of its {labels}: they "
                              "changed after it was written, e.g. a flipped bit on disk)")


def os_error_reason(exc):
    """'No space left on device (ENOSPC)' for an OSError."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text} ({name})" if name else text


def remove_path(path):
    """Delete a checkpoint file or folder; a failure is ignored (a leftover costs disk space, nothing else)."""
    try:
        if Path(path).is_dir() and not Path(path).is_symlink():
            shutil.rmtree(path)
        else:
            Path(path).unlink(missing_ok=True)
    except OSError:
        pass


class CheckpointFolder:
    """The checkpoints of one run: `checkpoint_<step><codec.suffix>` entries of one folder."""

    def __init__(self, directory, codec):
        self.directory = Path(directory)
        self.codec = codec
        self._pattern = re.compile(rf"^{PREFIX}(\d+){re.escape(codec.suffix)}$")

    def path(self, step):
        return self.directory / f"{PREFIX}{step}{self.codec.suffix}"

    def list(self):
        """(step, path) of the numbered checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), self.directory / n) for n in os.listdir(self.directory)
                 if (m := self._pattern.match(n))]
        return sorted(found)

    def steps(self):
        return [step for step, _ in self.list()]

    def newest_intact(self):
        """A few words on the newest checkpoint, for the messages of a stopped run."""
        found = self.list()
        if not found:
            return "no checkpoint of this run has been written yet"
        step, path = found[-1]
        return f"the earlier checkpoints are intact (newest: {path.name}, step {step})"

    def remove_temporaries(self):
        """Delete what interrupted writes left in the folder; returns the names. Call it holding the run's lock."""
        if not self.directory.is_dir():
            return []
        names = sorted(n for n in os.listdir(self.directory) if self.codec.is_temporary(n))
        for name in names:
            remove_path(self.directory / name)
        return names

    def latest(self, log=print, extra=()):
        """(path, Checkpoint) of the newest readable checkpoint, or (None, None) when there is none.

        `extra`: further candidate paths tried after the numbered ones (e.g. an adopted original file).
        Raises CheckpointError when candidates exist but none can be read.
        """
        candidates = [p for _, p in reversed(self.list())] + [Path(p) for p in extra if Path(p).exists()]
        problems = []
        for i, path in enumerate(candidates):
            if not path.exists():
                continue  # pruned by a training run since the listing: an older one, never the newest complete one
            try:
                return path, self.codec.read(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                if i + 1 < len(candidates):
                    log(f"warning: {exc}; falling back to {candidates[i + 1].name}")
        if problems:
            raise CheckpointError(f"none of the {len(problems)} checkpoint file(s) in {self.directory} can be read "
                                  f"(newest: {problems[0]}); restore them from a backup, or move them out of the "
                                  "folder to train this run again from step 0")
        return None, None

    def save(self, step, checkpoint, *, keep, on_failure="stop", retries=0, log=print, prune=True):
        """Write checkpoint_<step> by the policy of [run] checkpoint_write_failure, then prune to `keep`.

        A failed write leaves the earlier checkpoints untouched; 'stop' raises CheckpointWriteError at once,
        'retry' first retries `retries` times after 2, 4, 8... s. Pruning deletes only earlier steps.
        """
        attempts = 1 + (retries if on_failure == "retry" else 0)
        path = self.path(step)
        for attempt in range(1, attempts + 1):
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.codec.write(path, checkpoint)
                break
            except OSError as exc:
                reason = os_error_reason(exc)
                if attempt == attempts:
                    tried = f" (tried {attempts} times)" if attempts > 1 else ""
                    hint = ("" if on_failure == "retry" else
                            " (or set [run] checkpoint_write_failure = 'retry' to retry before stopping)")
                    raise CheckpointWriteError(
                        f"could not write checkpoint {path}: {reason}{tried}; {self.newest_intact()}; fix the disk "
                        f"problem and run the same command again to resume{hint}") from None
                delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
                log(f"warning: writing checkpoint {step} failed ({reason}); retry {attempt} of {attempts - 1} "
                    f"in {delay:g} s")
                time.sleep(delay)
        if prune:
            self.prune(step, keep)
        return path

    def prune(self, step, keep):
        """Delete all but the newest `keep` checkpoints of steps <= `step`."""
        for _, old in [(s, p) for s, p in self.list() if s <= step and self.codec.owns(p)][:-keep]:
            remove_path(old)


def adopt_original_file(checkpoints, log=print):
    """If `checkpoints` is the original's single checkpoint FILE, move it to `<checkpoints>/ORIGINAL_FILE`.

    The move goes through `<checkpoints>.original-moving`, so a move interrupted there is completed
    at the next start. Returns the new path, or None when there was nothing to adopt.
    """
    checkpoints = Path(checkpoints)
    staged = checkpoints.with_name(checkpoints.name + ".original-moving")
    if checkpoints.is_file():
        os.replace(checkpoints, staged)
    if not staged.is_file():
        return None
    checkpoints.mkdir(exist_ok=True)
    target = checkpoints / ORIGINAL_FILE
    os.replace(staged, target)
    log(f"Found a checkpoint file of the original code; moved it to {target}")
    return target


def original_candidates(directory, suffix):
    """The original code's checkpoints in a run's folder that our numbering does not list, newest first.

    The adopted PyTorch file (ORIGINAL_FILE), and where our numbered entries end in `suffix` (PyTorch's
    '.pt'), the JAX original's checkpoint_<N> files too (JAX numbering lists those itself).
    """
    from efficient_vdvae_core.original_checkpoints import original_jax_files
    found = [Path(directory) / ORIGINAL_FILE]
    if suffix:
        found += [p for _, p in reversed(original_jax_files(directory))]
    return found


def as_checkpoint(original):
    """The efficient_vdvae_core.checkpoints.Checkpoint of an original checkpoint: its step and a note for the log."""
    if original.exp_avg is None:
        note = "it holds no optimizer state: Adamax starts from zero moments"
    else:
        note = (f"its Adamax moments continue, update count t = {original.optimizer_count}; the original "
                f"{'PyTorch' if original.framework == 'pytorch' else 'JAX'} code would resume at this step too")
    return Checkpoint(meta={"step": original.iteration_step, "original": True, "resume_note": note,
                            "skips": 0, "consecutive_skips": 0},
                      state={"original": original})


def disk_error_message(exc, folder):
    """The one-line message of a run stopped by a full or failing disk (None for other OSErrors)."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_ERRNOS:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    return (f"{where}{os_error_reason(exc)}, a disk problem; {folder.newest_intact()}; fix it and run the same "
            "command again to resume")
