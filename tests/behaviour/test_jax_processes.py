"""JAX across processes: two CPU processes joined by jax.distributed (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID; gloo collectives), one device each, train the run of one process, each loading its half of every
global batch, the Orbax checkpoint written by both together."""
import subprocess

import pytest

from tests.behaviour.conftest import REPO, assert_same_run, python_env, train_command
from tests.behaviour.test_multinode import free_port


@pytest.mark.parametrize("framework", ["jax"], indirect=True)
def test_two_processes_match_one_process(framework, reference, tmp_path, jax_compilation_cache):
    command = train_command(framework, tmp_path, 3, "train.checkpoint_and_eval_interval_in_steps=3")
    job = dict(python_env(jax_compilation_cache), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
               JAX_NUM_PROCESSES="2")
    processes = [subprocess.Popen(command, env=dict(job, JAX_PROCESS_ID=str(i)), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert "Running on 2 device(s) (cpu) in 2 process(es)" in outs[0][0]
    assert "Saved checkpoint" not in outs[1][0]  # process 1 logs nothing
    assert framework.steps(tmp_path) == [3] and framework.temporaries(tmp_path) == []
    assert_same_run(framework, tmp_path, reference, 3)
