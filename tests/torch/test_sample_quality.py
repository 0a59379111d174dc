"""`python -m efficient_vdvae_torch.sample_quality` over PNG folders with a tiny TorchScript detector of the
Inception interface (saved with torch.jit.script to a temporary file; no weights file is needed)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from efficient_vdvae_core.images import save_png
from efficient_vdvae_torch import sample_quality
from tests.conftest import REPO
from tests.tiny_detector import write_tiny_detector


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    return write_tiny_detector(tmp_path_factory.mktemp("detector") / "tiny_detector.pt")


def image_folder(folder, n, seed, size=24, channels=3):
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 256, (1, 1, channels))  # one colour per image, plus noise
        noise = rng.integers(-40, 40, (size, size, channels))
        save_png(folder / f"{i:03d}.png", np.clip(base + noise, 0, 255).astype(np.uint8))
    return folder


def run(*args):
    return sample_quality.main(sample_quality.parser().parse_args([str(a) for a in args]))


def test_a_folder_against_itself_and_against_another(tmp_path, detector_file, capsys):
    real = image_folder(tmp_path / "real", 40, seed=1)
    other = image_folder(tmp_path / "other", 40, seed=2, channels=1)  # grayscale PNGs go to 3 channels
    same = run("--real", real, "--fake", real, "--inception", detector_file, "--batch-size", 16, "--splits", 4,
               "--output", tmp_path / "same.json")
    assert abs(same["fid"]) < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    report = run("--real", real, "--fake", other, "--inception", detector_file, "--batch-size", 16, "--splits", 4,
                 "--resize", 32)
    assert report["fid"] > 1e-2 and report["inception_score"] >= 1.0
    written = json.loads((other / sample_quality.REPORT_FILE).read_text())
    assert written == json.loads(json.dumps(report))
    assert written["detector"]["sha256"] == sample_quality.metrics.file_sha256(detector_file)
    assert written["detector"]["feature_dim"] == 16 and written["detector"]["n_classes"] == 10
    assert written["fake"] == {"folder": str(other), "n_images": 40, "image_size_wh": [24, 24]}
    assert "bicubic to 32x32" in written["resize"] and "none" in same["resize"]
    assert "FID" in capsys.readouterr().out


def test_one_repeated_image_has_inception_score_one(tmp_path, detector_file):
    real = image_folder(tmp_path / "real", 12, seed=3)
    repeated = tmp_path / "repeated"
    image = np.random.default_rng(4).integers(0, 256, (24, 24, 3)).astype(np.uint8)
    for i in range(12):
        save_png(repeated / f"{i}.png", image)
    report = run("--real", real, "--fake", repeated, "--inception", detector_file, "--splits", 3)
    assert report["inception_score"] == pytest.approx(1.0, abs=1e-9)
    assert report["recall"] < 0.5


def cli(*args):
    return subprocess.run([sys.executable, "-m", "efficient_vdvae_torch.sample_quality", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_missing_weights_file_is_one_line_saying_where_to_get_it(tmp_path):
    real = image_folder(tmp_path / "real", 3, seed=5)
    missing = tmp_path / "weights" / "inception-2015-12-05.pt"
    result = cli("--real", real, "--fake", real, "--inception", missing)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Inception weights not found at")
    assert str(missing) in lines[0] and sample_quality.INCEPTION_URL in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]  # nothing written


@pytest.mark.parametrize("problem", ["not torchscript", "no images", "mixed sizes", "too few for splits"])
def test_bad_input_is_a_user_error(tmp_path, detector_file, problem):
    real = image_folder(tmp_path / "real", 6, seed=6)
    fake, weights, extra = real, detector_file, []
    if problem == "not torchscript":
        weights = tmp_path / "state_dict.pt"
        torch.save({"w": torch.zeros(2)}, weights)
        message = "not a TorchScript detector"
    elif problem == "no images":
        fake = tmp_path / "empty"
        fake.mkdir()
        message = "no .png images"
    elif problem == "mixed sizes":
        save_png(real / "999.png", np.zeros((8, 8, 3), np.uint8))
        message = "pass --resize N"
    else:
        extra = ["--splits", 10]
        message = "splits"
    with pytest.raises(sample_quality.UserError, match=message):
        run("--real", real, "--fake", fake, "--inception", weights, "--output", tmp_path / "out.json", *extra)
    assert not (tmp_path / "out.json").exists()
