"""Faults injected into real training runs of the tiny config, the same in both frameworks.

* Unreadable checkpoints (PyTorch: truncated, garbage, empty .pt files; JAX: Orbax folders with truncated
  data, garbage files, nothing in them): a warning naming each and a fall-back to the newest readable
  one; all of them unreadable, or weights that do not fit the config: exit code 2 and one line,
  nothing touched.
* Failed checkpoint writes (ENOSPC, EIO) and a full disk while writing logs: the earlier checkpoints
  stay intact; `[run] checkpoint_write_failure` = 'stop' ends the run in one line, 'retry' retries.
* A second training of a running run is refused (lock and PID named); synthesis reads alongside; the
  lock of a SIGKILLed run does not block the next start.
"""
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from efficient_vdvae_core import checkpoints as checkpoints_module
from efficient_vdvae_core import images as images_module
from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import run_paths
from tests.behaviour.conftest import (EGS, RESUMED, assert_same_state, copy_run, normalise, python_env, refused,
                                      refused_training, same_in_both, snapshot, train_command, train_here)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL, flock and /proc semantics of Linux")


def without_reason(line):
    """A message with the codec's reason for an unreadable checkpoint taken out."""
    return re.sub(r"unreadable checkpoint \(.*?\)(\)?; (falling back|restore))", r"unreadable checkpoint (...)\1",
                  line)


# --------------------------------------------------------------------------------- bad checkpoints


def damage(framework, path, how):
    """Make one checkpoint unreadable: 'truncated', 'garbage' or 'empty'."""
    if framework.name == "torch":
        data = {"truncated": path.read_bytes()[:path.stat().st_size // 2], "garbage": os.urandom(3000),
                "empty": b""}[how]
        path.write_bytes(data)
        return
    files = [p for p in (path / "state").rglob("*") if p.is_file()]
    if how == "truncated":  # the array data of the OCDBT store
        for p in files:
            if p.parent.name == "d":
                p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    elif how == "garbage":
        for p in files:
            p.write_bytes(os.urandom(3000))
    else:
        shutil.rmtree(path)
        path.mkdir()


REASONS = {"torch": {4: "truncated", 3: "not a PyTorch checkpoint", 2: "empty"},
           "jax": {4: "Error reading", 3: "can't decode", 2: 'Item "meta" was not found'}}


def test_unreadable_checkpoints_are_named_and_skipped(framework, reference, tmp_path, capsys, across):
    paths = copy_run(framework, reference.workdir, tmp_path, [1, 2, 3, 4])
    for step, how in ((4, "truncated"), (3, "garbage"), (2, "empty")):
        damage(framework, framework.path(tmp_path, step), how)
    capsys.readouterr()
    train_here(framework, tmp_path, 5, "train.checkpoint_and_eval_interval_in_steps=1", "run.max_allowed_checkpoints=4")
    out = capsys.readouterr().out
    warnings = []
    for step in (4, 3, 2):
        name = framework.path(tmp_path, step).name
        warning = next(line for line in out.splitlines() if f"{name}: unreadable checkpoint" in line)
        assert warning.startswith(f"warning: {framework.path(tmp_path, step)}: ")
        assert REASONS[framework.name][step] in warning
        assert warning.endswith(f"falling back to {framework.path(tmp_path, step - 1).name}")
        warnings.append(without_reason(normalise(warning, framework, tmp_path)))
    assert RESUMED.search(out).group(2) == "1"
    assert framework.steps(tmp_path) == [2, 3, 4, 5]  # the unreadable ones replaced as training passed them
    for step, path in framework.folder(tmp_path).list():
        assert_same_state(framework, path, reference.states[step])
    assert paths.saved_config.is_file()
    same_in_both(across, "unreadable checkpoint warnings", framework, warnings)


def test_all_checkpoints_unreadable_is_refused_not_restarted(framework, reference, tmp_path, capsys, across):
    paths = copy_run(framework, reference.workdir, tmp_path, [2, 3])
    for step in (2, 3):
        damage(framework, framework.path(tmp_path, step), "truncated")
    before = snapshot(tmp_path)
    line = refused_training(capsys, framework, tmp_path, 6)
    assert f"none of the 2 checkpoint file(s) in {paths.checkpoints} can be read" in line
    assert f"{framework.path(tmp_path, 3).name}: unreadable" in line and "move them out of the folder" in line
    assert snapshot(tmp_path) == before  # no restart from scratch, nothing written
    same_in_both(across, "all unreadable", framework, without_reason(normalise(line, framework, tmp_path)))
    synthesize = framework.synthesize
    synth_args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(tmp_path), "--set", "run.device='cpu'"]
    line = refused(capsys, synthesize.main, synth_args, synthesize.parser())
    assert "none of the 2 checkpoint file(s)" in line
    assert snapshot(tmp_path) == before


def test_checkpoint_that_does_not_fit_the_config_names_the_keys(framework, reference, tmp_path, capsys, across):
    copy_run(framework, reference.workdir, tmp_path, [2])
    before = snapshot(tmp_path)
    line = refused_training(capsys, framework, tmp_path, 6, "model.num_output_mixtures=2")
    assert f"{framework.path(tmp_path, 2)}: does not match the model of this config" in line
    assert "shape mismatch (checkpoint vs config): top_down.output_conv.weight (30, 16, 1, 1) vs (20, 16, 1, 1)" in line
    assert snapshot(tmp_path) == before
    same_in_both(across, "checkpoint does not fit", framework, normalise(line, framework, tmp_path))


# ---------------------------------------------------------------------------------- write failures


def failing_write(monkeypatch, framework, step, code=errno.ENOSPC, times=None):
    """The codec's write of checkpoint `step` raises OSError(`code`) (`times` times; None: always)."""
    cls = framework.codec_class
    write, calls = cls.write, []

    def fake(self, path, checkpoint):
        if checkpoint.meta["step"] == step and (times is None or len(calls) < times):
            calls.append(step)
            raise OSError(code, os.strerror(code), str(path))
        return write(self, path, checkpoint)

    monkeypatch.setattr(cls, "write", fake)
    return calls


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "No space left on device (ENOSPC)"),
                                          (errno.EIO, "Input/output error (EIO)")])
def test_failed_checkpoint_write_stops_and_loses_nothing(framework, reference, tmp_path, capsys, monkeypatch, code,
                                                         reason, across):
    with monkeypatch.context() as patch:
        failing_write(patch, framework, 3, code)
        line = refused_training(capsys, framework, tmp_path, 4, "train.checkpoint_and_eval_interval_in_steps=1")
    assert f"could not write checkpoint {framework.path(tmp_path, 3)}: {reason}" in line
    assert f"newest: {framework.path(tmp_path, 2).name}, step 2" in line
    assert "checkpoint_write_failure = 'retry'" in line
    assert framework.steps(tmp_path) == [1, 2] and framework.temporaries(tmp_path) == []
    for step, path in framework.folder(tmp_path).list():
        assert_same_state(framework, path, reference.states[step])
    same_in_both(across, f"write failure {code}", framework, normalise(line, framework, tmp_path))
    capsys.readouterr()
    train_here(framework, tmp_path, 4, "train.checkpoint_and_eval_interval_in_steps=1")  # the same command, disk fixed
    assert RESUMED.search(capsys.readouterr().out).group(2) == "2"
    assert_same_state(framework, framework.path(tmp_path, 4), reference.states[4])


def test_failed_checkpoint_write_is_retried_with_backoff(framework, reference, tmp_path, capsys, monkeypatch):
    calls = failing_write(monkeypatch, framework, 2, times=2)
    waits = []
    monkeypatch.setattr(checkpoints_module.time, "sleep", waits.append)
    capsys.readouterr()
    train_here(framework, tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=1",
               "run.checkpoint_write_failure='retry'")
    out = capsys.readouterr().out
    assert calls == [2, 2] and waits == [2.0, 4.0]
    assert "warning: writing checkpoint 2 failed (No space left on device (ENOSPC)); retry 1 of 3 in 2 s" in out
    assert framework.steps(tmp_path) == [2, 3] and framework.temporaries(tmp_path) == []
    assert_same_state(framework, framework.path(tmp_path, 3), reference.states[3])


def test_failed_checkpoint_write_stops_after_the_last_retry(framework, tmp_path, capsys, monkeypatch, across):
    calls = failing_write(monkeypatch, framework, 1)
    monkeypatch.setattr(checkpoints_module.time, "sleep", lambda s: None)
    line = refused_training(capsys, framework, tmp_path, 2, "train.checkpoint_and_eval_interval_in_steps=1",
                            "run.checkpoint_write_failure='retry'", "run.checkpoint_write_retries=1")
    assert calls == [1, 1] and "(tried 2 times)" in line and "no checkpoint of this run has been written yet" in line
    assert "or set [run] checkpoint_write_failure" not in line
    assert framework.steps(tmp_path) == [] and framework.temporaries(tmp_path) == []
    same_in_both(across, "write failure after retries", framework, normalise(line, framework, tmp_path))


@pytest.mark.parametrize("framework", ["torch"], indirect=True)
@pytest.mark.parametrize("failure, reason", [("torch.save", "No space left on device (ENOSPC)"),
                                             ("os.replace", "Input/output error (EIO)")])
def test_an_interrupted_torch_write_leaves_no_temporary_file(framework, tmp_path, capsys, monkeypatch, failure, reason):
    """torch.save writes part of the file then fails, or the rename fails: no .tmp file is left behind."""
    import torch
    save, replace = torch.save, os.replace

    def partial_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 2:
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    def failing_replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == "checkpoint_2.pt":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return replace(src, dst, *args, **kwargs)

    with monkeypatch.context() as patch:
        if failure == "torch.save":
            patch.setattr(torch, "save", partial_save)
        else:
            patch.setattr(os, "replace", failing_replace)
        line = refused_training(capsys, framework, tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=1")
    assert f"could not write checkpoint {framework.path(tmp_path, 2)}: {reason}" in line
    assert framework.steps(tmp_path) == [1] and framework.temporaries(tmp_path) == []


def test_full_disk_while_writing_logs_stops_in_one_line(framework, reference, tmp_path, capsys, monkeypatch, across):
    save_png = images_module.save_png  # every PNG of training goes through it

    def fake(path, image):
        if "step_2" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save_png(path, image)

    monkeypatch.setattr(images_module, "save_png", fake)
    line = refused_training(capsys, framework, tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=1")
    assert "step_2.png: No space left on device (ENOSPC), a disk problem" in line
    assert f"the earlier checkpoints are intact (newest: {framework.path(tmp_path, 1).name}, step 1)" in line
    assert framework.steps(tmp_path) == [1]
    assert_same_state(framework, framework.path(tmp_path, 1), reference.states[1])
    same_in_both(across, "full disk while writing logs", framework, normalise(line, framework, tmp_path))


# -------------------------------------------------------------------------------- concurrent runs


def wait_for(predicate, proc=None, timeout=300):
    end = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"the training process ended early ({proc.returncode})"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_a_locked_run_is_refused_before_anything_is_written(framework, tmp_path, capsys, across):
    """While a process holds logs-<name>/.lock, train.py refuses in one line and writes nothing."""
    from efficient_vdvae_core.runs import RunLock
    paths = run_paths("tiny", tmp_path)
    with RunLock(paths.logs, log=lambda *a: None):
        line = refused_training(capsys, framework, tmp_path, 2)
        assert sorted(p.name for p in paths.logs.iterdir()) == [".lock"]  # no saved config, no events
    assert line.startswith("error: ") and f"{paths.logs / '.lock'}: the run is in use by process {os.getpid()}" in line
    assert not paths.checkpoints.exists()
    same_in_both(across, "locked run", framework, normalise(line, framework, tmp_path))


def test_a_second_training_is_refused_while_synthesis_reads_alongside(framework, tmp_path, capsys,
                                                                      request):
    cache = request.getfixturevalue("jax_compilation_cache") if framework.name == "jax" else None
    with open(tmp_path / "log.txt", "w") as log:
        command = train_command(framework, tmp_path, 10_000, "train.checkpoint_and_eval_interval_in_steps=1")
        first = subprocess.Popen(command, env=python_env(cache), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    lock = run_paths("tiny", tmp_path).logs / ".lock"
    try:
        wait_for(lambda: framework.steps(tmp_path), first)
        line = refused_training(capsys, framework, tmp_path, 10_000)
        assert f"{lock}: the run is in use by process {first.pid} on host" in line
        synth = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(tmp_path), "--set", "run.device='cpu'",
                 "--set", "synthesis.synthesis_mode='generation'", "--set", "synthesis.temperature_settings=[1.0]"]
        run_main(framework.synthesize.main, synth, parser=framework.synthesize.parser())  # reads the newest checkpoint
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert lock.read_text().startswith(f"{first.pid}@")  # left behind by the killed run...
    newest = framework.steps(tmp_path)[-1]
    capsys.readouterr()
    train_here(framework, tmp_path, newest + 1, "train.checkpoint_and_eval_interval_in_steps=1")  # ... not in the way
    assert RESUMED.search(capsys.readouterr().out).group(2) == str(newest)
    assert not lock.exists() and framework.steps(tmp_path)[-1] == newest + 1
