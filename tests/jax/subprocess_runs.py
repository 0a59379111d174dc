"""JAX runs as subprocesses (`python efficient_vdvae_jax/train.py`, i.e. train.py's main) for the JAX tests.

A subprocess can force a CPU device count and shares the session's persistent compilation cache; XLA's
backend optimisation level 0 makes the compilation about three times faster and changes no test.
"""
import os
import subprocess
import sys

from efficient_vdvae_core.runs import run_paths
from tests.conftest import EGS, REPO

FAST = ["val.n_samples_for_validation=8", "val.batch_size=8"]
TRAIN_PY = REPO / "efficient_vdvae_jax" / "train.py"


def jax_env(cache_dir, devices=1):
    """Environment of a JAX subprocess: forced CPU devices, fast compilation, a shared compilation cache."""
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                PYTHONPATH=str(REPO), TQDM_DISABLE="1")


def session_cache(tmp_path_factory):
    """The persistent XLA compilation cache shared by every JAX subprocess of the test session."""
    return tmp_path_factory.getbasetemp() / "jax_compilation_cache"


def run_python(args, cache_dir, devices=1, timeout=600):
    out = subprocess.run([sys.executable, *map(str, args)], env=jax_env(cache_dir, devices), cwd=REPO,
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def train(workdir, cache_dir, steps, interval, *sets, config="tiny"):
    """Run train.py's main on `config` in a subprocess; returns the run's RunPaths."""
    args = [TRAIN_PY, "--config", EGS / f"{config}.cfg", "--workdir", workdir]
    for text in [f"train.total_train_steps={steps}", f"train.checkpoint_and_eval_interval_in_steps={interval}",
                 *FAST, *sets]:
        args += ["--set", text]
    run_python(args, cache_dir)
    return run_paths(config, workdir)
