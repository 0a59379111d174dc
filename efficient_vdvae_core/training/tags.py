"""TensorBoard tags and the values behind them, the same for both frameworks.

The original's tags (Losses/*, Distributions/*, OutputLayer/*, Schedules/learning_rate,
Mean_Max_Updates/Global_norm) keep their names; tags this codebase adds live in their own namespaces
(Training/*, Time/*, Images/*, Weights/*, Gradients/*). Scalars also go to logs-<name>/metrics.jsonl.

Both writers (train, val) get the losses, SSIM, per-layer KL (Losses/latent_kl_<i>, bits per latent
element), the Distributions/* and OutputLayer/* histograms and the Images/Original and Images/Generated
grids of an evaluated batch (the train writer: the last training batch, at every evaluation); the train
writer also the schedules, the gradient norm, Weights/<module> and Gradients/<module> histograms at every
evaluation, the val writer the EMA prior samples.
"""
import numpy as np

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.evaluation import report_scale
from efficient_vdvae_core.metrics import effective_pixels

RECONSTRUCTION, KL, NELBO = "Losses/reconstruction_loss", "Losses/kl_div", "Losses/nelbo"
AVERAGE_KL, BETA, SKIPS_COUNT, SSIM = "Losses/average_kl_div", "Losses/variational_beta", "Losses/skips_count", "Losses/ssim"
LEARNING_RATE, GLOBAL_NORM = "Schedules/learning_rate", "Mean_Max_Updates/Global_norm"
ACTIVE_GROUPS, SKIPPED, STEP_SECONDS = "Training/active_groups", "Training/skipped", "Time/step_seconds"
ORIGINAL, GENERATED, PRIOR_SAMPLES = "Images/Original", "Images/Generated", "Images/Prior_samples"
TARGET_HISTOGRAM, OUTPUT_HISTOGRAM = "Distributions/target", "Distributions/output"


HISTOGRAM_GROUP_DEPTH = 3  # weights and gradients are histogrammed per module of this depth, e.g. top_down.levels_down.2


def histogram_group(name):
    """The module a parameter's histogram belongs to: its state_dict name cut to HISTOGRAM_GROUP_DEPTH parts."""
    parts = name.split(".")[:-1]  # drop weight / bias
    return ".".join(parts[:HISTOGRAM_GROUP_DEPTH]) or name


def parameter_histograms(parameters_and_gradients):
    """(tag, values, bins) of Weights/<module> and Gradients/<module> histograms over each module's parameters."""
    groups = {}
    for name, (weights, grads) in parameters_and_gradients.items():
        entry = groups.setdefault(histogram_group(name), ([], []))
        entry[0].append(np.ravel(weights))
        if grads is not None:
            entry[1].append(np.ravel(grads))
    out = []
    for group, (weights, grads) in sorted(groups.items()):
        out.append((f"Weights/{group}", np.concatenate(weights), 30))
        if grads:
            out.append((f"Gradients/{group}", np.concatenate(grads), 30))
    return out


def latent_kl(i):
    """The tag of latent layer i's KL (bits per latent element)."""
    return f"Losses/latent_kl_{i}"


def train_scalars(out, values, run, seconds):
    """The scalars of one training step in reported units (bits/dim, or nats/image for binarized data)."""
    cfg = run.config
    e = effective_pixels(cfg.data)
    scale = e * report_scale(is_binarized(cfg.data), e)
    recon, kl = out.recon_nats_per_dim * scale, out.kl_nats_per_dim * scale
    layers = np.asarray(out.kl_per_layer_bits, np.float64)
    scalars = {RECONSTRUCTION: recon, KL: kl, NELBO: recon + kl, AVERAGE_KL: float(layers.sum()),
               BETA: values.kl_beta, SKIPS_COUNT: run.skips / max(cfg.train.total_train_steps, 1),
               LEARNING_RATE: values.learning_rate, GLOBAL_NORM: out.grad_norm,
               ACTIVE_GROUPS: int((layers >= cfg.metrics.latent_active_threshold).sum()),
               SKIPPED: float(out.skipped), STEP_SECONDS: seconds}
    scalars.update({latent_kl(i): float(v) for i, v in enumerate(layers)})
    return scalars


def val_scalars(metrics, values):
    """The validation scalars of an EvalAccumulator result at the step of StepValues `values`."""
    scalars = {RECONSTRUCTION: metrics["reconstruction_loss"], KL: metrics["kl_div"], NELBO: metrics["nelbo"],
               SSIM: metrics["ssim"], AVERAGE_KL: float(sum(metrics["kl_per_layer_bits"])), BETA: values.kl_beta}
    scalars.update({latent_kl(i): v for i, v in enumerate(metrics["kl_per_layer_bits"])})
    return scalars


def evaluation_histograms(first, n):
    """(tag, values, bins) of the histograms of an evaluated batch's first `n` rows."""
    out = [(TARGET_HISTOGRAM, first.inputs[:n], 20), (OUTPUT_HISTOGRAM, np.clip(first.samples[:n], -1, 1), 20)]
    for tag, values in (first.histograms or {}).items():
        out.append((tag, values, 30))
    return out
