"""Decoded cache: a dataset folder decoded once into a uint8 (N, H, W, C) .npy file, then memory-mapped.

The file lives in `<download_dir>/decoded/`, named after the source folder, the resolution and a hash of
the folder listing (names, sizes, modification times), so a changed folder gets a new file. It is written
to a temporary name and renamed when complete; processes that build it at the same time write identical
contents, and the page cache shares the map between DataLoader workers and ranks.
"""
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
    return path
