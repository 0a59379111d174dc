"""Figures of a run for people: training curves from metrics.jsonl and the div_stats heat map (matplotlib).

matplotlib is the optional extra `[images]` (pip install -e '.[images]'); it is imported when a figure is
drawn, through its object API (no pyplot, no global backend), so importing this module needs nothing.
"""
import json
from pathlib import Path

import numpy as np

CURVES = (("Losses/nelbo", "NELBO"), ("Losses/reconstruction_loss", "reconstruction"), ("Losses/kl_div", "KL"))
DIV_STATS_FLOOR = 1e-4  # bits per latent element: smaller averages are drawn in the lowest colour
DPI = 100


def read_metrics(path):
    """The JSON lines of a metrics.jsonl file as dicts (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def metric_series(rows, split, tag):
    """(steps, values) float arrays of `tag` in the rows of `split`, sorted by step; a resumed run's last value wins."""
    by_step = {int(r["step"]): float(r[tag]) for r in rows if r.get("split") == split and tag in r}
    steps = np.array(sorted(by_step), dtype=np.float64)
    return steps, np.array([by_step[s] for s in sorted(by_step)], dtype=np.float64)


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out_png):
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, format="png")
    return out_png


def plot_training_curves(metrics_path, out_png, unit, title=None):
    """PNG of NELBO, reconstruction and KL vs step (train lines, val markers, log y axis) from metrics.jsonl."""
    rows = read_metrics(metrics_path)
    figure = _figure(11, 3.4)
    axes = figure.subplots(1, len(CURVES))
    for ax, (tag, label) in zip(axes, CURVES):
        for split, style in (("train", dict(lw=1.2)), ("val", dict(marker="o", ms=4, lw=1))):
            steps, values = metric_series(rows, split, tag)
            positive = values > 0
            if positive.any():
                ax.plot(steps[positive], values[positive], label=split, **style)
        ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("training step")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, out_png)


def plot_div_stats(div_stats, out_png, title=None):
    """PNG heat map of div_stats (N_lat, V): average KL per latent layer (rows) and variate (columns), log colours."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator
    stats = np.asarray(np.load(div_stats) if isinstance(div_stats, (str, Path)) else div_stats, dtype=np.float64)
    if stats.ndim != 2:
        raise ValueError(f"div_stats must be (latent layers, variates); got shape {stats.shape}")
    n_layers, n_variates = stats.shape
    figure = _figure(min(max(5.5, 2.5 + 0.3 * n_variates), 14), min(max(3.5, 1.5 + 0.3 * n_layers), 12))
    ax = figure.subplots()
    clipped = np.clip(stats, DIV_STATS_FLOOR, None)
    image = ax.imshow(clipped, aspect="auto", cmap="viridis", interpolation="nearest",
                      norm=LogNorm(vmin=DIV_STATS_FLOOR, vmax=max(float(clipped.max()), DIV_STATS_FLOOR * 10)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("variate")
    ax.set_ylabel("latent layer (0 = lowest resolution)")
    figure.colorbar(image, ax=ax, label="average KL (bits per latent element)")
    ax.set_title(title or "div_stats: KL per latent layer and variate", fontsize="medium")
    figure.tight_layout()
    return _save(figure, out_png)
