"""Time full training steps (forward, loss, backward, clip/skip, optimizer, EMA) of a config.

    python bench/train_step.py --config egs/cifar10_baseline.cfg --batch-size 8 --steps 5 [--set k=v ...]

Prints one JSON line: median seconds per step, images per second, peak memory (max RSS of the
process on CPU, torch.cuda.max_memory_allocated on GPU) and the loss of the first step (to check
that two variants compute the same thing). Data are random images, so only the model is timed.
"""
import argparse
import json
import resource
import statistics
import sys
import tempfile
import time

import torch

from efficient_vdvae_core.config import is_binarized, load_config
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_torch.training import Trainer
from efficient_vdvae_torch.utils.distributed import DistInfo, pick_device


def batch(config, size, device, seed=0):
    """A fixed random batch in the data's range ({0,1} for binarized data, the 8-bit grid in [-1,1] otherwise)."""
    g = torch.Generator().manual_seed(seed)
    shape = (size, config.data.channels, config.data.target_res, config.data.target_res)
    if is_binarized(config.data):
        return torch.bernoulli(torch.full(shape, 0.3), generator=g).to(device)
    return (torch.randint(0, 256, shape, generator=g).float() / 127.5 - 1).to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config, _ = load_config(args.config, [f"train.batch_size={args.batch_size}", *args.overrides])
    device = pick_device(config.run.device)
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, run_paths(config.run.name, tmp), dist, log=lambda *a: None)
        images = batch(config, args.batch_size, device)
        if config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        times, first_loss = [], None
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            metrics, _ = trainer.train_step(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            first_loss = metrics["Losses/nelbo"] if first_loss is None else first_loss
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    median = statistics.median(times)
    print(json.dumps({"framework": "torch", "config": args.config, "batch_size": args.batch_size,
                      "device": str(device), "threads": torch.get_num_threads(), "overrides": args.overrides,
                      "steps": args.steps, "median_s_per_step": round(median, 4),
                      "images_per_s": round(args.batch_size / median, 3),
                      "peak_memory_gib": round(peak / 2 ** 30, 3),
                      "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "max_rss",
                      "first_step_nelbo": first_loss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
