"""Validation and training that do not depend on how the run is laid out: evaluation interval, processes, devices.

Validation noise is a function of (seed, evaluation step, image index) only, so the validation NELBO at a
step is bitwise the same for any evaluation interval; with 2 processes (PyTorch, train.sh) or 2 devices
(JAX) the same global batch trains the same run, equal to float32 reduction rounding. The training data
stream of a (seed, step) is the same in both frameworks.
"""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from efficient_vdvae_core.data.stream import TrainIndexStream
from efficient_vdvae_core.runs import run_paths
from tests.behaviour.conftest import (REPO, assert_same_run, assert_same_state, cli_args, python_env, train_command,
                                      train_here, val_nelbo)

def test_validation_nelbo_does_not_depend_on_the_evaluation_interval(framework, reference, tmp_path):
    """Evaluated every 2 steps instead of every step: the same validation NELBO at step 2, bit for bit."""
    paths = train_here(framework, tmp_path, 2, "train.checkpoint_and_eval_interval_in_steps=2")
    assert val_nelbo(paths) == {2: reference.nelbo[2]}
    assert_same_state(framework, framework.path(tmp_path, 2), reference.states[2])  # evaluations change nothing


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")
@pytest.mark.parametrize("framework", ["torch"], indirect=True)
def test_two_processes_match_one_process(framework, reference, tmp_path):
    """sh train.sh with 2 CPU processes trains and validates the run of one process."""
    env = dict(python_env(), NUM_GPUS_PER_NODE="2", PYTHON=sys.executable)
    out = subprocess.run(["sh", str(REPO / "efficient_vdvae_torch" / "train.sh"),
                          *cli_args(tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=1")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Running on 2 process(es)" in out.stdout
    assert framework.steps(tmp_path) == [2, 3] and sorted(val_nelbo(run_paths("tiny", tmp_path))) == [1, 2, 3]
    assert_same_run(framework, tmp_path, reference, 3)


@pytest.mark.parametrize("framework", ["jax"], indirect=True)
def test_two_devices_match_one_device(framework, reference, tmp_path, jax_compilation_cache):
    """The global batch sharded over 2 CPU devices (same data, same eps) trains and validates the 1-device run."""
    out = subprocess.run(train_command(framework, tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=3"),
                         env=python_env(jax_compilation_cache, devices=2), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "Running on 2 device(s) (cpu) in 1 process(es)" in out.stdout
    assert framework.steps(tmp_path) == [3] and list(val_nelbo(run_paths("tiny", tmp_path))) == [3]
    assert_same_run(framework, tmp_path, reference, 3)


def test_jax_stream_is_the_torch_stream(tiny_config):
    """Same (seed, step) -> same global batch as the PyTorch loader (shared index logic in the core)."""
    from efficient_vdvae_jax.data.loaders import TrainStream
    from efficient_vdvae_torch.data.loaders import make_train_loader
    cfg = tiny_config.replace(train=dataclasses.replace(tiny_config.train, batch_size=6))
    torch_batches = [b.numpy().transpose(0, 2, 3, 1) for _, b in zip(range(3), make_train_loader(
        cfg, rank=0, world_size=1, start_step=40, num_workers=0))]
    stream = TrainStream(cfg, start_step=40)
    for step, (expected, got) in enumerate(zip(torch_batches, stream)):
        np.testing.assert_array_equal(got, expected)
        assert stream.keys(40 + step) == TrainIndexStream(stream.index.n_images, 6, seed=cfg.run.seed).keys(40 + step)
