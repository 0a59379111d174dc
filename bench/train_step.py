"""Time full training steps (forward, loss, backward, clip/skip, optimizer, EMA) of a config.

    python bench/train_step.py --config egs/cifar10_baseline.cfg --batch-size 8 --steps 5 [--framework jax] [--set k=v ...]

Prints one JSON line: median seconds per step, images per second, peak memory (max RSS of the
process on CPU; torch.cuda.max_memory_allocated, or the JAX device's peak_bytes_in_use, on GPU) and
the NELBO of the first step (to check that two variants compute the same thing). Data are random
images, so only the model is timed. JAX: the first (warm-up) step includes compilation; its time
minus the median is reported as `compile_s`, and every timed step waits for its results.

The process keeps freed memory as train.py does (efficient_vdvae_core.allocator; set
EFFICIENT_VDVAE_KEEP_FREED_MEMORY=0 to compare), and the first --warmup steps (default 3) are not
timed: until the allocator has seen a few steps, new pages are still being faulted in.
"""
import argparse
import json
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

from efficient_vdvae_core.allocator import retain_freed_memory
from efficient_vdvae_core.config import is_binarized, load_config
from efficient_vdvae_core.runs import run_paths


def batch_nhwc(config, size, seed=0):
    """A fixed random NumPy batch (B, H, W, C) in the data's range ({0,1} binarized, the 8-bit grid in [-1,1])."""
    rng = np.random.default_rng(seed)
    shape = (size, config.data.target_res, config.data.target_res, config.data.channels)
    if is_binarized(config.data):
        return (rng.random(shape) < 0.3).astype(np.float32)
    return (rng.integers(0, 256, shape).astype(np.float32) / 127.5 - 1).astype(np.float32)


def time_steps(step, warmup, steps):
    """(per-step seconds of the timed steps, first-step seconds, NELBO of the first step)."""
    times, first_time, first_loss = [], None, None
    for i in range(warmup + steps):
        start = time.perf_counter()
        metrics = step()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        first_time = elapsed if first_time is None else first_time
        first_loss = metrics["Losses/nelbo"] if first_loss is None else first_loss
    return times, first_time, first_loss


def run_torch(args, config, tmp):
    kept = retain_freed_memory()  # as torch train.py does
    import torch

    from efficient_vdvae_torch.training import Trainer
    from efficient_vdvae_torch.utils.distributed import DistInfo, pick_device
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(config.run.device)
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    trainer = Trainer(config, run_paths(config.run.name, tmp), dist, log=lambda *a: None)
    images = torch.from_numpy(batch_nhwc(config, args.batch_size).transpose(0, 3, 1, 2).copy()).to(device)
    if config.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        metrics, _ = trainer.train_step(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return metrics

    times, first_time, first_loss = time_steps(step, args.warmup, args.steps)
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"device": str(device), "threads": torch.get_num_threads(), "keep_freed_memory": kept,
            "peak_memory_kind": "cuda_max_allocated" if cuda else "max_rss"}, times, first_time, first_loss, peak


def run_jax(args, config, tmp):
    from efficient_vdvae_jax.utils import cpu
    prepared = cpu.prepare()  # as JAX train.py does, before the first JAX computation
    import jax

    from efficient_vdvae_jax.training import Trainer
    from efficient_vdvae_jax.utils.distributed import make_mesh
    mesh = make_mesh()
    trainer = Trainer(config, run_paths(config.run.name, tmp), mesh=mesh, log=lambda *a: None)
    images = batch_nhwc(config, args.batch_size)
    times, first_time, first_loss = time_steps(lambda: trainer.train_step(images), args.warmup, args.steps)
    trainer.close()
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    peak = stats["peak_bytes_in_use"] if stats else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"device": f"{device.platform} x{mesh.devices.size}", "threads": "xla default", **prepared,
            "peak_memory_kind": "device_peak_bytes_in_use" if stats else "max_rss"}, times, first_time, first_loss, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first (the allocator reaches its steady state in about 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); JAX uses XLA's default thread pool")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.warmup < 1 and args.framework == "jax":
        parser.error("--framework jax needs --warmup >= 1 (the first step compiles)")
    config, _ = load_config(args.config, [f"train.batch_size={args.batch_size}", *args.overrides])
    runner = run_jax if args.framework == "jax" else run_torch
    with tempfile.TemporaryDirectory() as tmp:
        info, times, first_time, first_loss, peak = runner(args, config, tmp)
    median = statistics.median(times)
    record = {"framework": args.framework, "config": args.config, "batch_size": args.batch_size,
              "device": info["device"], "threads": info["threads"], "overrides": args.overrides,
              "steps": args.steps, "median_s_per_step": round(median, 4),
              "images_per_s": round(args.batch_size / median, 3),
              "peak_memory_gib": round(peak / 2 ** 30, 3), "peak_memory_kind": info["peak_memory_kind"],
              "first_step_nelbo": first_loss, "keep_freed_memory": info["keep_freed_memory"]}
    if args.framework == "jax":
        record["eigen_convolutions"] = info["eigen_convolutions"]
        record["compile_s"] = round(max(first_time - median, 0.0), 2)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
