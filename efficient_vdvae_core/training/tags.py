"""TensorBoard tags and the values behind them, the same for both frameworks.

The original's tags (Losses/*, Distributions/*, OutputLayer/*, Schedules/learning_rate,
Mean_Max_Updates/Global_norm) keep their names; tags this codebase adds live in their own namespaces
(Training/*, Time/*, Images/*). Scalars also go to logs-<name>/metrics.jsonl.
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
    return {RECONSTRUCTION: recon, KL: kl, NELBO: recon + kl, AVERAGE_KL: float(layers.sum()),
            BETA: values.kl_beta, SKIPS_COUNT: run.skips / max(cfg.train.total_train_steps, 1),
            LEARNING_RATE: values.learning_rate, GLOBAL_NORM: out.grad_norm,
            ACTIVE_GROUPS: int((layers >= cfg.metrics.latent_active_threshold).sum()),
            SKIPPED: float(out.skipped), STEP_SECONDS: seconds}


def val_scalars(metrics):
    """The validation scalars of an EvalAccumulator result."""
    scalars = {RECONSTRUCTION: metrics["reconstruction_loss"], KL: metrics["kl_div"], NELBO: metrics["nelbo"],
               SSIM: metrics["ssim"], AVERAGE_KL: float(sum(metrics["kl_per_layer_bits"]))}
    scalars.update({latent_kl(i): v for i, v in enumerate(metrics["kl_per_layer_bits"])})
    return scalars


def val_histograms(first, n):
    """(tag, values, bins) of the histograms of the first validation batch's first `n` rows."""
    out = [(TARGET_HISTOGRAM, first.inputs[:n], 20), (OUTPUT_HISTOGRAM, np.clip(first.samples[:n], -1, 1), 20)]
    for tag, values in (first.histograms or {}).items():
        out.append((tag, values, 30))
    return out
