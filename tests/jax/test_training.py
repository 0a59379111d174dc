"""Real JAX training runs of the tiny config: train.py, 1 vs 2 devices, exact resume, skips, TensorBoard, data.

The runs are subprocesses (`python efficient_vdvae_jax/train.py`, i.e. train.py's main) so that they can
force a CPU device count and share a persistent compilation cache; XLA's backend optimisation level 0
makes their compilation about three times faster and changes no test below.
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from efficient_vdvae_core.data.stream import TrainIndexStream
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


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    return session_cache(tmp_path_factory)


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


def checkpoint_steps(paths):
    return sorted(int(p.name.split("_")[1]) for p in paths.checkpoints.iterdir() if p.name.startswith("checkpoint_"))


def restored(paths, step=None):
    """(TrainState as NumPy, meta) of a run's checkpoint (default: the newest)."""
    import jax

    from efficient_vdvae_jax.utils.checkpoint import read_orbax_state
    state, meta = read_orbax_state(paths.checkpoints / f"checkpoint_{step or checkpoint_steps(paths)[-1]}")
    return jax.tree.map(np.asarray, state), meta


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, compilation_cache):
    return train(tmp_path_factory.mktemp("two_steps"), compilation_cache, 2, 1)


def test_two_steps_end_to_end(two_step_run):
    paths = two_step_run
    assert checkpoint_steps(paths) == [1, 2]  # max_allowed_checkpoints = 2
    assert paths.saved_config.is_file() and (paths.logs / "samples" / "step_2.png").is_file()
    state, meta = restored(paths)
    assert meta["step"] == 2 and meta["skips"] == 0 and meta["config"]["run"]["name"] == "tiny"
    assert int(state["step"]) == 2 and set(state) == {"params", "ema", "opt_state", "step", "skips",
                                                      "consecutive_skips"}
    assert int(state["opt_state"].count) == 2
    lines = [json.loads(line) for line in (paths.logs / "metrics.jsonl").read_text().splitlines()]
    assert [line["split"] for line in lines].count("val") == 2
    assert all(np.isfinite(line["Losses/nelbo"]) for line in lines)


def test_tensorboard_tags(two_step_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    paths = two_step_run
    train_ev = EventAccumulator(str(paths.train_events)).Reload().Tags()
    val_ev = EventAccumulator(str(paths.val_events)).Reload().Tags()
    for tag in ["Losses/reconstruction_loss", "Losses/kl_div", "Losses/nelbo", "Losses/average_kl_div",
                "Losses/variational_beta", "Losses/skips_count", "Schedules/learning_rate",
                "Mean_Max_Updates/Global_norm"]:
        assert tag in train_ev["scalars"], tag
    for tag in ["Losses/reconstruction_loss", "Losses/kl_div", "Losses/nelbo", "Losses/ssim",
                *[f"Losses/latent_kl_{i}" for i in range(6)]]:
        assert tag in val_ev["scalars"], tag
    assert {"Distributions/target", "Distributions/output", "OutputLayer/means",
            "OutputLayer/log_scales"} <= set(val_ev["histograms"])
    assert {"Images/Original", "Images/Generated", "Images/Prior_samples"} <= set(val_ev["images"])
    scalars = EventAccumulator(str(paths.train_events)).Reload().Scalars("Schedules/learning_rate")
    assert [s.step for s in scalars] == [2]  # logging_interval 10 -> only the last step


STEPS_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from efficient_vdvae_core.config import load_config
    from efficient_vdvae_core.runs import run_paths
    from efficient_vdvae_jax.data.loaders import TrainStream
    from efficient_vdvae_jax.training import Trainer
    config = load_config(sys.argv[1])[0]
    trainer = Trainer(config, run_paths(config.run.name, sys.argv[2]), log=lambda *a: None)
    assert trainer.mesh.devices.size == len(jax.devices())
    for step, images in zip(range(3), TrainStream(config)):
        trainer.train_step(images)
    flat = jax.tree_util.tree_flatten_with_path(trainer.state)[0]
    np.savez(sys.argv[3], **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
    trainer.close()
""")


def three_steps(workdir, cache_dir, devices):
    """The whole TrainState after 3 steps of the tiny config on `devices` CPU devices, by key path."""
    out = workdir / f"state_{devices}.npz"
    run_python(["-c", STEPS_SCRIPT, EGS / "tiny.cfg", workdir / f"run{devices}", out], cache_dir, devices=devices)
    return dict(np.load(out))


@pytest.fixture(scope="module")
def one_device_state(tmp_path_factory, compilation_cache):
    return three_steps(tmp_path_factory.mktemp("one_device"), compilation_cache, 1)


def test_resume_is_exact(two_step_run, one_device_state, compilation_cache):
    """Stopped after 2 steps and re-run to 3: bitwise the state of 3 uninterrupted steps."""
    import jax
    resumed = train(two_step_run.workdir, compilation_cache, 3, 3)
    state, meta = restored(resumed)
    assert meta["step"] == 3 and checkpoint_steps(resumed) == [2, 3]
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    assert len(flat) == len(one_device_state)
    for path, value in flat:
        np.testing.assert_array_equal(value, one_device_state[jax.tree_util.keystr(path)],
                                      err_msg=jax.tree_util.keystr(path))


def test_two_devices_match_one_device(tmp_path, one_device_state, compilation_cache):
    """The global batch sharded over 2 devices (same data, same eps) gives the 1-device state."""
    two = three_steps(tmp_path, compilation_cache, 2)
    assert two.keys() == one_device_state.keys() and len(two) > 100
    for name, value in one_device_state.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_jax_stream_is_the_torch_stream(tiny_config):
    """Same (seed, step) -> same global batch as the PyTorch loader (shared index logic in the core)."""
    pytest.importorskip("torch")
    from efficient_vdvae_jax.data.loaders import TrainStream
    from efficient_vdvae_torch.data.loaders import make_train_loader
    cfg = tiny_config.replace(train=dataclasses.replace(tiny_config.train, batch_size=6))
    torch_batches = [b.numpy().transpose(0, 2, 3, 1) for _, b in zip(range(3), make_train_loader(
        cfg, rank=0, world_size=1, start_step=40, num_workers=0))]
    stream = TrainStream(cfg, start_step=40)
    for step, (expected, got) in enumerate(zip(torch_batches, stream)):
        np.testing.assert_array_equal(got, expected)
        assert stream.keys(40 + step) == TrainIndexStream(stream.index.n_images, 6, seed=cfg.run.seed).keys(40 + step)


SKIPS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from efficient_vdvae_core.config import load_config
    from efficient_vdvae_core.runs import run_paths
    from efficient_vdvae_jax.training import Trainer, TooManySkipsError
    config = load_config(sys.argv[1], ["train.max_consecutive_skips=2"])[0]
    trainer = Trainer(config, run_paths(config.run.name, sys.argv[2]), log=lambda *a: None)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    trainer.train_step(images)
    def snapshot():
        return [np.asarray(x) for k in ("params", "ema", "opt_state") for x in jax.tree.leaves(trainer.state[k])]
    before = snapshot()
    images[0, 0, 0, 0] = np.nan
    metrics = trainer.train_step(images)
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, snapshot()))
    step = trainer.step
    try:
        trainer.train_step(images)
        stopped = None
    except TooManySkipsError as exc:
        stopped = str(exc)
    print(json.dumps({"skipped": metrics["skipped"], "skips": metrics["skips"], "step": step,
                      "unchanged": unchanged, "stopped": stopped}))
    trainer.close()
""")


def test_skipped_updates_change_nothing_and_too_many_stop(tmp_path, compilation_cache):
    """A NaN gradient skips the update (params, EMA, optimizer state unchanged) and is counted; after
    max_consecutive_skips skipped updates in a row training stops with a message."""
    out = run_python(["-c", SKIPS_SCRIPT, EGS / "tiny.cfg", tmp_path], compilation_cache)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["skipped"] == 1.0 and result["skips"] == 1 and result["step"] == 2 and result["unchanged"]
    assert "the last 2 updates were all skipped" in result["stopped"]


def test_a_training_of_the_same_run_holds_the_lock(tmp_path, compilation_cache):
    """While a process holds logs-<name>/.lock, JAX train.py refuses in one line and writes nothing."""
    from efficient_vdvae_core.runs import RunLock

    paths = run_paths("tiny", tmp_path)
    with RunLock(paths.logs, log=lambda *a: None):
        out = subprocess.run([sys.executable, str(TRAIN_PY), "--config", str(EGS / "tiny.cfg"),
                              "--workdir", str(tmp_path)], env=jax_env(compilation_cache), cwd=REPO,
                             capture_output=True, text=True, timeout=300, check=False)
        assert sorted(p.name for p in paths.logs.iterdir()) == [".lock"]  # no saved config, no events
    assert out.returncode == 2, out.stderr[-2000:]
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"{paths.logs / '.lock'}: the run is in use by process" in error
    assert not paths.checkpoints.exists()
