"""PyTorch synthesis in 2 processes (torchrun through launch.py) gives the results of one process: reconstruction
metrics reduced exactly over the processes (sums of per-image values), each image written once, reports written
by process 0; div_stats the same array; encodings the same arrays in image order. Other modes are refused in
one line."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import run_paths
from tests.behaviour.conftest import REPO, ROUNDING, copy_run, python_env
from tests.conftest import EGS

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux"),
              pytest.mark.parametrize("framework", ["torch"], indirect=True)]


def synthesis_args(workdir, mode):
    """10 test images in batches of 4: the last batch of 2 processes has padding rows only in process 1."""
    return ["--config", str(EGS / "tiny.cfg"), "--workdir", str(workdir), "--max-images", "10",
            "--set", f"synthesis.synthesis_mode='{mode}'", "--set", "synthesis.batch_size=4",
            "--set", "run.num_cpus=0", "--set", "run.device='cpu'"]


def two_processes(workdir, mode):
    command = [sys.executable, str(REPO / "efficient_vdvae_torch" / "launch.py"), "--standalone", "--nnodes=1",
               "--nproc_per_node=2", str(REPO / "efficient_vdvae_torch" / "synthesize.py"), *synthesis_args(workdir, mode)]
    return subprocess.run(command, env=python_env(), capture_output=True, text=True, timeout=300)


def files(folder):
    return {p.relative_to(folder): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_processes_reconstruct_measure_div_stats_and_encode_like_one(framework, reference, tmp_path):
    one, two = copy_run(framework, reference.workdir, tmp_path / "one", [6]), copy_run(
        framework, reference.workdir, tmp_path / "two", [6])
    for mode in ("reconstruction", "div_stats", "encoding"):
        run_main(framework.synthesize.main, synthesis_args(tmp_path / "one", mode), parser=framework.synthesize.parser())
        out = two_processes(tmp_path / "two", mode)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.count("Synthesis mode: ") == 1  # process 0 logs
    ones, twos = files(one.logs / "synthesis-images"), files(two.logs / "synthesis-images")
    assert ones.keys() == twos.keys() and len([k for k in ones if k.suffix == ".png"]) == 10
    for name, path in ones.items():
        if path.suffix == ".png":
            assert path.read_bytes() == twos[name].read_bytes(), name
    report_one = json.loads(next(p for k, p in ones.items() if k.name == "reconstruction_metrics.json").read_text())
    report_two = json.loads(next(p for k, p in twos.items() if k.name == "reconstruction_metrics.json").read_text())
    assert report_one["n_images"] == report_two["n_images"] == 10
    for key in ("nelbo", "reconstruction_loss", "kl_div", "ssim"):
        assert report_two[key] == pytest.approx(report_one[key], rel=ROUNDING), key
    np.testing.assert_allclose(np.load(two.latents / "div_stats.npy"), np.load(one.latents / "div_stats.npy"),
                               rtol=ROUNDING, atol=1e-7)
    encoded_one, encoded_two = files(one.latents / "encodings_seed_420"), files(two.latents / "encodings_seed_420")
    assert encoded_one.keys() == encoded_two.keys() and len([k for k in encoded_one if k.suffix == ".npy"]) >= 2
    assert encoded_two[Path("names.txt")].read_text() == encoded_one[Path("names.txt")].read_text()  # image order
    for name, path in encoded_one.items():
        if path.suffix == ".npy":
            reference_array = np.load(path)
            assert reference_array.shape[0] == 10
            np.testing.assert_allclose(np.load(encoded_two[name]), reference_array, rtol=ROUNDING, atol=1e-6,
                                       err_msg=str(name))
    assert not [p for p in two.latents.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_modes_that_run_in_one_process_are_refused_in_several(framework, reference, tmp_path):
    copy_run(framework, reference.workdir, tmp_path, [6])
    out = two_processes(tmp_path, "generation")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert ("error: [synthesis] synthesis_mode = 'generation' runs in one process (several share only "
            "reconstruction, div_stats, encoding)") in out.stderr
    assert not (run_paths("tiny", tmp_path).logs / "synthesis-images").exists()
