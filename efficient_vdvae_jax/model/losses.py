"""Reconstruction (MoL, Bernoulli) and KL losses, gamma balancing and the VAE objective. NHWC.

Mirrors efficient_vdvae_torch/model/losses.py: the same formulas, channel layout, units and fields.
Everything is a pure, jit-able and differentiable function. Units: "nats" are natural-log units,
"per dim" divides by the data dimension count E (`effective_pixels`), bits = nats / ln 2.
"""
import math

import jax
import jax.numpy as jnp
from flax import struct

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.metrics import (LN2, MNIST_CROP, MNIST_SIZE, effective_pixels, nats_per_dim_to_report,  # noqa: F401
                                          num_classes, pixel_range, report_unit_name)
from efficient_vdvae_jax.model.latents import softplus

CDF_DELTA_THRESHOLD = 1e-5  # interior pixels with less bin mass use the density at the bin centre


def split_mol_logits(logits, num_mixtures):
    """Split (B, H, W, M(3C+1)) logits into mixture logits (B, H, W, M) and means, raw scales, raw AR
    coefficients, each (B, H, W, C, M). The last axis holds (C, 3M) after the M mixture logits, the
    PyTorch model's order, so logits are the same numbers in both frameworks."""
    *lead, k = logits.shape
    m = num_mixtures
    per_mixture, rem = divmod(k, m)
    if rem or per_mixture < 4 or (per_mixture - 1) % 3:
        raise ValueError(f"MoL logits have {k} channels; expected num_mixtures * (3 * C + 1) with num_mixtures = {m}")
    c = (per_mixture - 1) // 3
    params = logits[..., m:].reshape(*lead, c, 3 * m)
    return logits[..., :m], params[..., :m], params[..., m:2 * m], params[..., 2 * m:]


def mol_nll(logits, targets, *, num_bits, num_mixtures, distribution_base, beta, min_log_scale):
    """Discretised mixture-of-logistics NLL per pixel, (B, H, W) in nats (all C channels of a pixel).

    logits (B, H, W, M(3C+1)), targets (B, H, W, C) in [min_pix, max_pix], C = 3 (autoregressive
    coefficients) or 1 (coefficient slots present but unused). `beta` is the output softplus/exp
    smoothing beta, `min_log_scale` the log-scale floor.
    """
    mix_logits, means, raw_scales, raw_coeffs = split_mol_logits(logits, num_mixtures)
    channels = means.shape[-2]
    expected = (*logits.shape[:-1], channels)
    if tuple(targets.shape) != expected:
        raise ValueError(f"MoL targets have shape {tuple(targets.shape)}; the logits need {expected}")
    x = targets[..., None]  # (B, H, W, C, 1), broadcast over mixtures
    if channels == 3:
        # Autoregressive means over colour channels, conditioned on the true previous channels.
        coeffs = jnp.tanh(raw_coeffs)
        x0, x1 = x[..., 0, :], x[..., 1, :]
        means = jnp.stack([means[..., 0, :],
                           means[..., 1, :] + coeffs[..., 0, :] * x0,
                           means[..., 2, :] + coeffs[..., 1, :] * x0 + coeffs[..., 2, :] * x1], axis=-2)
    elif channels != 1:
        raise ValueError(f"MoL supports 1 or 3 channels, got {channels}")

    if distribution_base == "std":
        scale = jnp.maximum(softplus(raw_scales, beta), math.exp(min_log_scale))
        log_scale, inv_scale = jnp.log(scale), 1.0 / scale
    elif distribution_base == "logstd":
        # The original's quirk is kept: log_pdf_mid uses the unscaled log-scale, inv_scale exp(-beta * it).
        log_scale = jnp.maximum(raw_scales, min_log_scale)
        inv_scale = jnp.exp(-beta * log_scale)
    else:
        raise ValueError(f"unknown output_distribution_base {distribution_base!r}")

    n_classes = num_classes(num_bits)
    half_bin = 1.0 / n_classes
    centred = x - means
    plus = inv_scale * (centred + half_bin)
    minus = inv_scale * (centred - half_bin)
    mid = inv_scale * centred
    log_cdf_plus = plus - jax.nn.softplus(plus)
    log_one_minus_cdf_minus = -jax.nn.softplus(minus)
    cdf_delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
    log_pdf_mid = mid - log_scale - 2.0 * jax.nn.softplus(mid)

    min_pix, max_pix = pixel_range(num_bits)
    # Exact equality in the targets' dtype (the Python float is rounded to it), as the original.
    is_min = x == jnp.asarray(min_pix, x.dtype)
    is_max = x == jnp.asarray(max_pix, x.dtype)
    interior = jnp.where(cdf_delta > CDF_DELTA_THRESHOLD, jnp.log(jnp.maximum(cdf_delta, 1e-12)),
                         log_pdf_mid - math.log(n_classes / 2.0))
    log_probs = jnp.where(is_min, log_cdf_plus, jnp.where(is_max, log_one_minus_cdf_minus, interior))
    joint = log_probs.sum(axis=-2) + jax.nn.log_softmax(mix_logits, axis=-1)  # (B, H, W, M)
    return -jax.nn.logsumexp(joint, axis=-1)


def bernoulli_nll(logits, targets):
    """Bernoulli NLL per pixel of the 28x28 crop (rows/cols 2..29 of 32x32), (B, 28, 28) in nats.

    logits, targets: (B, 32, 32, C), targets in {0, 1}; stable sigmoid cross-entropy.
    """
    if tuple(logits.shape[1:3]) != (32, 32) or logits.shape != targets.shape:
        raise ValueError(f"bernoulli_nll expects logits and targets of shape (B, 32, 32, C), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    l = logits[:, MNIST_CROP, MNIST_CROP]
    x = targets[:, MNIST_CROP, MNIST_CROP]
    nll = jnp.maximum(l, 0) - l * x + jnp.log1p(jnp.exp(-jnp.abs(l)))
    return nll.sum(axis=-1)


def gaussian_kl(post, prior, *, distribution_base, beta):
    """Elementwise KL(posterior || prior) between diagonal Gaussians, (B, H, W, V) in nats.

    `post` and `prior` are the latent layers' stats [mean, std] ('std') or [mean, logstd] ('logstd',
    std = exp(beta * logstd)); the log term includes beta (the PyTorch form; the original JAX omitted
    it, a bug not reproduced here).
    """
    p_mean, p_scale = post
    q_mean, q_scale = prior
    if distribution_base == "std":
        std_ratio = p_scale / q_scale
        z = (p_mean - q_mean) / q_scale
        log_ratio = jnp.log(std_ratio)
    elif distribution_base == "logstd":
        log_ratio = beta * (p_scale - q_scale)
        std_ratio = jnp.exp(log_ratio)
        z = (p_mean - q_mean) * jnp.exp(-beta * q_scale)
    else:
        raise ValueError(f"unknown distribution_base {distribution_base!r}")
    return 0.5 * (z * z + std_ratio * std_ratio) - 0.5 - log_ratio


def gamma_weights(kl_per_layer_nats_per_dim, kl_per_layer_nats_per_latent, *, scaled):
    """NVAE gamma balancing weights alpha (N_lat,), gradient-stopped, summing to N_lat.

    alpha_l = N_lat * a_l / sum_k a_k with a = the per-latent-element KL if `scaled` else the per-dim
    KL. All-zero KLs give weights 1 (the original's 0/0 = NaN is not reproduced).
    """
    a = jax.lax.stop_gradient(jnp.asarray(kl_per_layer_nats_per_latent if scaled else kl_per_layer_nats_per_dim))
    total = a.sum()
    weights = a.size * a / jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, weights, jnp.ones_like(weights))


def reconstruction_nll(logits, targets, cfg):
    """-log p(x|z) per pixel in nats for the config's output head: Bernoulli (B, 28, 28) or MoL (B, H, W)."""
    if is_binarized(cfg.data):
        return bernoulli_nll(logits, targets)
    if targets.shape[1] != cfg.data.target_res or targets.shape[2] != cfg.data.target_res:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match "
                         f"data.target_res = {cfg.data.target_res}")
    m = cfg.model
    return mol_nll(logits, targets, num_bits=cfg.data.num_bits, num_mixtures=m.num_output_mixtures,
                   distribution_base=m.output_distribution_base, beta=m.output_gradient_smoothing_beta,
                   min_log_scale=cfg.loss.min_mol_logscale)


@struct.dataclass
class VAEObjective:
    """The training loss and its parts (a pytree). Only `loss` carries gradients.

    Per-dim values divide by batch_size * E; per-example values are sums over one example.
    """
    loss: jax.Array  # scalar: recon + beta * KL (gamma-balanced while gamma is active), nats/dim
    recon_nats_per_dim: jax.Array  # scalar
    kl_nats_per_dim: jax.Array  # scalar, true sum over layers (never gamma-weighted)
    kl_loss_nats_per_dim: jax.Array  # scalar, the KL term of `loss` before beta (gamma-weighted if active)
    kl_per_layer_nats_per_dim: jax.Array  # (N_lat,)
    kl_per_layer_bits_per_latent: jax.Array  # (N_lat,), KL rate per latent element (avg_kl_divs)
    recon_per_example_nats: jax.Array  # (B,)
    kl_per_example_nats: jax.Array  # (B,)
    kl_per_example_layer_bits: jax.Array  # (B, N_lat): each example's KL per latent element, bits
    gamma_weights: jax.Array  # (N_lat,): the gamma weights, all ones while gamma is off (torch: None)
    beta: jax.Array  # scalar, the KL weight used
    effective_pixels: int = struct.field(pytree_node=False)  # E
    binarized: bool = struct.field(pytree_node=False)  # Bernoulli head: nats/image instead of bits/dim


def vae_objective(logits, targets, posteriors, priors, cfg, *, beta, gamma_on, batch_size, variate_masks=None,
                  gamma_stats_reduce=None):
    """Negative ELBO objective of one batch: reconstruction + beta * gamma-balanced KL.

    logits/targets: output head logits and data (NHWC); posteriors/priors: one stats pair per latent
    layer in layer order; cfg: efficient_vdvae_core.config.Config. `beta` (KL weight) and `gamma_on`
    (gamma balancing active) may be traced scalars; the caller computes them on the host with
    efficient_vdvae_core.schedules.kl_beta(step, cfg.loss) and gamma_active(step, cfg.loss).
    batch_size: the divisor B_g (the global batch when the batch is sharded under one jit).
    variate_masks: optional list of (V,) arrays (or None entries); masked-out variates contribute no KL.
    gamma_stats_reduce: optional function applied to the gradient-stopped (2, N_lat) array [KL per dim;
    KL per latent element] before the gamma weights are formed (e.g. a psum under shard_map); under
    jit with a sharded batch the stats are already global and the default (identity) is right.
    """
    m, binarized = cfg.model, is_binarized(cfg.data)
    nll = reconstruction_nll(logits, targets, cfg)
    n_dims = effective_pixels(cfg.data)
    denom = batch_size * n_dims
    recon_per_example = nll.reshape(nll.shape[0], -1).sum(axis=1)  # (B,)
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
            kl = kl * jnp.asarray(mask).astype(kl.dtype).reshape(1, 1, 1, -1)
        kl_sums.append(kl.reshape(kl.shape[0], -1).sum(axis=1))  # (B,)
        latent_counts.append(math.prod(kl.shape[1:]))  # H_l * W_l * V
    kl_per_example_layer = jnp.stack(kl_sums, axis=1)  # (B, N_lat)
    kl_per_layer_nats = kl_per_example_layer.sum(axis=0)  # (N_lat,)
    kl_per_layer = kl_per_layer_nats / denom
    counts = jnp.asarray(latent_counts, kl_per_layer_nats.dtype)
    kl_per_latent = kl_per_layer_nats / (batch_size * counts)
    kl_true = kl_per_layer.sum()

    stats = jax.lax.stop_gradient(jnp.stack([kl_per_layer, kl_per_latent]))  # (2, N_lat)
    if gamma_stats_reduce is not None:
        stats = gamma_stats_reduce(stats)
    weights = jnp.where(gamma_on, gamma_weights(stats[0], stats[1], scaled=cfg.loss.scaled_gamma),
                        jnp.ones_like(kl_per_layer))
    kl_term = jnp.where(gamma_on, (weights * kl_per_layer).sum(), kl_true)
    beta = jnp.asarray(beta, recon.dtype)
    loss = recon + beta * kl_term
    sg = jax.lax.stop_gradient
    return VAEObjective(
        loss=loss, recon_nats_per_dim=sg(recon), kl_nats_per_dim=sg(kl_true), kl_loss_nats_per_dim=sg(kl_term),
        kl_per_layer_nats_per_dim=sg(kl_per_layer), kl_per_layer_bits_per_latent=sg(kl_per_latent) / LN2,
        recon_per_example_nats=sg(recon_per_example), kl_per_example_nats=sg(kl_per_example_layer.sum(axis=1)),
        kl_per_example_layer_bits=sg(kl_per_example_layer / (counts * LN2)), gamma_weights=weights, beta=beta,
        effective_pixels=n_dims, binarized=binarized)


@struct.dataclass
class ReportedLosses:
    """Losses in the reported unit `units` ('bits/dim' or 'nats/image'); NELBO = recon + true KL."""
    recon: jax.Array  # scalar, batch mean
    kl: jax.Array  # scalar, batch mean
    nelbo: jax.Array  # scalar, batch mean
    nelbo_per_example: jax.Array  # (B,)
    units: str = struct.field(pytree_node=False)


def report_units(objective: VAEObjective) -> ReportedLosses:
    """The reported losses of a VAEObjective (bits/dim for images, nats/image for binarized digits)."""
    def convert(value):
        return nats_per_dim_to_report(value, binarized=objective.binarized, effective_pixels=objective.effective_pixels)
    recon, kl = convert(objective.recon_nats_per_dim), convert(objective.kl_nats_per_dim)
    per_example = (objective.recon_per_example_nats + objective.kl_per_example_nats) / objective.effective_pixels
    return ReportedLosses(recon=recon, kl=kl, nelbo=recon + kl, nelbo_per_example=convert(per_example),
                          units=report_unit_name(objective.binarized))

