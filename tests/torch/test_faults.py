"""Faults injected into real training runs of the tiny config, and what must survive them.

* SIGKILL anywhere (during start-up, halfway through writing a checkpoint, right after its rename,
  at a random moment): every restart resumes from the newest complete checkpoint, leftover temporary
  files are removed, and the final state is bit-identical to a run never interrupted.
* Unreadable checkpoints (truncated, garbage, empty): a warning naming each, and a fall-back to the
  newest readable one; all of them unreadable, or weights that do not fit the config: exit code 2 and
  one line, nothing touched.
* Failed checkpoint writes (ENOSPC, EIO) and a full disk while writing logs: the earlier checkpoints
  stay intact; `[run] checkpoint_write_failure` = 'stop' ends the run in one line, 'retry' retries.
* Runaway updates (learning rate 1e30): NaN updates are skipped until max_consecutive_skips stops the
  run in one line, its checkpoints intact.
* A second training of a running run is refused (lock and PID named); synthesis reads alongside; the
  lock of a SIGKILLed run does not block the next start.

The kills come from a sitecustomize module put on the subprocess's PYTHONPATH (test code only), which
wraps torch.save / os.replace when EVDVAE_TEST_KILL=<point>:<step> is set.
"""
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_torch import synthesize, train, training
from efficient_vdvae_torch.utils import checkpoint as ckpt
from tests.conftest import EGS, REPO

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL, flock and /proc semantics of Linux")

STEPS = 6
SETS = ["train.checkpoint_and_eval_interval_in_steps=1", "val.n_samples_for_validation=8", "val.batch_size=8",
        "run.num_cpus=0", "run.device='cpu'", "run.max_allowed_checkpoints=2"]
RESUMED = re.compile(r"Resumed from (\S+) at step (\d+)")
SIGKILLED = -signal.SIGKILL

SITECUSTOMIZE = '''
"""Test-only fault injection, imported at start-up: EVDVAE_TEST_KILL=<point>:<step> SIGKILLs this process
'mid_write' halfway through writing checkpoint <step>, or 'after_rename' right after it is renamed into place."""
import os
import signal

_spec = os.environ.get("EVDVAE_TEST_KILL")
if _spec:
    import io

    import torch

    _point, _step = _spec.split(":")
    _step = int(_step)
    if _point == "mid_write":
        _save = torch.save

        def _torch_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("step") == _step and hasattr(f, "write"):
                buffer = io.BytesIO()
                _save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                f.write(data[:len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return _save(obj, f, *args, **kwargs)

        torch.save = _torch_save
    elif _point == "after_rename":
        _replace = os.replace

        def _os_replace(src, dst, *args, **kwargs):
            _replace(src, dst, *args, **kwargs)
            if os.path.basename(dst) == f"checkpoint_{_step}.pt":
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = _os_replace
    else:
        raise ValueError(f"EVDVAE_TEST_KILL: unknown point {_point!r}")
'''


def cli_args(workdir, steps, *sets):
    args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(workdir), "--set", f"train.total_train_steps={steps}"]
    for text in (*SETS, *sets):
        args += ["--set", text]
    return args


def train_here(workdir, steps, *sets):
    """train.py's main in this process (exceptions and SystemExit propagate)."""
    return run_main(train.main, cli_args(workdir, steps, *sets), parser=train.parser())


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


def subprocess_env(tmp_path, kill=None):
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(inject), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("EVDVAE_TEST_KILL", None)
    if kill:
        env["EVDVAE_TEST_KILL"] = kill
    return env


def command(workdir, steps, *sets):
    return [sys.executable, str(REPO / "efficient_vdvae_torch" / "train.py"), *cli_args(workdir, steps, *sets)]


def train_process(tmp_path, workdir, steps, *sets, kill=None):
    """Run train.py to its end in a subprocess; returns (returncode, stdout + stderr)."""
    out = subprocess.run(command(workdir, steps, *sets), env=subprocess_env(tmp_path, kill), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    return out.returncode, out.stdout


def start_process(tmp_path, workdir, steps, *sets, log_name="log.txt"):
    log = open(tmp_path / log_name, "w")
    proc = subprocess.Popen(command(workdir, steps, *sets), env=subprocess_env(tmp_path), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()
    return proc


def wait_for(predicate, proc=None, timeout=120):
    end = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"the training process ended early ({proc.returncode})"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def steps_of(workdir):
    return [s for s, _ in ckpt.list_checkpoints(run_paths("tiny", workdir).checkpoints)]


def temporaries(workdir):
    folder = run_paths("tiny", workdir).checkpoints
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def assert_same_state(path, reference):
    """A checkpoint holds exactly the reference's step, weights, EMA weights and optimizer state."""
    state = ckpt.read_checkpoint(path)
    assert state["step"] == reference["step"] and state["skips"] == reference["skips"]
    for key in ("model_state_dict", "ema_model_state_dict"):
        assert state[key].keys() == reference[key].keys()
        for name, value in reference[key].items():
            assert torch.equal(state[key][name], value), (key, name)
    ours, theirs = state["optimizer_state_dict"]["state"], reference["optimizer_state_dict"]["state"]
    assert ours.keys() == theirs.keys()
    for index in theirs:
        for name, value in theirs[index].items():
            assert torch.equal(torch.as_tensor(ours[index][name]), torch.as_tensor(value)), (index, name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of STEPS steps keeping every checkpoint: {step: state}, and its workdir."""
    workdir = tmp_path_factory.mktemp("reference")
    train_here(workdir, STEPS, f"run.max_allowed_checkpoints={STEPS}")
    states = {s: ckpt.read_checkpoint(p) for s, p in ckpt.list_checkpoints(run_paths("tiny", workdir).checkpoints)}
    assert sorted(states) == list(range(1, STEPS + 1))
    return states, workdir


def copy_run(reference_workdir, workdir, steps):
    """A run folder holding the reference's saved config and its checkpoints of `steps`."""
    source, target = run_paths("tiny", reference_workdir), run_paths("tiny", workdir)
    target.logs.mkdir(parents=True)
    target.checkpoints.mkdir()
    shutil.copy(source.saved_config, target.saved_config)
    for step in steps:
        shutil.copy(ckpt.checkpoint_path(source.checkpoints, step), ckpt.checkpoint_path(target.checkpoints, step))
    return target


# ------------------------------------------------------------------------------------------ SIGKILL


def test_sigkill_anywhere_then_restart_gives_the_uninterrupted_result(reference, tmp_path):
    states, _ = reference
    work = tmp_path / "work"
    resumed_at = []

    def complete_and_exact():
        """Every checkpoint_<k>.pt in place is complete and equals the uninterrupted run's at step k."""
        for step, path in ckpt.list_checkpoints(run_paths("tiny", work).checkpoints):
            assert_same_state(path, states[step])

    def restarted(output, newest_before):
        match = RESUMED.search(output)
        step = int(match.group(2)) if match else 0
        assert step == newest_before, output  # the newest complete checkpoint, never an older one
        if match:
            assert Path(match.group(1)).name == f"checkpoint_{step}.pt"
        resumed_at.append(step)

    # 1. during start-up, as soon as the run's config is saved
    proc = start_process(tmp_path, work, STEPS)
    wait_for(run_paths("tiny", work).saved_config.is_file, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == SIGKILLED
    assert steps_of(work) == []

    # 2. halfway through writing checkpoint 2: a half-written temporary file, never a checkpoint_2.pt
    code, out = train_process(tmp_path, work, STEPS, kill="mid_write:2")
    assert code == SIGKILLED, out
    restarted(out, 0)
    assert steps_of(work) == [1] and len(temporaries(work)) == 1
    complete_and_exact()

    # 3. right after checkpoint 4 is renamed into place, before older ones are pruned
    code, out = train_process(tmp_path, work, STEPS, kill="after_rename:4")
    assert code == SIGKILLED, out
    restarted(out, 1)
    assert "Removed 1 incomplete checkpoint file(s) of an interrupted write: .checkpoint_2.pt.tmp-" in out
    assert steps_of(work) == [2, 3, 4] and temporaries(work) == []
    complete_and_exact()

    # 4. at whatever point it has reached when checkpoint 5 appears
    proc = start_process(tmp_path, work, STEPS)
    wait_for(lambda: 5 in steps_of(work), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) in (SIGKILLED, 0)
    restarted((tmp_path / "log.txt").read_text(), 4)
    complete_and_exact()
    newest = steps_of(work)[-1]

    # 5. the last restart runs to the end
    code, out = train_process(tmp_path, work, STEPS)
    assert code == 0, out
    if newest < STEPS:  # else the killed process had already finished
        restarted(out, newest)
    assert steps_of(work) == [STEPS - 1, STEPS] and temporaries(work) == []
    complete_and_exact()  # bit-exact: weights, EMA, optimizer moments
    assert resumed_at[:3] == [0, 1, 4]


# --------------------------------------------------------------------------------- bad checkpoints


def test_unreadable_checkpoints_are_named_and_skipped(reference, tmp_path, capsys):
    states, ref_work = reference
    paths = copy_run(ref_work, tmp_path, [1, 2, 3, 4])
    newest = ckpt.checkpoint_path(paths.checkpoints, 4)
    newest.write_bytes(newest.read_bytes()[:newest.stat().st_size // 2])  # truncated
    ckpt.checkpoint_path(paths.checkpoints, 3).write_bytes(os.urandom(3000))  # garbage
    ckpt.checkpoint_path(paths.checkpoints, 2).write_bytes(b"")  # empty
    capsys.readouterr()
    train_here(tmp_path, 5, "run.max_allowed_checkpoints=4")
    out = capsys.readouterr().out
    for step, reason in ((4, "truncated"), (3, "not a PyTorch checkpoint"), (2, "empty")):
        warning = next(line for line in out.splitlines() if f"checkpoint_{step}.pt: unreadable" in line)
        assert warning.startswith("warning: ") and reason in warning
        assert f"falling back to checkpoint_{step - 1}.pt" in warning
    assert RESUMED.search(out).group(2) == "1"
    assert steps_of(tmp_path) == [2, 3, 4, 5]  # the unreadable ones replaced by complete ones as training passed them
    for step, path in ckpt.list_checkpoints(paths.checkpoints):
        assert_same_state(path, states[step])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_all_checkpoints_unreadable_is_refused_not_restarted(reference, tmp_path, capsys):
    _, ref_work = reference
    paths = copy_run(ref_work, tmp_path, [2, 3])
    for step in (2, 3):
        path = ckpt.checkpoint_path(paths.checkpoints, step)
        path.write_bytes(path.read_bytes()[:1000])
    before = snapshot(tmp_path)
    line = refused(capsys, train.main, cli_args(tmp_path, STEPS), train.parser())
    assert f"none of the 2 checkpoint file(s) in {paths.checkpoints} can be read" in line
    assert "checkpoint_3.pt: unreadable" in line and "move them out of the folder" in line
    assert snapshot(tmp_path) == before  # no restart from scratch, nothing written
    synth_args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(tmp_path), "--set", "run.device='cpu'"]
    line = refused(capsys, synthesize.main, synth_args, synthesize.parser())
    assert "none of the 2 checkpoint file(s)" in line
    assert snapshot(tmp_path) == before


def test_checkpoint_that_does_not_fit_the_config_names_the_keys(reference, tmp_path, capsys):
    _, ref_work = reference
    paths = copy_run(ref_work, tmp_path, [2])
    before = snapshot(tmp_path)
    line = refused(capsys, train.main, cli_args(tmp_path, STEPS, "model.num_output_mixtures=2"), train.parser())
    assert f"{ckpt.checkpoint_path(paths.checkpoints, 2)}: does not match the model of this config" in line
    assert "shape mismatch (checkpoint vs config): top_down.output_conv.weight (30, 16, 1, 1) vs (20, 16, 1, 1)" in line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------- write failures


def failing_torch_save(monkeypatch, step, times=None):
    """torch.save of checkpoint `step` writes a little, then fails with ENOSPC (`times` times; None: always)."""
    save, calls = torch.save, []

    def fake(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == step and (times is None or len(calls) < times):
            calls.append(step)
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fake)
    return calls


def failing_os_replace(monkeypatch, step):
    replace = os.replace

    def fake(src, dst, *args, **kwargs):
        if os.path.basename(dst) == f"checkpoint_{step}.pt":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fake)


@pytest.mark.parametrize("failure, reason", [("torch.save", "No space left on device (ENOSPC)"),
                                             ("os.replace", "Input/output error (EIO)")])
def test_failed_checkpoint_write_stops_and_loses_nothing(reference, tmp_path, capsys, monkeypatch, failure,
                                                         reason):
    states, _ = reference
    with monkeypatch.context() as patch:
        if failure == "torch.save":
            failing_torch_save(patch, 3)
        else:
            failing_os_replace(patch, 3)
        line = refused(capsys, train.main, cli_args(tmp_path, 4), train.parser())
    checkpoints = run_paths("tiny", tmp_path).checkpoints
    assert f"could not write checkpoint {ckpt.checkpoint_path(checkpoints, 3)}: {reason}" in line
    assert "newest: checkpoint_2.pt, step 2" in line and "checkpoint_write_failure = 'retry'" in line
    assert steps_of(tmp_path) == [1, 2] and temporaries(tmp_path) == []
    for step, path in ckpt.list_checkpoints(checkpoints):
        assert_same_state(path, states[step])
    capsys.readouterr()
    train_here(tmp_path, 4)  # the same command again, the disk fixed
    assert RESUMED.search(capsys.readouterr().out).group(2) == "2"
    assert_same_state(ckpt.checkpoint_path(checkpoints, 4), states[4])


def test_failed_checkpoint_write_is_retried_with_backoff(reference, tmp_path, capsys, monkeypatch):
    states, _ = reference
    calls = failing_torch_save(monkeypatch, 2, times=2)
    waits = []
    monkeypatch.setattr(ckpt.time, "sleep", waits.append)
    train_here(tmp_path, 3, "run.checkpoint_write_failure='retry'")
    out = capsys.readouterr().out
    assert calls == [2, 2] and waits == [2.0, 4.0]
    assert "warning: writing checkpoint 2 failed (No space left on device (ENOSPC)); retry 1 of 3 in 2 s" in out
    assert steps_of(tmp_path) == [2, 3] and temporaries(tmp_path) == []
    assert_same_state(ckpt.checkpoint_path(run_paths("tiny", tmp_path).checkpoints, 3), states[3])


def test_failed_checkpoint_write_stops_after_the_last_retry(tmp_path, capsys, monkeypatch):
    calls = failing_torch_save(monkeypatch, 1)
    monkeypatch.setattr(ckpt.time, "sleep", lambda s: None)
    line = refused(capsys, train.main, cli_args(tmp_path, 2, "run.checkpoint_write_failure='retry'",
                                                "run.checkpoint_write_retries=1"), train.parser())
    assert calls == [1, 1] and "(tried 2 times)" in line and "no checkpoint of this run has been written yet" in line
    assert steps_of(tmp_path) == [] and temporaries(tmp_path) == []


def test_full_disk_while_writing_logs_stops_in_one_line(reference, tmp_path, capsys, monkeypatch):
    states, _ = reference
    save_png = training.save_png

    def fake(path, image):
        if "step_2" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save_png(path, image)

    monkeypatch.setattr(training, "save_png", fake)
    line = refused(capsys, train.main, cli_args(tmp_path, 3), train.parser())
    assert "step_2.png: No space left on device (ENOSPC), a disk problem" in line
    assert "the earlier checkpoints are intact (newest: checkpoint_1.pt, step 1)" in line
    assert steps_of(tmp_path) == [1]
    assert_same_state(ckpt.checkpoint_path(run_paths("tiny", tmp_path).checkpoints, 1), states[1])


# ---------------------------------------------------------------------------------- runaway updates


def test_runaway_updates_are_skipped_then_stop_in_one_line(tmp_path):
    code, out = train_process(tmp_path, tmp_path / "work", 10, "optimizer.learning_rate=1e30",
                              "train.max_consecutive_skips=3", "train.checkpoint_and_eval_interval_in_steps=2")
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in out, out
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]]
    assert lines[-1].startswith("error: stopped at step 5: the last 3 updates were all skipped (gradient norm nan")
    assert "NaN/inf" in lines[-1] and "newest: checkpoint_4.pt, step 4" in lines[-1]
    work = tmp_path / "work"
    assert steps_of(work) == [2, 4] and temporaries(work) == []
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(run_paths("tiny", work).checkpoints, 4))
    assert state["step"] == 4 and state["consecutive_skips"] == 2  # the third skip in a row, at step 5, stopped it


# -------------------------------------------------------------------------------- concurrent runs


def test_a_second_training_is_refused_while_synthesis_reads_alongside(tmp_path, capsys):
    first = start_process(tmp_path, tmp_path, 10_000)
    lock = run_paths("tiny", tmp_path).logs / ".lock"
    try:
        wait_for(lambda: steps_of(tmp_path), first)
        line = refused(capsys, train.main, cli_args(tmp_path, 10_000), train.parser())
        assert f"{lock}: the run is in use by process {first.pid} on host" in line
        synth = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(tmp_path), "--set", "run.device='cpu'",
                 "--set", "synthesis.synthesis_mode='generation'", "--set", "synthesis.temperature_settings=[1.0]"]
        run_main(synthesize.main, synth, parser=synthesize.parser())  # reads the newest complete checkpoint
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert lock.read_text().startswith(f"{first.pid}@")  # left behind by the killed run...
    newest = steps_of(tmp_path)[-1]
    capsys.readouterr()
    train_here(tmp_path, newest + 1)  # ... and not in the way
    assert RESUMED.search(capsys.readouterr().out).group(2) == str(newest)
    assert not lock.exists() and steps_of(tmp_path)[-1] == newest + 1
