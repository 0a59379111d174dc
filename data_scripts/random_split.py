"""Split a folder of images into <output_dir>/train_data and <output_dir>/val_data (seeded, reproducible).

Images are found recursively (so FFHQ's 1000-image sub-folders are flattened) and non-image files
such as LICENSE.txt are left alone. The sorted list of images is permuted with NumPy's
default_rng(seed); the last n_val go to val_data, the rest to train_data. Files are copied, or moved
with --move (fast on one file system, and saves the space of a copy).

    python random_split.py ../dataset_dumps/images1024x1024 ../datasets/ffhq 7000 --seed 0 --move
"""
import argparse
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())


def find_images(folder):
    """Sorted paths of the image files under `folder`, recursively, hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_dir", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("output_dir", type=Path, help="receives train_data/ and val_data/")
    parser.add_argument("n_val", type=int, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--move", action="store_true", help="move the files instead of copying them")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="parallel file copies")
    args = parser.parse_args(argv)
    if not args.input_dir.is_dir():
        sys.exit(f"error: {args.input_dir} is not a folder")

    images = find_images(args.input_dir)
    if not images:
        sys.exit(f"error: no image files under {args.input_dir}")
    if not 0 <= args.n_val <= len(images):
        sys.exit(f"error: n_val = {args.n_val} but {args.input_dir} holds {len(images)} images")
    names = [p.name for p in images]
    if len(set(names)) != len(names):
        sys.exit(f"error: two images under {args.input_dir} share a file name; the output folders are flat")
    order = np.random.default_rng(args.seed).permutation(len(images))
    n_train = len(images) - args.n_val
    plan = [(images[i], args.output_dir / ("train_data" if rank < n_train else "val_data") / images[i].name)
            for rank, i in enumerate(order)]
    for part in ("train_data", "val_data"):
        (args.output_dir / part).mkdir(parents=True, exist_ok=True)
    transfer = shutil.move if args.move else shutil.copy2
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        list(pool.map(lambda job: transfer(*job), plan))
    print(f"{'moved' if args.move else 'copied'} {n_train} images to {args.output_dir / 'train_data'} "
          f"and {args.n_val} to {args.output_dir / 'val_data'} (seed {args.seed})")


if __name__ == "__main__":
    main()
