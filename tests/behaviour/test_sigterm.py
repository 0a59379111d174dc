"""SIGTERM (what SLURM, Kubernetes and spot instances send) during training, sent from outside to
the real entry points: a checkpoint of the stop step, one line saying so, the distinct exit code, the lock
released, and the same command again ends with the weights of a run never interrupted.

The signal must arrive at a known step: a sitecustomize module put on the subprocess's PYTHONPATH (test code
only) makes process 0 wait at the start of iteration PAUSE_STEP, after touching a marker file, until its
signal handler has run. The test sends the signal when the marker appears, so the run stops after finishing
that iteration, at step PAUSE_STEP + 1. Under train.sh the signal goes to the launcher (as SLURM's does),
which forwards it; only process 0 waits, so the other process meets it at a later point of the step, and
both must agree on the stop step.
"""
import signal
import subprocess
import sys
import time

import pytest

from efficient_vdvae_core.runs import run_paths
from tests.behaviour.conftest import (REPO, RESUMED, STEPS, assert_same_state, cli_args, python_env, train_command,
                                      train_here)
from tests.behaviour.test_processes import assert_same_run

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signal semantics of Linux")

PAUSE_STEP = 2  # process 0 waits for the signal at the start of this iteration: the run stops at step 3
STOP_STEP = PAUSE_STEP + 1
RARE_CHECKPOINTS = "train.checkpoint_and_eval_interval_in_steps=1000"  # only the signal's and the last one
EXIT_PREEMPTED = 143  # 128 + SIGTERM

SITECUSTOMIZE = '''
"""Test-only, imported at start-up: EVDVAE_TEST_PAUSE=<step>:<marker> makes process 0 (RANK unset or 0) touch
<marker> at the start of training iteration <step>, then wait until its SIGTERM handler has run."""
import os

_spec = os.environ.get("EVDVAE_TEST_PAUSE")
if _spec and os.environ.get("RANK", "0") == "0":
    import time

    from efficient_vdvae_core import schedules
    from efficient_vdvae_core.training import preemption

    _step, _marker = _spec.split(":", 1)
    _received = []
    _handler = preemption.StopRequests._handler

    def _recording_handler(self, signum, frame):
        _received.append(signum)
        return _handler(self, signum, frame)

    _step_values = schedules.step_values

    def _pausing_step_values(step, cfg):
        if step == int(_step):
            open(_marker, "w").close()
            end = time.monotonic() + 120
            while not _received and time.monotonic() < end:
                time.sleep(0.01)
        return _step_values(step, cfg)

    preemption.StopRequests._handler = _recording_handler
    schedules.step_values = _pausing_step_values
'''


def pause_env(tmp_path, marker, cache=None, **extra):
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return dict(python_env(cache, extra_path=[inject]), EVDVAE_TEST_PAUSE=f"{PAUSE_STEP}:{marker}", **extra)


def signalled_run(command, env, marker, tmp_path, timeout=300):
    """Start `command`, send SIGTERM once the marker appears; returns (exit code, stdout + stderr)."""
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
            assert time.monotonic() < end, "timed out waiting for the pause"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, (tmp_path / "log.txt").read_text()


def assert_stopped_cleanly(framework, workdir, code, out):
    """Exit code, one line naming the signal and the checkpoint, only that checkpoint written, lock released."""
    paths = run_paths("tiny", workdir)
    assert code == EXIT_PREEMPTED, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    line = (f"Stopped by SIGTERM after step {STOP_STEP} of {STEPS}, checkpoint "
            f"{framework.path(workdir, STOP_STEP)} written; run the same command to resume")
    assert out.count(line) == 1, out[-3000:]
    assert framework.steps(workdir) == [STOP_STEP] and framework.temporaries(workdir) == []
    assert not (paths.logs / ".lock").exists()


def test_sigterm_checkpoints_the_stop_step_and_the_rerun_ends_as_if_uninterrupted(framework, reference, tmp_path,
                                                                                  capsys, request):
    cache = request.getfixturevalue("jax_compilation_cache") if framework.name == "jax" else None
    marker = tmp_path / "paused"
    code, out = signalled_run(train_command(framework, tmp_path, STEPS, RARE_CHECKPOINTS),
                              pause_env(tmp_path, marker, cache), marker, tmp_path)
    assert_stopped_cleanly(framework, tmp_path, code, out)
    assert_same_state(framework, framework.path(tmp_path, STOP_STEP), reference.states[STOP_STEP])
    capsys.readouterr()
    train_here(framework, tmp_path, STEPS, RARE_CHECKPOINTS)  # the same command again
    assert RESUMED.search(capsys.readouterr().out).group(2) == str(STOP_STEP)
    assert framework.steps(tmp_path) == [STOP_STEP, STEPS]
    assert_same_state(framework, framework.path(tmp_path, STEPS), reference.states[STEPS])


@pytest.mark.parametrize("framework", ["torch"], indirect=True)
def test_sigterm_to_train_sh_stops_both_processes_at_the_same_step(framework, reference, tmp_path):
    """SIGTERM to the launcher of 2 CPU processes (gloo): one checkpoint of one agreed step, exit code 143, and
    the same command again trains on to the uninterrupted run's weights."""
    marker = tmp_path / "paused"
    command = ["sh", str(REPO / "efficient_vdvae_torch" / "train.sh"), *cli_args(tmp_path, STEPS, RARE_CHECKPOINTS)]
    env = pause_env(tmp_path, marker, NUM_GPUS_PER_NODE="2", PYTHON=sys.executable)
    code, out = signalled_run(command, env, marker, tmp_path)
    assert "Running on 2 process(es)" in out
    assert_stopped_cleanly(framework, tmp_path, code, out)
    assert framework.read(framework.path(tmp_path, STOP_STEP))[0]["step"] == STOP_STEP
    env.pop("EVDVAE_TEST_PAUSE")
    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert RESUMED.search(rerun.stdout).group(2) == str(STOP_STEP)
    assert_same_run(framework, tmp_path, reference, STEPS)
