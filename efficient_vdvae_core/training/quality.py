"""What a person sees of a training run: readable sample grids and, on labelled digits, the classifier score.

At every evaluation the loop writes `samples/step_<N>.png` (rows: targets, reconstructions, EMA prior
samples; hard samples, as the original writes them) and, for binarized data, `step_<N>_means.png`, whose
reconstruction and prior rows are the Bernoulli means (probabilities); each also enlarged for eyes
(nearest neighbour, >= 512 px wide) as `<stem>_x<k>.png`.

At the end of a run on labelled digits (the CPU demo) a classifier of real train digits scores
N_SCORED prior samples of the EMA and of the raw weights (temperature 1, hard samples) against real
held-out test digits: the share it recognises as one digit with probability >= 0.9, printed as one
"Classifier score" line and written to metrics.jsonl (split "classifier_score").
"""
import numpy as np

from efficient_vdvae_core import classifier_score as cs
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.images import make_grid, save_png_with_view
from efficient_vdvae_core.training.images import images_to_uint8

N_SCORED = 200  # prior samples scored per weights (EMA, raw)
SCORE_LABEL = "classifier_score"  # the split of its metrics.jsonl line
EMA_SCORE, RAW_SCORE, REAL_SCORE = ("Quality/classifier_score_ema", "Quality/classifier_score_raw",
                                    "Quality/classifier_score_real")
EMA_MEANS_SCORE, EMA_CLASSES = "Quality/classifier_score_ema_means", "Quality/classes_covered_ema"


def save_sample_grids(folder, step, rows, means_rows=None):
    """Write step_<step>.png of the uint8 `rows` (hard samples) and, for binarized data, step_<step>_means.png
    of `means_rows`, each at its own size and enlarged (<stem>_x<k>.png); returns the paths written."""
    n = len(rows[0])
    paths = save_png_with_view(folder / f"step_{step}.png", make_grid(np.concatenate(rows), ncols=n))
    if means_rows is not None:
        paths += save_png_with_view(folder / f"step_{step}_means.png", make_grid(np.concatenate(means_rows), ncols=n))
    return paths


def grid_message(paths):
    """The log line naming the grid files (as save_sample_grids returns them) and what they show."""
    kinds = ["hard samples", "enlarged", "Bernoulli means", "means enlarged"]
    files = ", ".join(f"{p.name} ({kind})" for p, kind in zip(paths[1:], kinds[1:]))
    return (f"Samples (rows: targets, reconstructions, prior samples of the EMA weights): {paths[0]} ({kinds[0]}); "
            f"{files}")


def classifier_report(run):
    """On labelled digits: score prior samples of the EMA and raw weights, log the line and the metrics.

    Every process samples (the frameworks' sampling is collective); only the main one scores and writes.
    Returns the metrics dict on the main process, None otherwise or when the data has no labels.
    """
    config = run.config
    if not cs.supports(config.data):
        return None
    samples = {ema: run.backend.prior_samples(N_SCORED, run.step, ema=ema) for ema in (True, False)}
    if not run.dist.is_main:
        return None
    clf = cs.fit_digit_classifier(config.data, seed=config.run.seed)
    hard = {ema: images_to_uint8(s, config) for ema, (s, _) in samples.items()}
    real = cs.real_images(config.data)
    metrics = {EMA_SCORE: cs.classifier_score(clf, hard[True]), RAW_SCORE: cs.classifier_score(clf, hard[False]),
               REAL_SCORE: cs.classifier_score(clf, real), EMA_CLASSES: cs.classes_covered(clf, hard[True])}
    means = samples[True][1]
    if means is not None and is_binarized(config.data):
        metrics[EMA_MEANS_SCORE] = cs.classifier_score(clf, images_to_uint8(means, config))
    run.logger.scalars("val", run.step, metrics, label=SCORE_LABEL)
    run.log(score_line(metrics, N_SCORED, len(real)))
    return metrics


def score_line(metrics, n_generated, n_real):
    """The demo's last word on sample quality: EMA and raw scores next to the real digits' score."""
    return (f"Classifier score: {metrics[EMA_SCORE]:.1%} of {n_generated} prior samples of the EMA weights "
            f"(raw weights: {metrics[RAW_SCORE]:.1%}) recognised as one digit with probability >= {cs.CONFIDENCE}, "
            f"{metrics[EMA_CLASSES]} of 10 digit classes among them; real test digits: {metrics[REAL_SCORE]:.1%} "
            f"of {n_real}")
