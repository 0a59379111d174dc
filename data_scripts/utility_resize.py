"""Resize or crop a folder of images to squares of a given resolution (for custom datasets).

Resize types (LANCZOS resampling):
  reshape      resize to RxR, ignoring the aspect ratio;
  center_crop  crop the centred square of side min(w, h, R) (min(w, h) with --downscale) and resize
               it to RxR when its side differs from R;
  random_crop  --repeat-n such crops at random offsets, saved as <stem>_reNN<suffix>; the offsets come
               from default_rng([seed, crc32(file name)]), so they do not depend on file order or workers.
Without --downscale, crops of larger images are taken at native scale (the original's behaviour);
with it, the whole short side is cropped and scaled down to R. Every output keeps its input's format.

    python utility_resize.py --in-path raw/ --out-path ../datasets/custom/train_data \
        --resolution 64 --resize-type center_crop --downscale
"""
import argparse
import os
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())


def crop_side(width, height, args):
    return min(width, height) if args.downscale else min(width, height, args.resolution)


def square(image, left, top, side, resolution):
    crop = image.crop((left, top, left + side, top + side))
    return crop if side == resolution else crop.resize((resolution, resolution), Image.LANCZOS)


def process(job):
    """Write the output image(s) of one input file."""
    src, out_dir, args = job
    with Image.open(src) as opened:
        image = opened.convert(args.mode)
    width, height = image.size
    res = args.resolution
    if args.resize_type == "reshape":
        image.resize((res, res), Image.LANCZOS).save(out_dir / src.name)
        return
    side = crop_side(width, height, args)
    if args.resize_type == "center_crop":
        square(image, (width - side) // 2, (height - side) // 2, side, res).save(out_dir / src.name)
        return
    rng = np.random.default_rng([args.seed, zlib.crc32(src.name.encode())])
    for k in range(args.repeat_n):
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        square(image, left, top, side, res).save(out_dir / f"{src.stem}_re{k:02d}{src.suffix}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-path", type=Path, required=True, help="folder of input images")
    parser.add_argument("--out-path", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--resolution", type=int, required=True, help="side R of the output squares")
    parser.add_argument("--resize-type", choices=("center_crop", "random_crop", "reshape"), required=True)
    parser.add_argument("--repeat-n", type=int, default=4, help="random crops per image (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random crops (default 0)")
    parser.add_argument("--downscale", action="store_true", help="crop the whole short side and scale it to R")
    parser.add_argument("--mode", choices=("RGB", "L"), default="RGB", help="output colours (default RGB)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    if not args.in_path.is_dir():
        sys.exit(f"error: {args.in_path} is not a folder")

    sources = sorted(p for p in args.in_path.iterdir()
                     if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not sources:
        sys.exit(f"error: no image files in {args.in_path}")
    args.out_path.mkdir(parents=True, exist_ok=True)
    jobs = [(src, args.out_path, args) for src in sources]
    if args.workers <= 1 or len(jobs) == 1:
        for job in jobs:
            process(job)
    else:
        with ProcessPoolExecutor(min(args.workers, len(jobs))) as pool:
            list(pool.map(process, jobs, chunksize=64))
    print(f"wrote {args.resize_type} {args.resolution}x{args.resolution} images of {len(jobs)} files "
          f"into {args.out_path}")


if __name__ == "__main__":
    main()
