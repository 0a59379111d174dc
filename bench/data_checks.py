"""Time the checks of every file of a folder dataset against decoding the files, in files per second.

    python bench/data_checks.py [--small 3000] [--large 20] [--folder DIR ...]

Without --folder, writes two folders into a temporary directory: `--small` random 64x64 RGB PNGs and
`--large` random 1024x1024 RGB PNGs (FFHQ's size). For each folder, one JSON line: the first check
(each file's pages dropped from the page cache first with posix_fadvise, where the file system honours
it), a warm check (a new process would pay this), a re-open in the same process (verdicts remembered:
one stat per file) and a full decode to 64x64 (what reading the images costs), in files per second.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from efficient_vdvae_core.data import checks
from efficient_vdvae_core.data.decode import decode_image


def write_pngs(folder, count, side):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:05d}.png", compress_level=1)
    return folder


def drop_from_page_cache(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_per_second(names, run):
    start = time.perf_counter()
    run()
    return round(len(names) / (time.perf_counter() - start))


def measure(folder):
    names = sorted(p.name for p in folder.iterdir())
    paths = [str(folder / name) for name in names]
    check = lambda: checks.bad_files(str(folder), names, "image", checks.image_file_problem)  # noqa: E731
    drop_from_page_cache(paths)
    first = files_per_second(names, check)
    checks._verdicts.clear()
    warm = files_per_second(names, check)
    reopen = files_per_second(names, check)
    decode = files_per_second(names[:200], lambda: [decode_image(p, 64, 3) for p in paths[:200]])
    size = Image.open(paths[0]).size
    return {"folder": str(folder), "files": len(names), "image": f"{size[0]}x{size[1]}",
            "mean_file_bytes": round(sum(os.path.getsize(p) for p in paths) / len(paths)),
            "check_first_files_per_s": first, "check_warm_files_per_s": warm,
            "reopen_files_per_s": reopen, "decode_files_per_s": decode}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=3000)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--folder", action="append", default=[], help="time this folder instead (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = [Path(f) for f in args.folder] or [write_pngs(Path(tmp) / "small", args.small, 64),
                                                     write_pngs(Path(tmp) / "large", args.large, 1024)]
        for folder in folders:
            print(json.dumps(measure(folder)), flush=True)


if __name__ == "__main__":
    main()
