"""Reconstruction (MoL, Bernoulli) and KL losses, gamma balancing and the VAE objective.

Tensors are NCHW. Everything is a pure function; new tensors take device and dtype from the inputs.
Units: "nats" are natural-log units, "per dim" divides by the data dimension count E
(`effective_pixels`), bits = nats / ln 2.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.metrics import (LN2, MNIST_CROP, MNIST_SIZE, effective_pixels, nats_per_dim_to_report,  # noqa: F401
                                          num_classes, pixel_range, report_unit_name)

CDF_DELTA_THRESHOLD = 1e-5  # interior pixels with less bin mass use the density at the bin centre

# Branch codes of `mol_branches` (which expression gave each element's log-probability).
BRANCH_MIN, BRANCH_MAX, BRANCH_BIN_MASS, BRANCH_DENSITY = 0, 1, 2, 3


def split_mol_logits(logits, num_mixtures):
    """Split (B, M(3C+1), H, W) logits into views: mixture logits (B, M, H, W) and
    means, raw scales, raw AR coefficients, each (B, C, M, H, W) (the channels after the M mixture
    logits are laid out as (C, 3M))."""
    b, k, h, w = logits.shape
    m = num_mixtures
    per_mixture, rem = divmod(k, m)
    if rem or per_mixture < 4 or (per_mixture - 1) % 3:
        raise ValueError(f"MoL logits have {k} channels; expected num_mixtures * (3 * C + 1) with num_mixtures = {m}")
    c = (per_mixture - 1) // 3
    # split (not slicing) so that autograd assembles the logits gradient with one concatenation
    mix_logits, params = logits.split([m, k - m], dim=1)
    means, raw_scales, raw_coeffs = params.reshape(b, c, 3 * m, h, w).split(m, dim=2)
    return mix_logits, means, raw_scales, raw_coeffs


def _mol_log_probs(logits, targets, num_bits, num_mixtures, distribution_base, beta, min_log_scale):
    """Per-component, per-channel log-probabilities (B, C, M, H, W), mixture logits and branch pieces."""
    mix_logits, means, raw_scales, raw_coeffs = split_mol_logits(logits, num_mixtures)
    channels = means.shape[1]
    expected = (logits.shape[0], channels, *logits.shape[2:])
    if tuple(targets.shape) != expected:
        raise ValueError(f"MoL targets have shape {tuple(targets.shape)}; the logits need {expected}")
    x = targets.unsqueeze(2)  # (B, C, 1, H, W), broadcast over mixtures
    if channels == 3:
        # Autoregressive means over colour channels, conditioned on the true previous channels.
        coeffs = torch.tanh(raw_coeffs)
        x0, x1 = x[:, 0], x[:, 1]
        means = torch.stack([means[:, 0],
                             means[:, 1] + coeffs[:, 0] * x0,
                             means[:, 2] + coeffs[:, 1] * x0 + coeffs[:, 2] * x1], dim=1)
    elif channels != 1:
        raise ValueError(f"MoL supports 1 or 3 channels, got {channels}")

    if distribution_base == "std":
        scale = F.softplus(raw_scales, beta=beta).clamp_min(math.exp(min_log_scale))
        log_scale, inv_scale = torch.log(scale), torch.reciprocal(scale)
    elif distribution_base == "logstd":
        # The original's quirk is kept: log_pdf_mid uses the unscaled log-scale, inv_scale exp(-beta * it).
        log_scale = raw_scales.clamp_min(min_log_scale)
        inv_scale = torch.exp(-beta * log_scale)
    else:
        raise ValueError(f"unknown output_distribution_base {distribution_base!r}")

    n_classes = num_classes(num_bits)
    half_bin = 1.0 / n_classes
    centred = x - means
    plus = inv_scale * (centred + half_bin)
    minus = inv_scale * (centred - half_bin)
    mid = inv_scale * centred
    log_cdf_plus = plus - F.softplus(plus)
    log_one_minus_cdf_minus = -F.softplus(minus)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid)

    min_pix, max_pix = pixel_range(num_bits)
    # Exact equality in the targets' dtype (a Python float is rounded to it), as the original.
    is_min, is_max = x == min_pix, x == max_pix
    has_mass = cdf_delta > CDF_DELTA_THRESHOLD
    interior = torch.where(has_mass, torch.log(cdf_delta.clamp_min(1e-12)),
                           log_pdf_mid - math.log(n_classes / 2.0))
    log_probs = torch.where(is_min, log_cdf_plus, torch.where(is_max, log_one_minus_cdf_minus, interior))
    return log_probs, mix_logits, (is_min, is_max, has_mass)


def mol_nll(logits, targets, *, num_bits, num_mixtures, distribution_base, beta, min_log_scale):
    """Discretised mixture-of-logistics NLL per pixel, (B, H, W) in nats (all C channels of a pixel).

    logits (B, M(3C+1), H, W), targets (B, C, H, W) in [min_pix, max_pix], C = 3 (autoregressive
    coefficients) or 1 (coefficient slots present but unused). `beta` is the output softplus/exp
    smoothing beta, `min_log_scale` the log-scale floor.
    """
    log_probs, mix_logits, _ = _mol_log_probs(logits, targets, num_bits, num_mixtures, distribution_base,
                                              beta, min_log_scale)
    joint = log_probs.sum(dim=1) + torch.log_softmax(mix_logits, dim=1)  # (B, M, H, W)
    return -torch.logsumexp(joint, dim=1)


@torch.no_grad()
def mol_branches(logits, targets, *, num_bits, num_mixtures, distribution_base, beta, min_log_scale):
    """int8 (B, C, M, H, W): which expression `mol_nll` used per element (BRANCH_* codes)."""
    _, _, (is_min, is_max, has_mass) = _mol_log_probs(logits, targets, num_bits, num_mixtures,
                                                      distribution_base, beta, min_log_scale)
    interior = torch.where(has_mass, BRANCH_BIN_MASS, BRANCH_DENSITY)
    codes = torch.where(is_min, BRANCH_MIN, torch.where(is_max, BRANCH_MAX, interior))
    return codes.to(torch.int8)


def bernoulli_nll(logits, targets):
    """Bernoulli NLL per pixel of the 28x28 crop (rows/cols 2..29 of 32x32), (B, 28, 28) in nats.

    logits, targets: (B, 1, 32, 32), targets in {0, 1}; stable sigmoid cross-entropy.
    """
    if tuple(logits.shape[-2:]) != (32, 32) or logits.shape != targets.shape:
        raise ValueError(f"bernoulli_nll expects logits and targets of shape (B, C, 32, 32), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    crop = (Ellipsis, MNIST_CROP, MNIST_CROP)
    nll = F.binary_cross_entropy_with_logits(logits[crop], targets[crop], reduction="none")
    return nll.sum(dim=1)


def gaussian_kl(post, prior, *, distribution_base, beta):
    """Elementwise KL(posterior || prior) between diagonal Gaussians, (B, V, H, W) in nats.

    `post` and `prior` are the latent layers' stats [mean, std] ('std') or [mean, logstd] ('logstd',
    std = exp(beta * logstd)); the log term includes beta (the PyTorch form; JAX's omission was a bug).
    """
    p_mean, p_scale = post
    q_mean, q_scale = prior
    if distribution_base == "std":
        std_ratio = p_scale / q_scale
        z = (p_mean - q_mean) / q_scale
        log_ratio = torch.log(std_ratio)
    elif distribution_base == "logstd":
        log_ratio = beta * (p_scale - q_scale)
        std_ratio = torch.exp(log_ratio)
        z = (p_mean - q_mean) * torch.exp(-beta * q_scale)
    else:
        raise ValueError(f"unknown distribution_base {distribution_base!r}")
    return 0.5 * (z * z + std_ratio * std_ratio) - 0.5 - log_ratio


def gamma_weights(kl_per_layer_nats_per_dim, kl_per_layer_nats_per_latent, *, scaled):
    """NVAE gamma balancing weights alpha (N_lat,), detached, summing to N_lat.

    alpha_l = N_lat * a_l / sum_k a_k with a = the per-latent-element KL if `scaled` else the
    per-dim KL. All-zero KLs give weights 1 (the original's 0/0 = NaN is not reproduced).
    """
    a = kl_per_layer_nats_per_latent if scaled else kl_per_layer_nats_per_dim
    a = (torch.stack(list(a)) if isinstance(a, (list, tuple)) else a).detach()
    total = a.sum()
    weights = a.numel() * a / total
    return torch.where(total > 0, weights, torch.ones_like(weights))


def reconstruction_nll(logits, targets, cfg):
    """-log p(x|z) per pixel in nats for the config's output head: Bernoulli (B, 28, 28) or MoL (B, H, W)."""
    if is_binarized(cfg.data):
        return bernoulli_nll(logits, targets)
    if targets.shape[-1] != cfg.data.target_res or targets.shape[-2] != cfg.data.target_res:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match "
                         f"data.target_res = {cfg.data.target_res}")
    m = cfg.model
    return mol_nll(logits, targets, num_bits=cfg.data.num_bits, num_mixtures=m.num_output_mixtures,
                   distribution_base=m.output_distribution_base, beta=m.output_gradient_smoothing_beta,
                   min_log_scale=cfg.loss.min_mol_logscale)


@dataclass(frozen=True)
class VAEObjective:
    """The training loss and its parts. Only `loss` carries gradients; everything else is detached.

    Per-dim values divide by batch_size * E; per-example values are sums over one example.
    """
    loss: torch.Tensor  # scalar: recon + beta * KL (gamma-balanced while gamma is active), nats/dim
    recon_nats_per_dim: torch.Tensor  # scalar
    kl_nats_per_dim: torch.Tensor  # scalar, true sum over layers (never gamma-weighted)
    kl_loss_nats_per_dim: torch.Tensor  # scalar, the KL term of `loss` before beta (gamma-weighted if active)
    kl_per_layer_nats_per_dim: torch.Tensor  # (N_lat,)
    kl_per_layer_bits_per_latent: torch.Tensor  # (N_lat,), KL rate per latent element (avg_kl_divs)
    recon_per_example_nats: torch.Tensor  # (B,)
    kl_per_example_nats: torch.Tensor  # (B,)
    kl_per_example_layer_bits: torch.Tensor  # (B, N_lat): each example's KL per latent element, bits
    gamma_weights: Optional[torch.Tensor]  # (N_lat,) or None when gamma is off
    beta: float
    effective_pixels: int  # E
    binarized: bool  # Bernoulli head: reported in nats/image instead of bits/dim


def vae_objective(logits, targets, posteriors, priors, cfg, *, beta, gamma_on, batch_size, variate_masks=None,
                  gamma_stats_reduce=None):
    """Negative ELBO objective of one batch: reconstruction + beta * gamma-balanced KL.

    logits/targets: output head logits and data (NCHW); posteriors/priors: one stats pair per latent
    layer in layer order; cfg: efficient_vdvae_core.config.Config; `beta` (KL weight) and `gamma_on`
    (gamma balancing active) are the schedules' values of the step (efficient_vdvae_core.schedules);
    batch_size: the divisor B_g (the per-process batch under DDP). variate_masks: optional list of
    (V,) tensors (or None entries); masked-out variates contribute no KL.
    gamma_stats_reduce: optional callable applied to the detached (2, N_lat) tensor [KL per dim;
    KL per latent element] before the gamma weights are formed, e.g. an all-reduce mean (or sum)
    over processes, so that N processes compute the weights of the global batch and train exactly
    like one process (the originals used each shard's own KLs).
    """
    m, binarized = cfg.model, is_binarized(cfg.data)
    nll = reconstruction_nll(logits, targets, cfg)
    n_dims = effective_pixels(cfg.data)
    denom = batch_size * n_dims
    recon_per_example = nll.flatten(1).sum(dim=1)  # (B,)
    recon = recon_per_example.sum() / denom

    if len(posteriors) != len(priors) or not posteriors:
        raise ValueError(f"need one posterior and one prior per latent layer (got {len(posteriors)} and {len(priors)})")
    if variate_masks is not None and len(variate_masks) != len(posteriors):
        raise ValueError(f"variate_masks has {len(variate_masks)} entries for {len(posteriors)} latent layers")
    kl_sums, latent_counts = [], []
    for layer, (post, prior) in enumerate(zip(posteriors, priors)):
        kl = gaussian_kl(post, prior, distribution_base=m.distribution_base, beta=m.gradient_smoothing_beta)
        mask = None if variate_masks is None else variate_masks[layer]
        if mask is not None:
            kl = kl * mask.to(device=kl.device, dtype=kl.dtype).view(1, -1, 1, 1)
        kl_sums.append(kl.flatten(1).sum(dim=1))  # (B,)
        latent_counts.append(kl[0].numel())  # V * H_l * W_l
    kl_per_example_layer = torch.stack(kl_sums, dim=1)  # (B, N_lat)
    kl_per_layer_nats = kl_per_example_layer.sum(dim=0)  # (N_lat,)
    kl_per_layer = kl_per_layer_nats / denom
    counts = torch.tensor(latent_counts, dtype=kl_per_layer_nats.dtype, device=kl_per_layer_nats.device)
    kl_per_latent = kl_per_layer_nats / (batch_size * counts)
    kl_true = kl_per_layer.sum()

    beta = float(beta)
    weights = None
    if gamma_on:
        stats = torch.stack([kl_per_layer, kl_per_latent]).detach()  # (2, N_lat)
        if gamma_stats_reduce is not None:
            stats = gamma_stats_reduce(stats)
        weights = gamma_weights(stats[0], stats[1], scaled=cfg.loss.scaled_gamma)
        kl_term = (weights * kl_per_layer).sum()
    else:
        kl_term = kl_true
    loss = recon + beta * kl_term
    return VAEObjective(
        loss=loss, recon_nats_per_dim=recon.detach(), kl_nats_per_dim=kl_true.detach(),
        kl_loss_nats_per_dim=kl_term.detach(), kl_per_layer_nats_per_dim=kl_per_layer.detach(),
        kl_per_layer_bits_per_latent=kl_per_latent.detach() / LN2,
        recon_per_example_nats=recon_per_example.detach(),
        kl_per_example_nats=kl_per_example_layer.sum(dim=1).detach(),
        kl_per_example_layer_bits=(kl_per_example_layer / (counts * LN2)).detach(),
        gamma_weights=weights, beta=beta, effective_pixels=n_dims, binarized=binarized)


@dataclass(frozen=True)
class ReportedLosses:
    """Losses in the reported unit `units` ('bits/dim' or 'nats/image'); NELBO = recon + true KL."""
    units: str
    recon: torch.Tensor  # scalar, batch mean
    kl: torch.Tensor  # scalar, batch mean
    nelbo: torch.Tensor  # scalar, batch mean
    nelbo_per_example: torch.Tensor  # (B,)


def report_units(objective):
    """The reported losses of a VAEObjective (bits/dim for images, nats/image for binarized digits)."""
    def convert(value):
        return nats_per_dim_to_report(value, binarized=objective.binarized, effective_pixels=objective.effective_pixels)
    recon, kl = convert(objective.recon_nats_per_dim), convert(objective.kl_nats_per_dim)
    per_example = (objective.recon_per_example_nats + objective.kl_per_example_nats) / objective.effective_pixels
    return ReportedLosses(units=report_unit_name(objective.binarized), recon=recon, kl=kl, nelbo=recon + kl,
                          nelbo_per_example=convert(per_example))
