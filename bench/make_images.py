"""Turn the CPU demo runs made by images/make.sh into the pictures of images/ (and a scores file).

    python bench/make_images.py WORKDIR OUT [--frameworks torch jax]

WORKDIR/<framework>/ holds one finished demo run per framework (logs-cpu_demo/, checkpoints-cpu_demo/) on
which synthesize.py has run 'reconstruction' with the raw weights (its report copied to
<framework>/reconstruction_raw.json), then with the EMA weights and targets, 'generation' and 'div_stats'.
For each framework this writes, into OUT:
  <fw>_prior_samples.png    per temperature setting of [synthesis] temperature_settings, two rows: the
                            Bernoulli means (probabilities) and one hard sample of the same latents (EMA weights)
  <fw>_training_grid.png    the run's last samples/step_<N>.png as training writes it, enlarged
  <fw>_reconstructions.png  rows: test targets, their reconstructions (hard samples, from synthesize.py)
  <fw>_training_curves.png  NELBO, reconstruction and KL vs step (metrics.jsonl)
  <fw>_div_stats.png        KL per latent layer and variate (latents/div_stats.npy)
and scores.json: test NELBO of the raw and EMA weights and classifier scores of prior samples (the share a
digit classifier trained on the real train digits recognises with probability >= 0.9) next to real digits'.
Grids are enlarged with nearest neighbour to at least 512 pixels wide.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from efficient_vdvae_core import classifier_score as cs
from efficient_vdvae_core.images import grid_of_rows, save_png, to_uint8, upscale_factor, upscale_nearest
from efficient_vdvae_core.plots import plot_div_stats, plot_training_curves
from efficient_vdvae_core.runs import resolve_run_config
from efficient_vdvae_core.temperatures import layer_temperatures

RUN = "cpu_demo"
N_SHOWN = 16  # images per row
N_SCORED = 200  # prior samples scored per temperature setting
SEED = 2024  # of the prior samples drawn here


def quiet(*args, **kwargs):
    """A log function that prints nothing."""


def run_config(run_dir, overrides=()):
    """(Config, RunPaths) of the finished demo run in `run_dir`, from its saved config."""
    saved = Path(run_dir) / f"logs-{RUN}" / f"hparams-{RUN}.cfg"
    return resolve_run_config(saved, list(overrides), run_dir, mode="inference", log=quiet)


def read_pngs(paths):
    """uint8 (N, H, W, 1) of grey PNG files."""
    return np.stack([np.asarray(Image.open(p).convert("L"))[..., None] for p in paths])


def newest(paths):
    """The most recently written of `paths` (None if there are none)."""
    paths = list(paths)
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def save_view(path, grid):
    """Write `grid` enlarged to >= 512 px wide."""
    return save_png(path, upscale_nearest(grid, upscale_factor(grid.shape[1])))


def torch_prior(run_dir, temperature, n, seed, ema=True):
    """(means, hard samples) uint8 (n, 28, 28, 1) of the PyTorch run's prior at one temperature setting."""
    import torch
    from efficient_vdvae_torch.inference.loading import load_model
    from efficient_vdvae_torch.model.sampling import bernoulli_probs

    config, paths = run_config(run_dir, [f"synthesis.load_ema_weights={ema}"])
    loaded = load_model(config, paths, log=quiet)
    torch.manual_seed(seed)
    logits, _ = loaded.model.sample(n, layer_temperatures(temperature, loaded.arch))
    probs = bernoulli_probs(logits.float())
    hard = torch.bernoulli(probs, generator=torch.Generator().manual_seed(seed + 1))
    return tuple(to_uint8(x.permute(0, 2, 3, 1).numpy(), binarized=True) for x in (probs, hard))


def jax_prior(run_dir, temperature, n, seed, ema=True):
    """(means, hard samples) uint8 (n, 28, 28, 1) of the JAX run's prior at one temperature setting."""
    import jax
    import jax.numpy as jnp
    from efficient_vdvae_jax.evaluation import prior_sample_fn
    from efficient_vdvae_jax.inference.loading import load_model
    from efficient_vdvae_jax.model.sampling import bernoulli_probs

    config, paths = run_config(run_dir, [f"synthesis.load_ema_weights={ema}"])
    loaded = load_model(config, paths, log=quiet)
    fn = prior_sample_fn(loaded.graphdef, loaded.rest, loaded.config, loaded.arch, n, loaded.mesh)
    temperatures = jnp.asarray(layer_temperatures(temperature, loaded.arch), jnp.float32)
    hard, logits = fn(loaded.params, temperatures, jax.random.key(seed))
    probs = bernoulli_probs(logits)
    return tuple(to_uint8(np.asarray(x), binarized=True) for x in (probs, hard))


PRIOR = {"torch": torch_prior, "jax": jax_prior}


def training_grid(logs):
    """uint8 grid of the last samples/step_<N>.png of a run."""
    grids = sorted(Path(logs, "samples").glob("step_*.png"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    return np.asarray(Image.open(grids[-1]).convert("L"))[..., None]


def reconstructions(logs):
    """(targets, reconstructions) uint8 (N, 28, 28, 1) written by synthesize.py's reconstruction mode."""
    folder = newest(p.parent for p in Path(logs).rglob("target-0000.png"))
    names = sorted(p.name for p in folder.glob("image-*.png"))[:N_SHOWN]
    return read_pngs([folder / n.replace("image-", "target-") for n in names]), read_pngs([folder / n for n in names])


def nelbo_of_weights(run_dir, logs):
    """Test NELBO of the raw weights (run_dir/reconstruction_raw.json) and of the EMA weights (the newest report)."""
    reports = [Path(run_dir) / "reconstruction_raw.json", newest(Path(logs).rglob("reconstruction_metrics.json"))]
    reports = [json.loads(p.read_text()) for p in reports]
    return {r["weights"]: r["nelbo"] for r in reports} | {"units": reports[0]["units"]}


def make_framework(framework, run_dir, out, clf, log=print):
    """Write the pictures of one framework's demo run; returns its scores."""
    config, paths = run_config(run_dir)
    logs = paths.logs
    scores = {"test_nelbo": nelbo_of_weights(run_dir, logs), "temperature_settings": []}
    rows = []
    for setting in config.synthesis.temperature_settings:
        entry = {"temperature": repr(setting)}
        for weights in ("ema", "raw"):
            means, hard = PRIOR[framework](run_dir, setting, N_SCORED, SEED, ema=weights == "ema")
            entry[weights] = {"hard_samples": cs.classifier_score(clf, hard), "means": cs.classifier_score(clf, means),
                              "classes_covered": cs.classes_covered(clf, hard)}
            if weights == "ema":
                rows += [means[:N_SHOWN], hard[:N_SHOWN]]
        scores["temperature_settings"].append(entry)
        log(f"{framework} prior at temperature {setting!r}: classifier score EMA "
            f"{entry['ema']['hard_samples']:.1%} (hard) {entry['ema']['means']:.1%} (means), raw "
            f"{entry['raw']['hard_samples']:.1%} (hard) {entry['raw']['means']:.1%} (means)")
    written = [save_view(out / f"{framework}_prior_samples.png", grid_of_rows(rows)),
               save_view(out / f"{framework}_training_grid.png", training_grid(logs)),
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
    parser.add_argument("--frameworks", nargs="+", default=["torch", "jax"], choices=sorted(PRIOR))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    config, _ = run_config(args.workdir / args.frameworks[0])
    clf = cs.fit_digit_classifier(config.data, seed=config.run.seed)
    scores = {"classifier_threshold": cs.CONFIDENCE, "n_scored": N_SCORED,
              "real_test_digits": cs.real_score(clf, config.data)}
    for framework in args.frameworks:
        scores[framework] = make_framework(framework, args.workdir / framework, args.out, clf)
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    print(f"Real test digits: classifier score {scores['real_test_digits']:.1%}; wrote {args.out / 'scores.json'}")


if __name__ == "__main__":
    sys.exit(main())
