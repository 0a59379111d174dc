"""Training curves and the div_stats heat map are drawn from small files in the real formats."""
import json

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.plots import metric_series, plot_div_stats, plot_training_curves, read_metrics

pytest.importorskip("matplotlib")


def write_metrics(path):
    rows = [{"split": "train", "step": s, "time": 0.0, "Losses/nelbo": 500.0 / s, "Losses/kl_div": 20.0 + s,
             "Losses/reconstruction_loss": 480.0 / s, "Schedules/learning_rate": 1e-3} for s in (20, 40, 60)]
    rows += [{"split": "val", "step": 60, "time": 0.0, "Losses/nelbo": 9.0, "Losses/kl_div": 3.0,
              "Losses/reconstruction_loss": 6.0, "Losses/ssim": 0.0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


def test_metric_series_reads_one_split(tmp_path):
    rows = read_metrics(write_metrics(tmp_path / "metrics.jsonl"))
    steps, values = metric_series(rows, "train", "Losses/kl_div")
    assert steps.tolist() == [20, 40, 60] and values.tolist() == [40.0, 60.0, 80.0]
    assert metric_series(rows, "val", "Losses/nelbo")[1].tolist() == [9.0]
    assert metric_series(rows, "val", "Losses/missing")[0].size == 0


def test_training_curves_png(tmp_path):
    out = plot_training_curves(write_metrics(tmp_path / "metrics.jsonl"), tmp_path / "out" / "curves.png",
                               unit="nats/image", title="tiny")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 800
        assert np.asarray(image.convert("L")).std() > 10  # something is drawn, not a blank canvas


def test_div_stats_png_from_npy(tmp_path):
    stats = np.abs(np.random.default_rng(0).normal(size=(7, 16))).astype(np.float32) * 0.01
    stats[3] = 0.0  # a collapsed layer
    np.save(tmp_path / "div_stats.npy", stats)
    out = plot_div_stats(tmp_path / "div_stats.npy", tmp_path / "div_stats.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and np.asarray(image.convert("L")).std() > 10
    with pytest.raises(ValueError, match="variates"):
        plot_div_stats(np.zeros(5), tmp_path / "bad.png")
