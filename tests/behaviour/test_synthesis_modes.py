"""The modes beyond the original through synthesize.py of both frameworks on the tiny runs: the importance-weighted
NLL (K = 1 is the model's ELBO, IW-NLL <= NELBO in the ELBO's units, the other framework's weights), the
interpolation strips, the conditional grids and the sample-quality report with a tiny detector file.

The runs, every invocation's result and the kernels run by hand come from `synthesis_fixtures`.
"""
import json
import math
import socket

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.metrics import LN2, effective_pixels
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_core.training.images import images_to_uint8
from tests.behaviour.synthesis_fixtures import DETECTOR, QUALITY_SAMPLES, SEED, STEPS
from tests.behaviour.synthesis_fixtures import framework, synthesis_runs  # noqa: F401, F811 (pytest fixtures)
from tests.behaviour.test_synthesis_generation import one_line_error
from tests.conftest import egs_config

SIZE, PAD = 32, 2  # tiny images and the grid padding


def png(path):
    return np.asarray(Image.open(path))


def tile(grid, row, col):
    """Image (row, col) of a grid of 32x32 images."""
    top, left = PAD + row * (SIZE + PAD), PAD + col * (SIZE + PAD)
    return grid[top:top + SIZE, left:left + SIZE]


def bits_per_dim(nats):
    return np.asarray(nats, np.float64) / (effective_pixels(egs_config("tiny").data) * LN2)


def test_iw_nll_of_one_sample_is_the_models_elbo(framework, synthesis_runs):
    """K = 1: the reported NELBO is the evaluation pass's (the same posterior noise, by hand), and the
    IW-NLL its single-sample estimate, equal to it up to the Monte Carlo noise of the KL term."""
    work, _, results = synthesis_runs.rgb(framework)
    report, by_hand = results["iw_k1"]["result"], results["evaluate_iw"]
    folder = run_paths("tiny", work).synthesis_images / "iw_nll" / f"ema-step{STEPS}-K1"
    assert json.loads((folder / "iw_nll.json").read_text()) == report
    assert report["n_samples"] == 1 and report["n_images"] == 6 and report["units"] == "bits/dim"
    assert report["split"] == "test" and report["dataset"] == "embedded_rgb 32x32" and report["framework"] == framework
    assert report["nelbo"] == pytest.approx(bits_per_dim(by_hand["recon_nats"] + by_hand["kl_nats"]).mean(),
                                            rel=1e-5)
    assert report["iw_nll"] == pytest.approx(bits_per_dim(report["per_image_nll_nats"]).mean(), rel=1e-12)
    assert abs(report["gap"]) <= 4 * report["gap_stderr"] and report["iw_nll"] != report["nelbo"]
    assert "iw_nll: 100%" in results["iw_k1"]["stderr"]  # the progress bar over batches


def test_iw_nll_is_below_the_nelbo_and_tightens_with_k(framework, synthesis_runs):
    """K = 4 in passes of 3 + 1 samples, 6 images in batches of 4 + 2: IW-NLL <= NELBO per image on average,
    below the K = 1 bound, both in the reconstruction mode's units and near its NELBO."""
    _, _, results = synthesis_runs.rgb(framework)
    k4, k1, recon = (results[name]["result"] for name in ("iw_k4", "iw_k1", "recon"))
    assert k4["n_samples"] == 4 and k4["n_images"] == 6 and k4["units"] == k1["units"] == recon["units"]
    assert k4["gap"] > 0 and k4["iw_nll"] == pytest.approx(k4["nelbo"] - k4["gap"], rel=1e-12)
    assert k4["iw_nll"] < k4["nelbo"] and k4["iw_nll"] < k1["iw_nll"]
    assert k4["nelbo"] == pytest.approx(recon["nelbo"], rel=0.02)  # other posterior noise, the same ELBO
    for key in ("iw_nll_stderr", "nelbo_stderr", "gap_stderr"):
        assert 0 < k4[key] < 1, key
    assert math.isfinite(k4["iw_nll"]) and len(k4["per_image_nll_nats"]) == 6


def test_binarized_iw_nll_is_in_nats_per_image(framework, synthesis_runs):
    _, results = synthesis_runs.binarized(framework)
    report, recon = results["iw"]["result"], results["recon"]["result"]
    assert report["units"] == recon["units"] == "nats/image" and report["n_images"] == 3
    assert report["iw_nll"] == pytest.approx(np.mean(report["per_image_nll_nats"]), rel=1e-12)
    assert 50 < report["iw_nll"] <= report["nelbo"]


def test_iw_nll_with_the_other_frameworks_weights(synthesis_runs):
    """Each framework's IW-NLL of the other's checkpoint agrees with the other's own (the same weights and
    images; the frameworks draw different noise, so up to the Monte Carlo error of the paired differences)."""
    torch_own, jax_own = (synthesis_runs.rgb(fw)[2]["iw_k4"]["result"] for fw in ("torch", "jax"))
    jax_of_torch = synthesis_runs.rgb("jax")[2]["cross_iw"]["result"]
    torch_of_jax = synthesis_runs.cross()["cross_iw"]["result"]
    for own, other in ((torch_own, jax_of_torch), (jax_own, torch_of_jax)):
        assert other["framework"] != own["framework"] and other["units"] == own["units"]
        diff = bits_per_dim(np.subtract(other["per_image_nll_nats"], own["per_image_nll_nats"]))
        assert abs(diff.mean()) <= 4 * diff.std(ddof=1) / math.sqrt(diff.size) + 1e-6
        assert other["iw_nll"] == pytest.approx(own["iw_nll"], rel=0.01)
    assert jax_of_torch["iw_nll"] != torch_own["iw_nll"]  # really computed by the other framework


def test_interpolation_strips(framework, synthesis_runs):
    """3 pairs at 5 points (decoded in batches of 4 + 1 padded): both methods start and end at the same images,
    differ in between, and batches of 3 (pair 1 read across two batches) give the same files."""
    work, tmp, results = synthesis_runs.rgb(framework)
    folder = run_paths("tiny", work).synthesis_images / "interpolated" / f"ema-step{STEPS}-n5-out1"
    written = results["interpolation"]["result"]
    assert written == [str(folder / f"pair-{i}-{m}.png") for i in range(3) for m in ("linear", "spherical")]
    for i in range(3):
        linear, spherical = png(folder / f"pair-{i}-linear.png"), png(folder / f"pair-{i}-spherical.png")
        assert linear.shape == spherical.shape == (PAD + SIZE + PAD, PAD + 5 * (SIZE + PAD), 3)
        for col in (0, 4):  # the same latents up to the rounding of the spherical formula, the same noise
            assert np.mean(tile(linear, 0, col) != tile(spherical, 0, col)) < 0.01, (i, col)
        assert not np.array_equal(tile(linear, 0, 0), tile(linear, 0, 4))
        assert not np.array_equal(tile(linear, 0, 2), tile(spherical, 0, 2))
    batch3 = run_paths("tiny", tmp / "batch3").synthesis_images / "interpolated" / f"ema-step{STEPS}-n5-out1"
    assert results["interpolation_batch3"]["result"] == [str(batch3 / p.rsplit("/", 1)[1]) for p in written]
    for path in written:
        np.testing.assert_array_equal(png(batch3 / path.rsplit("/", 1)[1]), png(path))


def test_conditional_grids(framework, synthesis_runs):
    """keep_top_layers [0, 3, 6] of 6 layers, 2 samples: each row shows the test image and its reconstruction;
    at output temperature 0.01, keeping all 6 layers gives the reconstruction again, keeping 3 or none does not."""
    work, _, results = synthesis_runs.rgb(framework)
    folder = run_paths("tiny", work).synthesis_images / "conditional" / f"ema-step{STEPS}-k0_3_6-s2-t0.8-out0.01"
    assert results["conditional"]["result"] == [str(folder / f"image-{i:04d}.png") for i in range(2)]
    images = images_to_uint8(np.stack([make_dataset(egs_config("tiny").data, "test", seed=SEED, n_samples=2).load(i)
                                       for i in range(2)]), egs_config("tiny"))
    for i in range(2):
        grid = png(folder / f"image-{i:04d}.png")
        assert grid.shape == (PAD + 3 * (SIZE + PAD), PAD + 4 * (SIZE + PAD), 3)
        for row in range(3):
            np.testing.assert_array_equal(tile(grid, row, 0), images[i])
            np.testing.assert_array_equal(tile(grid, row, 1), tile(grid, 0, 1))
        distance = lambda row: np.mean([np.abs(tile(grid, row, c).astype(float) - tile(grid, row, 1)).mean()
                                        for c in (2, 3)])  # mean |sample - reconstruction|, 0..255
        assert distance(2) < 5 and min(distance(0), distance(1)) > 4 * distance(2)  # measured: 2.5 and 41-45
        assert not np.array_equal(tile(grid, 0, 2), tile(grid, 0, 3))
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["prior_temperatures"] == [0.8] * 6


def test_sample_quality_report(framework, synthesis_runs):
    """6 prior samples against 6 test images (generated in batches of 4 + 2 padded), scored with a tiny
    TorchScript detector file: the report names the weights file, the counts, the split and the resizing."""
    work, tmp, results = synthesis_runs.rgb(framework)
    folder = run_paths("tiny", work).synthesis_images / "sample_quality" / f"ema-step{STEPS}-n{QUALITY_SAMPLES}-out1"
    report = results["sample_quality"]["result"]
    assert json.loads((folder / "sample_quality.json").read_text()) == report
    for part in ("real", "generated"):
        assert sorted(p.name for p in (folder / part).iterdir()) == [f"image-{i:05d}.png" for i in range(6)]
    assert report["detector"]["path"] == str(tmp / DETECTOR) and len(report["detector"]["sha256"]) == 64
    assert report["real"]["n_images"] == report["fake"]["n_images"] == QUALITY_SAMPLES
    assert report["split"] == "test" and report["dataset"] == "embedded_rgb 32x32" and "none" in report["resize"]
    assert report["framework"] == framework and report["inception_score_splits"] == 6
    assert report["fid"] > 0 and report["inception_score"] >= 1 and 0 <= report["precision"] <= 1
    test_images = images_to_uint8(np.stack([make_dataset(egs_config("tiny").data, "test", seed=SEED,
                                                         n_samples=1).load(0)]), egs_config("tiny"))
    np.testing.assert_array_equal(png(folder / "real" / "image-00000.png"), test_images[0])


@pytest.mark.parametrize("problem", ["missing", "not TorchScript"])
def test_sample_quality_without_a_usable_weights_file(framework, problem, capsys, monkeypatch, synthesis_runs,
                                                      tmp_path):
    """No weights file: one line with the download address and the path to put it at; a file that is no
    TorchScript detector: one line naming it. The network is never used and nothing is written."""
    work, _, _ = synthesis_runs.rgb(framework)

    def no_network(*args, **kwargs):
        raise AssertionError("sample_quality opened a network connection")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    weights = tmp_path / "weights" / "inception-2015-12-05.pt"
    if problem == "not TorchScript":
        weights.parent.mkdir()
        weights.write_bytes(b"an HTML error page, say")
    msg = one_line_error(capsys, framework, work, "sample_quality", f"synthesis.inception_path='{weights}'",
                         "synthesis.quality_samples=3")
    if problem == "missing":
        assert f"inception_path = '{weights}': file not found" in msg and "https://" in msg and f"to {weights}" in msg
    else:
        assert msg.startswith(f"error: {weights}: not a TorchScript detector (")
    assert not (run_paths("tiny", work).synthesis_images / "sample_quality" / f"ema-step{STEPS}-n3-out1").exists()
