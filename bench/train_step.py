"""Time full training steps (forward, loss, backward, clip/skip, optimizer, EMA) of a config.

    python bench/train_step.py --config egs/cifar10_baseline.cfg --batch-size 8 --steps 5 [--framework jax] [--set k=v ...]

Prints one JSON line: median seconds per step, images per second, peak memory (max RSS of the
process on CPU; torch.cuda.max_memory_allocated, or the JAX device's peak_bytes_in_use, on GPU) and
the NELBO of the first step in the reported unit (to check that two variants compute the same thing) and of
the last (after warmup + steps updates on the same batch).
It also prints the step's FLOP (efficient_vdvae_core.flops: the convolutions and products, backward
counted as 2 x forward), the achieved GFLOP/s, the fp32 and bf16 GEMM and 3x3-convolution peaks measured
afterwards in the same process at the same thread count (bench/peaks.py) and the utilisation: achieved /
the larger peak of the precision the step runs in ([train] mixed_precision).
A step is the training backend's (TorchTrainer / JaxTrainer.train_step with the core's StepValues of
steps 0, 1, ...). Data are random images, so only the model is timed. JAX: the first (warm-up) step
includes compilation; its time minus the median is reported as `compile_s`, and every timed step
waits for its results.

The process keeps freed memory as train.py does (efficient_vdvae_core.allocator; set
EFFICIENT_VDVAE_KEEP_FREED_MEMORY=0 to compare), and the first --warmup steps (default 3) are not
timed: until the allocator has seen a few steps, new pages are still being faulted in.
"""
import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np

from peaks import jax_peaks, torch_peaks

from efficient_vdvae_core.allocator import retain_freed_memory
from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import is_binarized, load_config
from efficient_vdvae_core.evaluation import report_scale
from efficient_vdvae_core.flops import training_step_flops
from efficient_vdvae_core.metrics import effective_pixels
from efficient_vdvae_core.schedules import step_values
from efficient_vdvae_core.training.backend import Dist


def batch_nhwc(config, size, seed=0):
    """A fixed random NumPy batch (B, H, W, C) in the data's range ({0,1} binarized, the 8-bit grid in [-1,1])."""
    rng = np.random.default_rng(seed)
    shape = (size, config.data.target_res, config.data.target_res, config.data.channels)
    if is_binarized(config.data):
        return (rng.random(shape) < 0.3).astype(np.float32)
    return (rng.integers(0, 256, shape).astype(np.float32) / 127.5 - 1).astype(np.float32)


def time_steps(step, warmup, steps):
    """(per-step seconds of the timed steps, first-step seconds, NELBO of the first and last steps in nats per dim)."""
    times, first_time, losses = [], None, []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = step(i)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        first_time = elapsed if first_time is None else first_time
        losses.append(out.recon_nats_per_dim + out.kl_nats_per_dim)
    return times, first_time, (losses[0], losses[-1])


def one_process(n_shards=1):
    return Dist(process_index=0, n_processes=1, n_shards=n_shards, description="1 process")


def make_torch_step(config, images):
    """fn(step) -> StepOutput: one TorchTrainer step on `images` (NumPy NHWC), waiting for the device."""
    import torch

    from efficient_vdvae_torch.backend import TorchDist
    from efficient_vdvae_torch.trainer import TorchTrainer
    from efficient_vdvae_torch.utils.distributed import pick_device
    device = pick_device(config.run.device)
    trainer = TorchTrainer(config, TorchDist(**vars(one_process()), device=device), log=lambda *a: None)
    batch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
    if config.train.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)

    def step(i):
        out = trainer.train_step(batch, step_values(i, config))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out
    return step, device


def make_jax_step(config, images):
    """fn(step) -> StepOutput: one JaxTrainer step on `images` over every device (its results read back)."""
    import jax

    from efficient_vdvae_jax.trainer import JaxTrainer
    trainer = JaxTrainer(config, one_process(jax.device_count()), log=lambda *a: None)
    return (lambda i: trainer.train_step(images, step_values(i, config))), trainer.mesh


def run_torch(args, config):
    kept = retain_freed_memory()  # as torch train.py does
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32 == "on"  # as train.py: on
    torch.backends.cudnn.benchmark = True
    step, device = make_torch_step(config, batch_nhwc(config, args.batch_size))
    times, first_time, losses = time_steps(step, args.warmup, args.steps)
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"device": str(device), "threads": torch.get_num_threads(), "keep_freed_memory": kept,
            "peak_memory_kind": "cuda_max_allocated" if cuda else "max_rss"}, times, first_time, losses, peak


def run_jax(args, config):
    from efficient_vdvae_jax.utils import cpu
    prepared = cpu.prepare()  # as JAX train.py does, before the first JAX computation
    import jax
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if args.tf32 == "on" else "highest")
    step, mesh = make_jax_step(config, batch_nhwc(config, args.batch_size))
    times, first_time, losses = time_steps(step, args.warmup, args.steps)
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    peak = stats["peak_bytes_in_use"] if stats else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"device": f"{device.platform} x{mesh.devices.size}", "threads": "xla default", **prepared,
            "peak_memory_kind": "device_peak_bytes_in_use" if stats else "max_rss"}, times, first_time, losses, peak


def utilisation(config, args, median):
    """FLOP per step, achieved GFLOP/s, the peaks measured now in this process, and achieved / peak."""
    arch = build_architecture(config.model, config.data)
    flop = training_step_flops(arch, config.model.use_1x1_conv, args.batch_size)
    precision = "bf16" if config.train.mixed_precision == "bf16" else "fp32"
    peaks = (jax_peaks if args.framework == "jax" else torch_peaks)(("fp32", "bf16"))
    peak = max(peaks[f"{precision}_gemm_gflops"], peaks[f"{precision}_conv3x3_gflops"])
    achieved = flop / median / 1e9
    return {"flop_per_step": flop, "achieved_gflops": round(achieved, 1), **peaks,
            "peak_precision": precision, "utilisation": round(achieved / peak, 3)}


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
    parser.add_argument("--tf32", choices=("on", "off"), default="on",
                        help="GPU: float32 products in TF32 (train.py's setting) or in full float32")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.warmup < 1 and args.framework == "jax":
        parser.error("--framework jax needs --warmup >= 1 (the first step compiles)")
    config, _ = load_config(args.config, [f"train.batch_size={args.batch_size}", *args.overrides])
    runner = run_jax if args.framework == "jax" else run_torch
    info, times, first_time, losses, peak = runner(args, config)
    median = statistics.median(times)
    e = effective_pixels(config.data)
    scale = e * report_scale(is_binarized(config.data), e)  # nats per dim -> bits/dim or nats/image
    first_loss, last_loss = (loss * scale for loss in losses)
    record = {"framework": args.framework, "config": args.config, "batch_size": args.batch_size,
              "device": info["device"], "threads": info["threads"], "overrides": args.overrides,
              "steps": args.steps, "median_s_per_step": round(median, 4),
              "images_per_s": round(args.batch_size / median, 3),
              "peak_memory_gib": round(peak / 2 ** 30, 3), "peak_memory_kind": info["peak_memory_kind"],
              "first_step_nelbo": first_loss, "last_step_nelbo": last_loss, "tf32": args.tf32,
              "keep_freed_memory": info["keep_freed_memory"]}
    record.update(utilisation(config, args, median))
    if args.framework == "jax":
        record["eigen_convolutions"] = info["eigen_convolutions"]
        record["compile_s"] = round(max(first_time - median, 0.0), 2)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
