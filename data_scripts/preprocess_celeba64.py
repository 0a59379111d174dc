"""Crop the aligned CelebA images to 148x148 and sort them by the official partition.

Reads `list_eval_partition.txt` (lines 'file partition', 0 = train, 1 = val, 2 = test), crops the
box (left 15, top 40, right 163, bottom 188) of each image of the source folder and saves it under
its file name in <output_dir>/train_data, val_data or synthesis_data. The loader resizes the
148x148 crops to 64x64 (bilinear).

    python preprocess_celeba64.py ../dataset_dumps/img_align_celeba \
        ../dataset_dumps/list_eval_partition.txt ../datasets/celebA
"""
import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

CROP_BOX = (15, 40, 163, 188)
PARTITIONS = {"0": "train_data", "1": "val_data", "2": "synthesis_data"}


def read_partition(path):
    """[(file name, output sub-folder)] from the partition file."""
    if not Path(path).is_file():
        sys.exit(f"error: partition file {path} not found")
    jobs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in PARTITIONS:
            sys.exit(f"error: {path}: line {number}: expected '<file> <0|1|2>', found {line!r}")
        jobs.append((fields[0], PARTITIONS[fields[1]]))
    return jobs


def crop_one(job):
    src, dest, quality = job
    with Image.open(src) as image:
        image.convert("RGB").crop(CROP_BOX).save(dest, quality=quality)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, help="folder img_align_celeba/ of the unzipped images")
    parser.add_argument("partition_file", type=Path, help="list_eval_partition.txt")
    parser.add_argument("output_dir", type=Path, help="receives train_data/, val_data/, synthesis_data/")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the crops (Pillow's default 75)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)

    entries = read_partition(args.partition_file)
    missing = [name for name, _ in entries if not (args.source_dir / name).is_file()]
    if missing:
        sys.exit(f"error: {len(missing)} images of the partition file are missing from {args.source_dir}, "
                 f"e.g. {missing[0]}")
    for folder in PARTITIONS.values():
        (args.output_dir / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(args.source_dir / name, args.output_dir / folder / name, args.quality) for name, folder in entries]
    if args.workers <= 1:
        for job in jobs:
            crop_one(job)
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(crop_one, jobs, chunksize=256))
    counts = {folder: sum(f == folder for _, f in entries) for folder in PARTITIONS.values()}
    print(f"cropped {len(jobs)} images into {args.output_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
