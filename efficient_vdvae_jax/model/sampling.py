"""Output-layer samplers: images from MoL or Bernoulli logits. NHWC arrays.

Mirrors efficient_vdvae_torch/model/sampling.py; randomness comes from an explicit PRNG key.
"""
import math

import jax
import jax.numpy as jnp

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_jax.model.latents import softplus
from efficient_vdvae_jax.model.losses import MNIST_CROP, pixel_range, split_mol_logits

UNIFORM_EPS = 1e-5  # uniform draws lie in [1e-5, 1 - 1e-5] (Gumbel and logistic noise)


def _uniform(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype, UNIFORM_EPS, 1.0 - UNIFORM_EPS)


def _squeeze(u):
    """Given uniform draws in [0, 1) moved into [UNIFORM_EPS, 1 - UNIFORM_EPS], as `_uniform` draws them."""
    return u * (1.0 - 2.0 * UNIFORM_EPS) + UNIFORM_EPS


def sample_mol(logits, key, *, num_bits, num_mixtures, distribution_base, beta, min_log_scale, temperature,
               noise=None):
    """Images (B, H, W, C) in [min_pix, max_pix] from MoL logits (B, H, W, M(3C+1)); C = 3 or 1.

    Gumbel-max mixture choice on logits / temperature, logistic noise scaled by temperature, then the
    channel autoregression with clamping after each channel, as the original. No quantisation.
    temperature (a Python number) = 0 gives the most likely component's mean (no noise). `noise`: the
    uniform draws in [0, 1) (mixture (B, H, W, M), logistic (B, H, W, C)), else drawn from `key`.
    """
    mix_logits, means, raw_scales, raw_coeffs = split_mol_logits(logits, num_mixtures)
    b, h, w, c, m = means.shape
    if distribution_base == "std":
        scales = jnp.maximum(softplus(raw_scales, beta), math.exp(min_log_scale))
    elif distribution_base == "logstd":
        scales = jnp.exp(beta * jnp.maximum(raw_scales, min_log_scale))
    else:
        raise ValueError(f"unknown output_distribution_base {distribution_base!r}")

    if noise is None:
        mixture_key, logistic_key = jax.random.split(key)
        u_mixture = _uniform(mixture_key, (b, h, w, m), logits.dtype)
        u = _uniform(logistic_key, (b, h, w, c), logits.dtype)
    else:
        u_mixture, u = (_squeeze(x.astype(logits.dtype)) for x in noise)
    if temperature > 0:
        gumbel = -jnp.log(-jnp.log(u_mixture))
        choice = jnp.argmax(mix_logits / temperature + gumbel, axis=-1)  # (B, H, W)
    else:
        choice = jnp.argmax(mix_logits, axis=-1)

    def select(params):  # (B, H, W, C, M) -> (B, H, W, C) of the chosen component
        return jnp.take_along_axis(params, choice[..., None, None], axis=-1)[..., 0]

    x = select(means) + select(scales) * temperature * (jnp.log(u) - jnp.log1p(-u))
    min_pix, max_pix = pixel_range(num_bits)
    if c == 1:
        return jnp.clip(x, min_pix, max_pix)
    coeffs = jnp.tanh(select(raw_coeffs))
    x0 = jnp.clip(x[..., 0], min_pix, max_pix)
    x1 = jnp.clip(x[..., 1] + coeffs[..., 0] * x0, min_pix, max_pix)
    x2 = jnp.clip(x[..., 2] + coeffs[..., 1] * x0 + coeffs[..., 2] * x1, min_pix, max_pix)
    return jnp.stack([x0, x1, x2], axis=-1)


def bernoulli_probs(logits, temperature=1.0):
    """sigmoid(logits / temperature) on the 28x28 crop: (B, 28, 28, C) probabilities (step function at 0)."""
    crop = logits[:, MNIST_CROP, MNIST_CROP]
    if temperature > 0:
        return jax.nn.sigmoid(crop / temperature)
    return jnp.heaviside(crop, jnp.asarray(0.5, crop.dtype))


def sample_bernoulli(logits, key, temperature=1.0, noise=None):
    """Hard {0, 1} draws (B, 28, 28, C) of sigmoid(logits / temperature) on the 28x28 crop.

    `noise`: given uniform draws (B, 28, 28, C), a pixel is 1 where u < p; else drawn from `key`.
    """
    probs = bernoulli_probs(logits, temperature)
    if noise is not None:
        return (noise.astype(probs.dtype) < probs).astype(logits.dtype)
    return jax.random.bernoulli(key, probs).astype(logits.dtype)


def output_samples(logits, config, key, temperature=None, noise=None):
    """Images sampled from the output head: MoL in [-1, 1] (B, R, R, C), Bernoulli {0, 1} (B, 28, 28, 1).

    `noise`: given uniform draws, the list of evaluation.output_noise (MoL: two arrays, see sample_mol;
    Bernoulli: one array, see sample_bernoulli), else drawn from `key`.
    """
    t = config.synthesis.output_temperature if temperature is None else temperature
    if is_binarized(config.data):
        return sample_bernoulli(logits, key, temperature=t, noise=None if noise is None else noise[0])
    m = config.model
    return sample_mol(logits, key, num_bits=config.data.num_bits, num_mixtures=m.num_output_mixtures,
                      distribution_base=m.output_distribution_base, beta=m.output_gradient_smoothing_beta,
                      min_log_scale=config.loss.min_mol_logscale, temperature=t, noise=noise)
