"""Data-parallel PyTorch training of unusual but valid architectures (parameters without gradients included):
2 processes of `sh train.sh` train the run of one process."""
import subprocess
import sys

import numpy as np
import pytest

from tests.architectures import UNUSUAL, overrides
from tests.behaviour.conftest import REPO, ROUNDING, cli_args, python_env, train_here

CASES = {name: overrides(*rest) for name, *rest in UNUSUAL}


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")
@pytest.mark.parametrize("framework", ["torch"], indirect=True)
@pytest.mark.parametrize("name", ["two_levels"])
def test_two_processes_train_unusual_architectures(framework, name, tmp_path):
    sets = [*CASES[name], "train.checkpoint_and_eval_interval_in_steps=3"]
    env = dict(python_env(), NUM_GPUS_PER_NODE="2", PYTHON=sys.executable)
    out = subprocess.run(["sh", str(REPO / "efficient_vdvae_torch" / "train.sh"), *cli_args(tmp_path / "two", 3, *sets)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Running on 2 process(es)" in out.stdout
    train_here(framework, tmp_path / "one", 3, *sets)
    meta, arrays = framework.read(framework.path(tmp_path / "two", 3))
    _, reference = framework.read(framework.path(tmp_path / "one", 3))
    assert meta["step"] == 3 and arrays.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(arrays[key], value, rtol=ROUNDING, atol=ROUNDING, err_msg=key)
    pool = [k for k in arrays if ".pool." in k and k.startswith("params/bottom_up.levels_up_downsample.")]
    assert pool  # the pool of the last level is saved (unchanged but for weight decay)
