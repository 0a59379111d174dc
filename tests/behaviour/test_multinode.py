"""PyTorch across nodes, as two nodes on this machine: two `sh train.sh` launches with NUM_NODES=2 and a c10d
rendezvous on 127.0.0.1 (one CPU process each, gloo) train the run of one process, the checkpoints written by
global rank 0 alone, and a run moves between 1 and 2 nodes when it resumes."""
import socket
import subprocess
import sys

import pytest

from tests.behaviour.conftest import REPO, assert_same_run, cli_args, copy_run, python_env, train_here

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux"),
              pytest.mark.parametrize("framework", ["torch"], indirect=True)]

SPY = """import os
from efficient_vdvae_torch.utils import checkpoint
_write = checkpoint.TorchCodec.write
def write(self, path, state):
    with open(os.environ["CHECKPOINT_WRITES"], "a") as log:
        log.write(f"{os.environ.get('RANK')} {os.path.basename(path)}\\n")
    return _write(self, path, state)
checkpoint.TorchCodec.write = write
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(workdir, steps, *sets, n_nodes=2, spy_dir=None, extra_env=None):
    """`n_nodes` launches of train.sh as nodes of one job (one process each); returns the Popen objects."""
    env = dict(python_env(extra_path=[spy_dir] if spy_dir else ()), NUM_NODES=str(n_nodes), NUM_GPUS_PER_NODE="1",
               RDZV_ENDPOINT=f"127.0.0.1:{free_port()}", RDZV_ID=f"test{free_port()}", PYTHON=sys.executable,
               **(extra_env or {}))
    command = ["sh", str(REPO / "efficient_vdvae_torch" / "train.sh"), *cli_args(workdir, steps, *sets)]
    return [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(n_nodes)]


def finish(nodes, timeout=300):
    """(return codes, all stdout, all stderr) of the nodes."""
    outs = [node.communicate(timeout=timeout) for node in nodes]
    return [n.returncode for n in nodes], "".join(o for o, _ in outs), "".join(e for _, e in outs)


def test_two_nodes_train_the_run_of_one_process_and_resume_across_node_counts(framework, reference, tmp_path):
    (tmp_path / "spy").mkdir()
    (tmp_path / "spy" / "sitecustomize.py").write_text(SPY)
    writes = tmp_path / "writes.txt"
    copy_run(framework, reference.workdir, tmp_path, [1])  # a run of one process, at step 1
    codes, out, err = finish(start_nodes(tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=1",
                                         spy_dir=tmp_path / "spy", extra_env={"CHECKPOINT_WRITES": str(writes)}))
    assert codes == [0, 0], err[-3000:]
    assert out.count("Running on 2 process(es), device cpu") == 1
    assert out.count("Resumed from") == 1 and "at step 1" in out
    assert writes.read_text().splitlines() == ["0 checkpoint_2.pt", "0 checkpoint_3.pt"]  # global rank 0 alone
    assert framework.steps(tmp_path) == [1, 2, 3] and framework.temporaries(tmp_path) == []
    assert_same_run(framework, tmp_path, reference, 2)
    assert_same_run(framework, tmp_path, reference, 3)  # weights, EMA, optimizer; validation NELBO at 2 and 3
    train_here(framework, tmp_path, 4, "train.checkpoint_and_eval_interval_in_steps=1")  # one node resumes
    assert_same_run(framework, tmp_path, reference, 4)
