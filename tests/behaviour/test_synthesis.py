"""synthesize.py of both frameworks on tiny runs trained in the test: reconstruction and div_stats, their files
and numbers, the output folder of each setting, batch-size independence, the fall-back past a corrupt newest
checkpoint, and weights in the original code's format.

The runs, every invocation's result and the kernels run by hand come from `synthesis_fixtures`.
"""
import json

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.evaluation import report_scale
from efficient_vdvae_core.metrics import LN2, effective_pixels
from efficient_vdvae_core.runs import run_paths
from tests.behaviour.synthesis_fixtures import CHECKPOINT_NAME, SEED, STEPS
from tests.behaviour.synthesis_fixtures import framework, synthesis_runs  # noqa: F401, F811 (pytest fixtures)
from tests.conftest import egs_config

METRICS = ("nelbo", "reconstruction_loss", "kl_div", "ssim")


def png(path):
    return np.asarray(Image.open(path))


def recon_folder(work, setting=f"ema-step{STEPS}-out1"):
    return run_paths("tiny", work).synthesis_images / "reconstructed" / setting


def div_stats(work):
    return np.load(run_paths("tiny", work).latents / "div_stats.npy")


def test_reconstruction_writes_images_targets_and_metrics(framework, synthesis_runs):
    work, _, results = synthesis_runs.rgb(framework)
    report = results["recon"]["result"]
    folder = recon_folder(work)
    assert json.loads((folder / "reconstruction_metrics.json").read_text()) == report
    assert report["framework"] == framework and report["checkpoint_step"] == STEPS and report["weights"] == "ema"
    assert report["n_images"] == 6 and report["units"] == "bits/dim" and report["masked"] is None
    assert report["nelbo"] == pytest.approx(report["reconstruction_loss"] + report["kl_div"])
    assert 0 < report["kl_div"] < report["nelbo"] < 20 and -1 <= report["ssim"] <= 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"image-{i:04d}.png" for i in range(6)] + [f"target-{i:04d}.png" for i in range(6)]
        + ["reconstruction_metrics.json", "settings.json"])
    assert png(folder / "image-0005.png").shape == (32, 32, 3)
    target = make_dataset(egs_config("tiny").data, "test", seed=SEED, n_samples=6).load(5)
    np.testing.assert_array_equal(png(folder / "target-0005.png"), np.round(target * 127.5 + 127.5).astype(np.uint8))


def test_reconstruction_nelbo_equals_the_evaluation_kernel(framework, synthesis_runs):
    """The same EMA weights and images through the backend's evaluation kernel by hand (purpose EVALUATION,
    counter 0, each image its own index; the 6 images in one batch, where synthesis reads 4 + 2 padded to 4):
    the same numbers and PNGs."""
    work, _, results = synthesis_runs.rgb(framework)
    report, by_hand = results["recon"]["result"], results["evaluate"]
    config = egs_config("tiny")
    scale = report_scale(False, effective_pixels(config.data))
    expected = {"reconstruction_loss": by_hand["recon_nats"].mean() * scale,
                "kl_div": by_hand["kl_nats"].mean() * scale, "ssim": by_hand["ssim"].mean()}
    expected["nelbo"] = expected["reconstruction_loss"] + expected["kl_div"]
    for key in METRICS:
        assert report[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    for i in range(6):
        np.testing.assert_array_equal(png(recon_folder(work) / f"image-{i:04d}.png"), by_hand["pngs"][i])


def test_original_format_checkpoint_gives_the_same_reconstruction(framework, synthesis_runs):
    _, _, results = synthesis_runs.rgb(framework)
    report, plain = results["recon_original"]["result"], results["recon"]["result"]
    assert report["checkpoint"] == results["write_original"]["path"]
    assert report["checkpoint_step"] == plain["checkpoint_step"] == results["write_original"]["step"]
    assert report["nelbo"] == plain["nelbo"] and report["ssim"] == plain["ssim"]


def test_div_stats_file(framework, synthesis_runs):
    work, _, results = synthesis_runs.rgb(framework)
    saved = div_stats(work)
    assert saved.dtype == np.float32 and saved.shape == (6, 8)
    np.testing.assert_array_equal(saved, np.asarray(results["div_stats"]["result"], np.float32))
    assert np.all(np.isfinite(saved)) and np.all(saved >= 0) and saved.max() > 0


def test_div_stats_is_the_exact_mean_over_images(framework, synthesis_runs):
    """Batches of 4 + 2 images (the second padded to 4): the partial batch weighs 2 images, not 4."""
    work, _, results = synthesis_runs.rgb(framework)
    kl = results["kl"]["kl"]  # (6 images, 6 layers, 8 variates) in nats, the 6 images in one batch
    np.testing.assert_allclose(div_stats(work), kl.sum(axis=0) / (6 * LN2), rtol=1e-5, atol=1e-9)
    padded = np.concatenate([kl, kl[-1:], kl[-1:]])
    assert not np.allclose(div_stats(work), padded.mean(axis=0) / LN2, rtol=1e-5, atol=1e-9)


def test_masked_reconstruction(framework, synthesis_runs):
    work, _, results = synthesis_runs.rgb(framework)
    full, plain = results["recon_all_kept"]["result"], results["recon"]["result"]
    assert full["masked"]["kept_variates"] == full["masked"]["total_variates"] == 48
    for key in METRICS:  # PyTorch: mask 1 takes the posterior sample exactly; XLA may fuse the masked program otherwise
        assert full[key] == (plain[key] if framework == "torch" else pytest.approx(plain[key], rel=1e-6)), key
    pruned = results["recon_pruned"]["result"]
    stats = div_stats(work)
    rule = stats > np.quantile(stats, 0.75)
    assert pruned["masked"]["kept_variates"] == int(rule.sum()) == pytest.approx(0.25 * 48, abs=1)
    assert pruned["masked"]["kept_per_layer"] == rule.sum(axis=1).tolist()
    assert np.isfinite(pruned["nelbo"]) and pruned["nelbo"] != plain["nelbo"]


SETTING_FOLDERS = {  # invocation -> its folder under synthesis-images/, and what settings.json records
    "recon": ("reconstructed/ema-step4-out1", {"weights": "ema", "output_temperature": 1.0}),
    "recon_all_kept": ("reconstructed/ema-step4-masked-q1-out1", {"masked-q": 1.0}),
    "recon_pruned": ("reconstructed/ema-step4-masked-q0.25-out1", {"masked-q": 0.25}),
    "recon_raw": ("reconstructed/raw-step4-out1", {"weights": "raw"}),
    "recon_out": ("reconstructed/ema-step4-out0.8", {"output_temperature": 0.8, "out": 0.8}),
    "decode_test": (f"decoded/encodings_seed_{SEED}_test/ema-step4-T0-out1", {"T": 0.0}),
    "decode_sampled": ("decoded/copied_encodings/ema-step4-T0.5-out1", {"T": 0.5}),
    "decode_default": (f"decoded/encodings_seed_{SEED}/ema-step4-T0-out1", {"T": 0.0}),
    "generation": ("generated/ema-step4-out1", {"out": 1.0}),
    "iw_k1": ("iw_nll/ema-step4-K1", {"K": 1, "mode": "iw_nll"}),
    "iw_k4": ("iw_nll/ema-step4-K4", {"K": 4}),
    "interpolation": ("interpolated/ema-step4-n5-out1", {"n": 5, "pairs": 3, "methods": ["linear", "spherical"]}),
    "conditional": ("conditional/ema-step4-k0_3_6-s2-t0.8-out0.01", {"keep_top_layers": [0, 3, 6], "samples": 2,
                                                                     "t": 0.8, "output_temperature": 0.01}),
    "sample_quality": ("sample_quality/ema-step4-n6-out1", {"n": 6, "split": "test"}),
}


def test_each_setting_writes_its_own_folder(framework, synthesis_runs):
    """Raw vs EMA weights, masks, output temperature, decoding temperature, encodings and the settings of the
    modes beyond the original: successive invocations write to their own folders, each with settings.json,
    none overwriting another."""
    work, _, results = synthesis_runs.rgb(framework)
    images = run_paths("tiny", work).synthesis_images
    for name, (folder, recorded) in SETTING_FOLDERS.items():
        settings = json.loads((images / folder / "settings.json").read_text())
        assert settings["framework"] == framework and settings["checkpoint_step"] == STEPS, name
        assert recorded.items() <= settings.items(), (name, settings)
    found = [*images.glob("*/*/settings.json"), *images.glob("decoded/*/*/settings.json")]
    assert sorted(str(p.parent.relative_to(images)) for p in found) == sorted(f for f, _ in SETTING_FOLDERS.values())
    for name in ("recon", "recon_all_kept", "recon_pruned", "recon_raw", "recon_out"):
        folder = images / SETTING_FOLDERS[name][0]
        assert json.loads((folder / "reconstruction_metrics.json").read_text()) == results[name]["result"], name
    assert results["recon_raw"]["result"]["weights"] == "raw"
    assert results["recon_raw"]["result"]["nelbo"] != results["recon"]["result"]["nelbo"]
    out = results["recon_out"]["result"]
    assert out["output_temperature"] == 0.8 and out["nelbo"] == results["recon"]["result"]["nelbo"]
    assert not np.array_equal(png(images / SETTING_FOLDERS["recon_out"][0] / "image-0000.png"),
                              png(recon_folder(work) / "image-0000.png"))


def test_the_same_settings_reproduce_the_same_folder(framework, synthesis_runs):
    _, _, results = synthesis_runs.rgb(framework)
    first, again = results["recon_files"], results["recon_again_files"]
    assert sorted(first) == sorted(f"ema-step4-out1/{name}" for name in [
        *[f"image-{i:04d}.png" for i in range(6)], *[f"target-{i:04d}.png" for i in range(6)],
        "reconstruction_metrics.json", "settings.json"])
    assert again == first  # the same file names and bytes
    assert results["recon_again"]["result"] == results["recon"]["result"]


def test_results_do_not_depend_on_the_batch_size(framework, synthesis_runs):
    """Batches of 3 + 3 instead of 4 + 2: each image draws its own noise, so the same PNGs; the NELBO to
    float32 rounding (a convolution over another batch shape may round differently)."""
    _, _, results = synthesis_runs.rgb(framework)
    three, four = results["recon_batch3"]["result"], results["recon"]["result"]
    assert three["n_images"] == four["n_images"] == 6
    for key in METRICS:
        assert three[key] == pytest.approx(four[key], rel=1e-6), key
    pngs = {name: digest for name, digest in results["recon_files"].items() if name.endswith(".png")}
    assert len(pngs) == 12
    assert {name: results["batch3_files"][f"reconstructed/{name}"] for name in pngs} == pngs


def test_falls_back_past_a_corrupt_newest_checkpoint(framework, synthesis_runs):
    _, tmp, results = synthesis_runs.rgb(framework)
    run = results["recon_fallback"]
    expected = run_paths("tiny", tmp / "fallback").checkpoints / CHECKPOINT_NAME[framework]
    assert run["result"]["checkpoint"] == str(expected) and run["result"]["checkpoint_step"] == STEPS
    assert run["result"]["nelbo"] == results["recon"]["result"]["nelbo"]
    warnings = [line for line in run["stdout"].splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, run["stdout"]
    assert warnings[0].startswith(f"warning: {results['corrupt']}: unreadable checkpoint (")
    assert warnings[0].endswith(f"); falling back to {expected.name}")
    assert "<bound method" not in run["stdout"] + run["stderr"] and "Traceback" not in run["stderr"]
