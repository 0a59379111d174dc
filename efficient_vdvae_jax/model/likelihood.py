"""Importance-sampling terms of posterior samples: log p(x|z), log p(z) - log q(z|x) and KL per layer (NHWC).

Mirrors efficient_vdvae_torch/model/likelihood.py. The terms of k samples z ~ q(z|x) of every image come
from one model pass: the bottom-up net runs once on the images, the top-down net on k copies of its
skips with the given eps (z = mean + std * eps, exactly as the posterior pass takes it). Gaussian log
densities use the model's parameterisation ('std' or 'logstd' with its beta) and, with
use_residual_distribution, the posterior as the model composes it with the prior. log p(x|z) is the
loss's discretised likelihood (MoL) or Bernoulli. Without jax_enable_x64 every sum is float32 per image
and layer; `efficient_vdvae_core.iw_nll` adds the layers and combines the samples in float64.
Pure and jit-able (close over `config`).
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from efficient_vdvae_jax.model.losses import gaussian_kl, reconstruction_nll

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class ImportanceTerms(NamedTuple):
    """Terms of k posterior samples of B images in nats, sample-major (sample s of image b at [s, b])."""
    log_likelihood: jax.Array  # (k, B): log p(x|z), summed over the data dimensions
    log_prior_minus_posterior: jax.Array  # (k, B, N_lat): log p(z_l|z_<l) - log q(z_l|x, z_<l)
    kl: jax.Array  # (k, B, N_lat): KL(q(z_l|x, z_<l) || p(z_l|z_<l)) at the sample's z_<l


def log_std(stats, *, distribution_base, beta):
    """log of the standard deviation of stats [mean, std] ('std') or [mean, logstd] ('logstd': beta * logstd)."""
    if distribution_base == "std":
        return jnp.log(stats[1])
    if distribution_base == "logstd":
        return beta * stats[1]
    raise ValueError(f"unknown distribution_base {distribution_base!r}")


def gaussian_log_density(z, stats, *, distribution_base, beta):
    """Elementwise log N(z; mean, std) in nats for a latent layer's stats, same shape as z."""
    log_scale = log_std(stats, distribution_base=distribution_base, beta=beta)
    standardised = (z - stats[0]) * jnp.exp(-log_scale)
    return -0.5 * standardised * standardised - log_scale - HALF_LOG_2PI


def _per_example(t):
    """Sum over all but the first axis: (N, ...) -> (N,)."""
    return t.reshape(t.shape[0], -1).sum(axis=1)


def importance_terms(model, images, noise, config):
    """ImportanceTerms of the k posterior samples given by `noise` for every image.

    images (B, R, R, C); noise: per latent layer the eps (k, B, H, W, V) of the k samples; config: the
    model's Config (output head, parameterisation). Every variate comes from the posterior (no masks).
    """
    k, batch = noise[0].shape[:2]
    m = config.model
    skips = [jnp.tile(s, (k, 1, 1, 1)) for s in model.bottom_up(images)]  # (k * B, ...), sample-major
    flat_noise = [eps.reshape(k * batch, *eps.shape[2:]) for eps in noise]
    logits, posteriors, priors = model.top_down(skips, noise=flat_noise)
    targets = jnp.tile(images, (k, 1, 1, 1))
    log_likelihood = -_per_example(reconstruction_nll(logits.astype(jnp.float32), targets, config))
    densities = dict(distribution_base=m.distribution_base, beta=m.gradient_smoothing_beta)
    ratios, kls = [], []
    for (_, block), eps, post, prior in zip(model.top_down.blocks(), flat_noise, posteriors, priors):
        z = block.posterior_layer.sample(post, eps)  # the z the top-down pass used
        ratio = gaussian_log_density(z, prior, **densities) - gaussian_log_density(z, post, **densities)
        ratios.append(_per_example(ratio))
        kls.append(_per_example(gaussian_kl(post, prior, **densities)))
    per_layer = lambda sums: jnp.stack(sums, axis=1).reshape(k, batch, len(sums))
    return ImportanceTerms(log_likelihood.reshape(k, batch), per_layer(ratios), per_layer(kls))
