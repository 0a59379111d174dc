"""Generation of both frameworks with every temperature format, binarized runs, and the one-line errors of
synthesize.py for missing inputs and foreign checkpoints.

The runs and every invocation's result come from `synthesis_fixtures`; the errors run in this process.
"""
import importlib

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import resolve_run_config, run_paths
from efficient_vdvae_core.training.images import images_to_uint8
from tests.behaviour.synthesis_fixtures import BATCH, CHECKPOINT_NAME, STEPS, cli_args
from tests.behaviour.synthesis_fixtures import framework, synthesis_runs  # noqa: F401, F811 (pytest fixtures)
from tests.conftest import EGS, egs_config


def png(path):
    return np.asarray(Image.open(path))


def test_generation_with_every_temperature_format(framework, synthesis_runs):
    _, _, results = synthesis_runs.rgb(framework)
    written = results["generation"]["result"]
    assert sorted(written) == ["0", "1", "2", "3"]
    for i, files in written.items():
        assert [p.rsplit("/", 1)[1] for p in files] == [f"setup-{i}-image-{n:04d}.png" for n in range(BATCH)] + [
            f"setup-{i}-grid.png"]
        assert png(files[0]).shape == (32, 32, 3) and png(files[-1]).shape == (2 + 2 * 34, 2 + 2 * 34, 3)
    assert not np.array_equal(png(written["0"][0]), png(written["0"][1]))
    samples = results["samples"]  # the backend's prior samples at temperature 1 (setting 0), by hand
    assert np.array_equal(samples["first"], samples["again"])
    assert not np.array_equal(samples["first"], samples["next"])
    assert not np.array_equal(samples["first"], samples["counter_1"])
    assert samples["first"].min() >= -1 and samples["first"].max() <= 1
    for path, image in zip(written["0"], images_to_uint8(samples["first"], egs_config("tiny"))):
        np.testing.assert_array_equal(png(path), image)


def test_binarized_reconstruction_and_generation(framework, synthesis_runs):
    work, results = synthesis_runs.binarized(framework)
    report = results["recon"]["result"]
    assert report["units"] == "nats/image" and report["n_images"] == 5 and report["ssim"] == 0
    assert report["nelbo"] > 50  # nats per 28x28 image
    folder = run_paths("tiny_binarized", work).synthesis_images / "reconstructed" / f"ema-step{STEPS}-out1"
    image = png(folder / "image-0004.png")
    assert image.shape == (28, 28) and set(np.unique(image)) <= {0, 255}
    assert png(folder / "target-0004.png").shape == (28, 28)
    written = results["generation"]["result"]
    assert len(written) == 2 and png(written["1"][0]).shape == (28, 28)


def one_line_error(capsys, framework, workdir, mode, *sets, config="tiny", extra=()):
    """The error line of synthesize.py's main refusing its arguments (exit code 2, one line, no traceback)."""
    entry = importlib.import_module(f"efficient_vdvae_{framework}.synthesize")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(entry.main, cli_args(workdir, f"synthesis.synthesis_mode={mode}", *sets, config=config, extra=extra),
                 parser=entry.parser())
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_inputs_are_one_line_errors(framework, capsys, synthesis_runs, tmp_path):
    work, _ = synthesis_runs.binarized(framework)
    msg = one_line_error(capsys, framework, work, "encoding", config="tiny_binarized")
    assert "div_stats.npy not found" in msg and "synthesis_mode=div_stats" in msg
    msg = one_line_error(capsys, framework, work, "reconstruction", "synthesis.mask_reconstruction=True",
                         config="tiny_binarized")
    assert "div_stats" in msg
    msg = one_line_error(capsys, framework, work, "decoding", config="tiny_binarized")
    assert "'encoding'" in msg
    assert "no run named 'tiny'" in one_line_error(capsys, framework, tmp_path, "generation")
    resolve_run_config(EGS / "tiny.cfg", [], tmp_path, mode="train", log=lambda *a, **k: None)
    assert "no checkpoint in" in one_line_error(capsys, framework, tmp_path, "generation")


def test_checkpoint_of_another_config_is_refused(framework, capsys, synthesis_runs):
    rgb_work, _, _ = synthesis_runs.rgb(framework)
    bin_work, _ = synthesis_runs.binarized(framework)
    checkpoint = run_paths("tiny_binarized", bin_work).checkpoints / CHECKPOINT_NAME[framework]
    msg = one_line_error(capsys, framework, rgb_work, "generation", extra=["--checkpoint", checkpoint])
    assert "trained for other data" in msg and "channels = 1" in msg
