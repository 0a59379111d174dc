"""SIGKILL anywhere, then the same command again: the final state is bit-identical to a run never interrupted;
the loader workers that outlive a killed PyTorch run for seconds do not hold its lock.

PyTorch: killed during start-up, halfway through writing a checkpoint, right after its rename and at a
random moment; every restart resumes from the newest complete checkpoint and removes the leftover
temporary file. The kills inside a write come from a sitecustomize module put on the subprocess's
PYTHONPATH (test code only), which wraps torch.save / os.replace when EVDVAE_TEST_KILL=<point>:<step>
is set. JAX: killed at whatever point it has reached when a checkpoint appears, then resumed in this
process (its programs are compiled already).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from efficient_vdvae_core.runs import run_paths
from tests.behaviour.conftest import RESUMED, STEPS, assert_same_state, python_env, train_command, train_here

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL semantics of Linux")

SIGKILLED = -signal.SIGKILL
EVERY_STEP = "train.checkpoint_and_eval_interval_in_steps=1"

SITECUSTOMIZE = '''
"""Test-only fault injection, imported at start-up: EVDVAE_TEST_KILL=<point>:<step> SIGKILLs this process
'mid_write' halfway through writing checkpoint <step>, or 'after_rename' right after it is renamed into place."""
import os
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


def kill_env(tmp_path, kill=None, cache=None):
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = python_env(cache, extra_path=[inject])
    env.pop("EVDVAE_TEST_KILL", None)
    if kill:
        env["EVDVAE_TEST_KILL"] = kill
    return env


def train_process(framework, tmp_path, workdir, steps, kill=None):
    """Run train.py to its end in a subprocess; returns (returncode, stdout + stderr)."""
    out = subprocess.run(train_command(framework, workdir, steps, EVERY_STEP), env=kill_env(tmp_path, kill),
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    return out.returncode, out.stdout


def start_process(framework, tmp_path, workdir, steps, cache=None):
    with open(tmp_path / "log.txt", "w") as log:
        return subprocess.Popen(train_command(framework, workdir, steps, EVERY_STEP),
                                env=kill_env(tmp_path, cache=cache), cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc=None, timeout=300):
    end = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"the training process ended early ({proc.returncode})"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("framework", ["torch"], indirect=True)
def test_sigkill_anywhere_then_restart_gives_the_uninterrupted_result(framework, reference, tmp_path):
    states = reference.states
    work = tmp_path / "work"
    resumed_at = []

    def complete_and_exact():
        """Every checkpoint_<k>.pt in place is complete and equals the uninterrupted run's at step k."""
        for step, path in framework.folder(work).list():
            assert_same_state(framework, path, states[step])

    def restarted(output, newest_before):
        match = RESUMED.search(output)
        step = int(match.group(2)) if match else 0
        assert step == newest_before, output  # the newest complete checkpoint, never an older one
        if match:
            assert Path(match.group(1)).name == f"checkpoint_{step}.pt"
        resumed_at.append(step)

    # 1. during start-up, as soon as the run's config is saved
    proc = start_process(framework, tmp_path, work, STEPS)
    wait_for(run_paths("tiny", work).saved_config.is_file, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == SIGKILLED
    assert framework.steps(work) == []

    # 2. halfway through writing checkpoint 2: a half-written temporary file, never a checkpoint_2.pt
    code, out = train_process(framework, tmp_path, work, STEPS, kill="mid_write:2")
    assert code == SIGKILLED, out
    restarted(out, 0)
    assert framework.steps(work) == [1] and len(framework.temporaries(work)) == 1
    complete_and_exact()

    # 3. right after checkpoint 4 is renamed into place, before older ones are pruned
    code, out = train_process(framework, tmp_path, work, STEPS, kill="after_rename:4")
    assert code == SIGKILLED, out
    restarted(out, 1)
    assert "Removed 1 incomplete checkpoint file(s) of an interrupted write: .checkpoint_2.pt.tmp-" in out
    assert framework.steps(work) == [2, 3, 4] and framework.temporaries(work) == []
    complete_and_exact()

    # 4. at whatever point it has reached when checkpoint 5 appears
    proc = start_process(framework, tmp_path, work, STEPS)
    wait_for(lambda: 5 in framework.steps(work), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) in (SIGKILLED, 0)
    restarted((tmp_path / "log.txt").read_text(), 4)
    complete_and_exact()
    newest = framework.steps(work)[-1]

    # 5. the last restart runs to the end
    code, out = train_process(framework, tmp_path, work, STEPS)
    assert code == 0, out
    if newest < STEPS:  # else the killed process had already finished
        restarted(out, newest)
    assert framework.steps(work) == [STEPS - 1, STEPS] and framework.temporaries(work) == []
    complete_and_exact()  # bit-exact: weights, EMA, optimizer moments
    assert resumed_at[:3] == [0, 1, 4]


@pytest.mark.parametrize("framework", ["jax"], indirect=True)
def test_jax_sigkill_then_restart_gives_the_uninterrupted_result(framework, reference, tmp_path, capsys,
                                                                 jax_compilation_cache):
    proc = start_process(framework, tmp_path, tmp_path, STEPS, cache=jax_compilation_cache)
    try:
        wait_for(lambda: 2 in framework.steps(tmp_path), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) in (SIGKILLED, 0)
    newest = framework.steps(tmp_path)[-1]
    for step, path in framework.folder(tmp_path).list():
        assert_same_state(framework, path, reference.states[step])
    end = min(newest + 2, STEPS)
    capsys.readouterr()
    train_here(framework, tmp_path, end, EVERY_STEP)
    out = capsys.readouterr().out
    if newest < end:
        assert RESUMED.search(out).group(2) == str(newest)
    assert framework.steps(tmp_path) == [end - 1, end] and framework.temporaries(tmp_path) == []
    for step, path in framework.folder(tmp_path).list():
        assert_same_state(framework, path, reference.states[step])


def children(pid):
    """PIDs of the live processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("framework", ["torch"], indirect=True)
def test_sigkill_while_loader_workers_live_on_then_an_immediate_restart_is_not_refused(framework, tmp_path, capsys):
    """The DataLoader workers of a SIGKILLed run outlive it for seconds; the run's lock is not theirs to hold."""
    command = train_command(framework, tmp_path, 10_000, EVERY_STEP, "run.num_cpus=2")
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(command, env=python_env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    workers = []
    try:
        wait_for(lambda: framework.steps(tmp_path) and children(proc.pid), proc)
        workers = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == SIGKILLED
        assert any(Path(f"/proc/{w}").exists() for w in workers), "no loader worker outlived the killed run"
        newest = framework.steps(tmp_path)[-1]
        capsys.readouterr()
        train_here(framework, tmp_path, newest + 1, EVERY_STEP)  # at once: not refused as "in use"
        assert RESUMED.search(capsys.readouterr().out).group(2) == str(newest)
        assert framework.steps(tmp_path)[-1] == newest + 1
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers:  # only while it is still this run's worker (a PID can be reused)
            try:
                if "train.py" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
