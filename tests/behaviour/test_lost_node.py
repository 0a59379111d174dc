"""A node of a PyTorch job that dies (SIGKILL) or hangs (SIGSTOP, past VDVAE_COLLECTIVE_TIMEOUT_S) ends the other
node in bounded time with one line and exit code 75, and the run resumes from its last checkpoint."""
import contextlib
import os
import signal
import sys
import time

import pytest

from tests.behaviour.conftest import RESUMED, train_here
from tests.behaviour.test_multinode import finish, start_nodes

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo, /proc"),
              pytest.mark.parametrize("framework", ["torch"], indirect=True)]


def process_tree(pid):
    """`pid` and all its descendants (a node: train.sh's torchrun agent and its training process)."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    return [pid] + [p for child in children for p in process_tree(child)]


@pytest.mark.parametrize("how,timeout_s", [(signal.SIGKILL, 1800), (signal.SIGSTOP, 4)], ids=["killed", "hung"])
def test_a_lost_node_ends_the_other_in_one_line_and_the_run_resumes(framework, tmp_path, capsys, how, timeout_s):
    nodes = start_nodes(tmp_path, 60, "train.checkpoint_and_eval_interval_in_steps=2",
                        extra_env={"VDVAE_COLLECTIVE_TIMEOUT_S": str(timeout_s)})
    deadline = time.monotonic() + 120
    while not framework.steps(tmp_path) and time.monotonic() < deadline and nodes[0].poll() is None:
        time.sleep(0.1)
    assert framework.steps(tmp_path), "no checkpoint within 120 s"
    lost = process_tree(nodes[1].pid)
    try:
        for pid in lost:
            os.kill(pid, how)
        started = time.monotonic()
        codes, out, err = finish(nodes[:1], timeout=60)
        seconds = time.monotonic() - started
    finally:
        for pid in lost:
            with contextlib.suppress(ProcessLookupError):  # gone already
                os.kill(pid, signal.SIGKILL)
        nodes[1].communicate()
    assert codes == [75], err[-3000:]
    assert seconds < timeout_s + 30 if how == signal.SIGSTOP else seconds < 30
    assert "Traceback" not in err and "frame #" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors and " lost contact with the others at step " in errors[0], err[-3000:]
    assert "run the same command on every node to resume" in errors[0]
    newest = framework.steps(tmp_path)[-1]
    capsys.readouterr()
    train_here(framework, tmp_path, newest + 1, "train.checkpoint_and_eval_interval_in_steps=2")  # a restart
    assert RESUMED.search(capsys.readouterr().out).group(2) == str(newest)
    assert framework.steps(tmp_path)[-1] == newest + 1
