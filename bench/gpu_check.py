"""The runs of bench/gpu_check.sh: bench/train_step.py once per (framework, config, variant), within a time budget.

Each run is its own process (its own peak GPU memory), in priority order: the plain fp32 step of every
framework and config first, then bf16, TF32 off, and the PyTorch-only variants. A run that would start
with less than MIN_RUN_S of the budget left is recorded as skipped; one that fails or times out is
recorded with its last line of output. The JSON file holds the machine, the budget and every run.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", 450))  # runs only; start-up and the JSON come on top
RUN_CAP_S = 150
MIN_RUN_S = 30
CONFIGS = ("cifar10_baseline", "ffhq256_8bits_baseline")
VARIANTS = {  # name: (frameworks, train_step.py arguments)
    "fp32_tf32": (("torch", "jax"), ["--tf32", "on"]),
    "bf16": (("torch", "jax"), ["--set", "train.mixed_precision='bf16'"]),
    "fp32_no_tf32": (("torch", "jax"), ["--tf32", "off"]),
    "torch_compile": (("torch",), ["--set", "train.compile=True"]),
    "channels_last": (("torch",), ["--set", "train.channels_last=True"]),
    "activation_checkpointing": (("torch", "jax"), ["--set", "train.activation_checkpointing=True"]),
}


def cuda_device():
    """The CUDA device's name, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def config_batch_size(name):
    from efficient_vdvae_core.config import load_config
    return load_config(REPO / "egs" / f"{name}.cfg")[0].train.batch_size


def plan():
    """(framework, config, variant, arguments) of every run, in priority order."""
    return [(framework, config, variant, args) for variant, (frameworks, args) in VARIANTS.items()
            for config in CONFIGS for framework in frameworks]


def run_one(framework, config, variant, args, timeout):
    """The benchmark's JSON record, or {'error': ...} when it failed or ran past `timeout` seconds."""
    command = [sys.executable, str(BENCH / "train_step.py"), "--config", str(REPO / "egs" / f"{config}.cfg"),
               "--batch-size", str(config_batch_size(config)), "--framework", framework, "--warmup", "2",
               "--steps", "3", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    record = {"wall_s": round(time.perf_counter() - start, 1)}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        return dict(record, error=f"exit code {done.returncode}: {lines[-1]}")
    return dict(record, **json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv):
    device = cuda_device()
    if device is None:
        print("gpu_check.sh: no CUDA device visible to torch (torch.cuda.is_available() is False); nothing run",
              file=sys.stderr)
        return 0
    output = Path(argv[0]) if argv else BENCH / "gpu_check.json"
    started, runs = time.perf_counter(), []
    for framework, config, variant, args in plan():
        left = BUDGET_S - (time.perf_counter() - started)
        row = {"framework": framework, "config": config, "variant": variant}
        if left < MIN_RUN_S:
            runs.append(dict(row, skipped=f"time budget of {BUDGET_S:.0f} s spent"))
            continue
        result = run_one(framework, config, variant, args, min(RUN_CAP_S, left))
        runs.append(dict(row, **result))
        print(json.dumps(runs[-1]), flush=True)
    output.write_text(json.dumps({"device": device, "budget_s": BUDGET_S, "runs": runs}, indent=1) + "\n")
    print(f"gpu_check.sh: {len(runs)} runs in {time.perf_counter() - started:.0f} s written to {output}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
