"""The behavioural suite: real training runs of the tiny configs, the same tests over both frameworks.

`framework` (session-scoped, parametrised over 'torch' and 'jax') is a `Side`: the framework's
train.py / synthesize.py, its checkpoint codec and readers. Runs go through train.py's main in this
process (`train_here`, `refused`) or as subprocesses (`python_env`). JAX runs, in this process and in
subprocesses, share one persistent compilation cache per test session. `[run] num_cpus = 0`
everywhere: no loader worker is forked after JAX has started its threads.

Messages that the two frameworks must word alike are compared with `same_in_both`: the first
framework's value is kept for the session, the second must equal it.
"""
import importlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from efficient_vdvae_core.checkpoints import CheckpointFolder
from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import run_paths
from tests.conftest import EGS, REPO

FRAMEWORKS = ("torch", "jax")
STEPS = 6  # of the reference run
SETS = ["val.n_samples_for_validation=8", "val.batch_size=8", "run.num_cpus=0", "run.device='cpu'"]
RESUMED = re.compile(r"Resumed from (\S+) at step (\d+)")
ROUNDING = 1e-5  # relative: float32 sums reduced in another order (gradients over processes or devices)


@dataclass(frozen=True)
class Side:
    """One framework as the tests see it."""
    name: str

    def module(self, name):
        return importlib.import_module(f"efficient_vdvae_{self.name}.{name}")

    @property
    def train(self):
        return self.module("train")

    @property
    def synthesize(self):
        return self.module("synthesize")

    @property
    def backend(self):
        return self.module("backend")

    @property
    def codec_class(self):
        checkpoint = self.module("utils.checkpoint")
        return checkpoint.TorchCodec if self.name == "torch" else checkpoint.OrbaxCodec

    def folder(self, workdir, config="tiny"):
        return CheckpointFolder(run_paths(config, workdir).checkpoints, self.codec_class())

    def steps(self, workdir, config="tiny"):
        return self.folder(workdir, config).steps()

    def path(self, workdir, step, config="tiny"):
        return self.folder(workdir, config).path(step)

    def temporaries(self, workdir, config="tiny"):
        """Names in the checkpoint folder that are not numbered checkpoints (leftovers of interrupted writes)."""
        folder = self.folder(workdir, config)
        if not folder.directory.is_dir():
            return []
        numbered = {p.name for _, p in folder.list()}
        return sorted(n for n in os.listdir(folder.directory) if n not in numbered)

    def read(self, path):
        """(meta, {name: NumPy array}) of one checkpoint: weights, EMA weights and optimizer state, flattened."""
        if self.name == "torch":
            checkpoint = self.codec_class().read(path)
            state = checkpoint.state
            arrays = {f"params/{k}": v.numpy() for k, v in state["model_state_dict"].items()}
            arrays.update({f"ema/{k}": v.numpy() for k, v in state["ema_model_state_dict"].items()})
            for index, moments in state["optimizer_state_dict"]["state"].items():
                arrays.update({f"opt/{index}/{k}": np.asarray(v) for k, v in moments.items()})
            return checkpoint.meta, arrays
        import jax
        from efficient_vdvae_jax.utils.checkpoint import read_orbax_state
        state, meta = read_orbax_state(path)
        flat = jax.tree_util.tree_flatten_with_path(state)[0]
        return meta, {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}

    def weights(self, path):
        """The Weights (NumPy, PyTorch layout) of a checkpoint, by the framework's read_weights."""
        return self.backend.read_weights(path)


@pytest.fixture(scope="session")
def jax_compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the session's JAX compilations, in this process and in subprocesses."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache
    folder = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    for name, value in zip(names, (str(folder), 0, 0)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # the cache is set up at the first compilation: again, with this folder
    yield folder
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="session", params=FRAMEWORKS)
def framework(request):
    if request.param == "jax":
        request.getfixturevalue("jax_compilation_cache")
    return Side(request.param)


@pytest.fixture(scope="session")
def across():
    """Values recorded by the first framework's run of a test, for `same_in_both`."""
    return {}


def same_in_both(across, key, framework, value):
    """Record `value` for (key, framework); when the other framework recorded one, assert they are equal."""
    across[key, framework.name] = value
    for other in FRAMEWORKS:
        if other != framework.name and (key, other) in across:
            assert value == across[key, other], f"{key}: {framework.name} differs from {other}"


def normalise(line, framework, workdir):
    """A message with the workdir and the framework's checkpoint suffix taken out."""
    line = line.replace(str(workdir), "<workdir>")
    suffix = framework.codec_class.suffix
    return re.sub(rf"(checkpoint_\d+){re.escape(suffix)}\b", r"\1", line) if suffix else line


def cli_args(workdir, steps, *sets, config="tiny"):
    args = ["--config", str(EGS / f"{config}.cfg"), "--workdir", str(workdir),
            "--set", f"train.total_train_steps={steps}"]
    for text in (*SETS, *sets):
        args += ["--set", text]
    return args


def train_here(framework, workdir, steps, *sets, config="tiny"):
    """train.py's main in this process (exceptions and SystemExit propagate); returns the RunPaths."""
    run_main(framework.train.main, cli_args(workdir, steps, *sets, config=config), parser=framework.train.parser())
    return run_paths(config, workdir)


def refused(capsys, main, args, parser):
    """Run an entry point that must fail: returns its one stderr line (asserting exit code 2, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(main, args, parser=parser)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2 and "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # one line, the last (after any progress bar)
    return errors[0]


def refused_training(capsys, framework, workdir, steps, *sets):
    return refused(capsys, framework.train.main, cli_args(workdir, steps, *sets), framework.train.parser())


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_same_state(framework, path, reference):
    """A checkpoint holds exactly the reference's step, skip counters, weights, EMA weights and optimizer state."""
    ref_meta, ref_arrays = reference
    meta, arrays = framework.read(path)
    assert (meta["step"], meta["skips"], meta["consecutive_skips"]) == (
        ref_meta["step"], ref_meta["skips"], ref_meta["consecutive_skips"])
    assert arrays.keys() == ref_arrays.keys() and len(arrays) > 50
    for name, value in ref_arrays.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)


def assert_same_run(framework, workdir, reference, steps):
    """The run in `workdir` ends with the reference's state at `steps`, and its validation NELBO is the reference's."""
    meta, arrays = framework.read(framework.path(workdir, steps))
    ref_meta, ref_arrays = reference.states[steps]
    assert meta["step"] == ref_meta["step"] == steps and meta["skips"] == ref_meta["skips"]
    assert arrays.keys() == ref_arrays.keys() and len(arrays) > 100
    for name, value in ref_arrays.items():
        np.testing.assert_allclose(arrays[name], value, rtol=ROUNDING, atol=ROUNDING, err_msg=name)
    nelbo = val_nelbo(run_paths("tiny", workdir))
    assert steps in nelbo
    for step, value in nelbo.items():
        assert value == pytest.approx(reference.nelbo[step], rel=ROUNDING), step


def val_nelbo(paths):
    """{step: validation NELBO} of a run's metrics.jsonl."""
    import json
    lines = [json.loads(line) for line in (paths.logs / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["Losses/nelbo"] for line in lines if line["split"] == "val"}


@dataclass
class Reference:
    """An uninterrupted run of STEPS steps with every checkpoint kept."""
    workdir: Path
    states: dict  # step -> (meta, arrays)
    nelbo: dict  # step -> validation NELBO


@pytest.fixture(scope="session")
def reference(framework, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"reference_{framework.name}")
    paths = train_here(framework, workdir, STEPS, "train.checkpoint_and_eval_interval_in_steps=1",
                       f"run.max_allowed_checkpoints={STEPS}")
    states = {s: framework.read(p) for s, p in framework.folder(workdir).list()}
    assert sorted(states) == list(range(1, STEPS + 1))
    return Reference(workdir, states, val_nelbo(paths))


def copy_run(framework, reference_workdir, workdir, steps):
    """A run folder holding the reference's saved config and its checkpoints of `steps`."""
    source, target = run_paths("tiny", reference_workdir), run_paths("tiny", workdir)
    target.logs.mkdir(parents=True)
    target.checkpoints.mkdir()
    shutil.copy(source.saved_config, target.saved_config)
    for step in steps:
        src, dst = framework.path(reference_workdir, step), framework.path(workdir, step)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return target


def python_env(cache_dir=None, devices=1, extra_path=()):
    """Environment of a subprocess: this repository first on the path, one thread, JAX on `devices` CPU
    devices with this session's XLA flags and compilation cache."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [*map(str, extra_path), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if devices > 1:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def train_command(framework, workdir, steps, *sets, config="tiny"):
    return [sys.executable, str(REPO / f"efficient_vdvae_{framework.name}" / "train.py"),
            *cli_args(workdir, steps, *sets, config=config)]


@pytest.fixture(scope="session")
def two_step_run(framework, tmp_path_factory):
    """2 steps with an evaluation and a checkpoint after each (max_allowed_checkpoints = 2)."""
    return train_here(framework, tmp_path_factory.mktemp(f"two_steps_{framework.name}"), 2,
                      "train.checkpoint_and_eval_interval_in_steps=1")
