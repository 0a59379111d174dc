"""Decoded cache: a dataset folder decoded once into a uint8 (N, H, W, C) .npy file, then memory-mapped.

The file lives in `<download_dir>/decoded/`, named after the source folder, the resolution and a hash of
the folder listing (names, sizes, modification times), so a changed folder gets a new file. It is written
to a temporary name and renamed when complete. Processes that need a missing file at the same time (the
ranks of a node, or of every node when download_dir is shared) take turns at an flock(2) on `<file>.lock`:
the first decodes, the others wait and then map its file. The page cache shares the map between DataLoader
workers and ranks.
"""
import contextlib
import hashlib
import json
import os
import sys

import numpy as np

from efficient_vdvae_core.data.downloads import download_root


def cache_path(data_cfg, folder, files, shape):
    """Path of the decoded .npy file of `files` under `folder` at `shape` (N, H, W, C)."""
    listing = [(name, *_stat(folder / name)) for name in files]
    key = json.dumps([data_cfg.dataset_source, str(folder), list(shape), listing])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    label = f"{data_cfg.dataset_source}-{folder.name}-{'x'.join(map(str, shape[1:]))}-{digest}.npy"
    return download_root(data_cfg) / "decoded" / label


def _stat(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def decoded_array(data_cfg, folder, files, shape, fill):
    """Path of the decoded .npy of `files`; if missing, `fill(out)` writes the images into a new one."""
    path = cache_path(data_cfg, folder, files, shape)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(path):
        if not path.exists():  # not built by the process that held the lock before
            _build(path, folder, shape, fill)
    return path


@contextlib.contextmanager
def _build_lock(path):
    """Hold an exclusive flock on `<path>.lock` (no lock where the file system has none, e.g. NFS with nolock).

    The holder deletes the lock file: after a build, the processes that still open it find `path` and build
    nothing; after a failed build (a bad image), at worst two processes rebuild at once, with identical files."""
    import fcntl  # POSIX only
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process to decode {path.name}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # ENOLCK: build unlocked; processes building at once write identical contents
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _build(path, folder, shape, fill):
    print(f"decoding {shape[0]} images of {folder} once into {path}", file=sys.stderr, flush=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        fill(out)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
