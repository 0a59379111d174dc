"""Turn the CPU demo runs made by images/make.sh into the pictures of images/ (and a scores file).

    python bench/make_images.py WORKDIR OUT [--frameworks torch jax]

WORKDIR/<framework>/ holds one finished demo run per framework (logs-cpu_demo/, checkpoints-cpu_demo/) on
which synthesize.py has run 'reconstruction' with the raw and the EMA weights (with targets), 'generation'
and 'div_stats'. Only files of those runs are read (no model is loaded). For each framework this writes,
into OUT, grids enlarged by nearest neighbour to at least 512 pixels wide:
  <fw>_samples.png          training's last samples/step_<N>_means.png; rows: test targets, Bernoulli means
                            of their reconstructions, Bernoulli means of prior samples (EMA weights)
  <fw>_samples_hard.png     the same images as hard {0, 1} samples (training's samples/step_<N>.png)
  <fw>_generated.png        synthesize.py generation (EMA weights, hard samples): a row per temperature setting
  <fw>_reconstructions.png  synthesize.py reconstruction (EMA weights): rows test targets, reconstructions
  <fw>_training_curves.png  NELBO, reconstruction and KL vs step (metrics.jsonl)
  <fw>_div_stats.png        KL per latent layer and variate (latents/div_stats.npy)
and scores.json: the test NELBO of the raw and EMA weights, training's classifier scores (metrics.jsonl) and
the classifier score of each temperature setting's generated images.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from efficient_vdvae_core import classifier_score as cs
from efficient_vdvae_core.images import grid_of_rows, save_png, upscale_factor, upscale_nearest
from efficient_vdvae_core.plots import plot_div_stats, plot_training_curves
from efficient_vdvae_core.runs import resolve_run_config
from efficient_vdvae_core.training.quality import SCORE_LABEL

RUN = "cpu_demo"
N_SHOWN = 16  # images per row of the generation and reconstruction grids


def quiet(*args, **kwargs):
    """A log function that prints nothing."""


def run_config(run_dir):
    """(Config, RunPaths) of the finished demo run in `run_dir`, from its saved config."""
    saved = Path(run_dir) / f"logs-{RUN}" / f"hparams-{RUN}.cfg"
    return resolve_run_config(saved, [], run_dir, mode="inference", log=quiet)


def read_png(path):
    """uint8 (H, W, 1) of a grey PNG file."""
    return np.asarray(Image.open(path).convert("L"))[..., None]


def read_pngs(paths):
    """uint8 (N, H, W, 1) of grey PNG files."""
    return np.stack([read_png(p) for p in paths])


def newest(paths):
    """The most recently written of `paths` (None if there are none)."""
    paths = list(paths)
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def save_view(path, grid):
    """Write `grid` enlarged to >= 512 px wide."""
    return save_png(path, upscale_nearest(grid, upscale_factor(grid.shape[1])))


def last_grid(logs, suffix=""):
    """uint8 grid of training's last samples/step_<N><suffix>.png."""
    pattern = re.compile(rf"step_(\d+){suffix}\.png")
    found = [(int(m.group(1)), p) for p in Path(logs, "samples").iterdir() if (m := pattern.fullmatch(p.name))]
    return read_png(max(found)[1])


def generated(logs, n_settings):
    """Per temperature setting, uint8 (N, 28, 28, 1) hard samples written by synthesize.py's generation mode."""
    folder = newest(p.parent for p in Path(logs, "synthesis-images", "generated").rglob("setup-0-grid.png"))
    return [read_pngs(sorted(folder.glob(f"setup-{i}-image-*.png"))) for i in range(n_settings)]


def reconstructions(logs):
    """(targets, reconstructions) uint8 (N, 28, 28, 1) written by synthesize.py's reconstruction mode."""
    folder = newest(p.parent for p in Path(logs).rglob("target-0000.png"))
    names = sorted(p.name for p in folder.glob("image-*.png"))[:N_SHOWN]
    return read_pngs([folder / n.replace("image-", "target-") for n in names]), read_pngs([folder / n for n in names])


def test_nelbo(logs):
    """{'raw': NELBO, 'ema': NELBO, 'units': ...} of the newest reconstruction report of each weights."""
    reports = {}
    for path in sorted(Path(logs).rglob("reconstruction_metrics.json"), key=lambda p: p.stat().st_mtime):
        report = json.loads(path.read_text())
        reports[report["weights"]] = report["nelbo"]
        reports["units"] = report["units"]
    return reports


def training_score(logs):
    """The classifier_score line that training wrote to metrics.jsonl."""
    lines = [json.loads(line) for line in Path(logs, "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == SCORE_LABEL][-1]


def make_framework(framework, run_dir, out, clf, log=print):
    """Write the pictures of one framework's demo run; returns its scores."""
    config, paths = run_config(run_dir)
    logs, settings = paths.logs, config.synthesis.temperature_settings
    samples = generated(logs, len(settings))
    scores = {"test_nelbo": test_nelbo(logs), "training": training_score(logs),
              "generation": [{"temperature": repr(t), "n_images": len(s), "classifier_score": cs.classifier_score(clf, s),
                              "classes_covered": cs.classes_covered(clf, s)} for t, s in zip(settings, samples)]}
    for entry in scores["generation"]:
        log(f"{framework} generation at temperature {entry['temperature']}: classifier score "
            f"{entry['classifier_score']:.1%} of {entry['n_images']}")
    written = [save_view(out / f"{framework}_samples.png", last_grid(logs, "_means")),
               save_view(out / f"{framework}_samples_hard.png", last_grid(logs)),
               save_view(out / f"{framework}_generated.png", grid_of_rows([s[:N_SHOWN] for s in samples])),
               save_view(out / f"{framework}_reconstructions.png", grid_of_rows(reconstructions(logs))),
               plot_training_curves(logs / "metrics.jsonl", out / f"{framework}_training_curves.png",
                                    unit="nats/image", title=f"CPU demo, {framework}"),
               plot_div_stats(paths.latents / "div_stats.npy", out / f"{framework}_div_stats.png",
                              title=f"CPU demo ({framework}): KL per layer and variate")]
    for path in written:
        log(f"Wrote {path}")
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frameworks", nargs="+", default=["torch", "jax"], choices=["torch", "jax"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    config, _ = run_config(args.workdir / args.frameworks[0])
    clf = cs.fit_digit_classifier(config.data, seed=config.run.seed)
    scores = {"classifier_threshold": cs.CONFIDENCE, "real_test_digits": cs.real_score(clf, config.data)}
    for framework in args.frameworks:
        scores[framework] = make_framework(framework, args.workdir / framework, args.out, clf)
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    print(f"Real test digits: classifier score {scores['real_test_digits']:.1%}; wrote {args.out / 'scores.json'}")


if __name__ == "__main__":
    sys.exit(main())
