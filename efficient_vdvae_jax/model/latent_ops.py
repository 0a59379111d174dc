"""Latent-space operations on a trained model: encode to per-layer z, interpolate, decode, partial sampling (NHWC).

Mirrors efficient_vdvae_torch/model/latent_ops.py. Latents are lists with one z (B, H, W, V) per latent
layer, in latent-layer order (layer 0 = the top of the hierarchy, the lowest resolution). Decoding runs
the prior pass with every variate given, so it reproduces the logits of the posterior pass that
produced the latents (up to float rounding). The model functions are pure and jit-able.
"""
import jax
import jax.numpy as jnp

from efficient_vdvae_core.interpolation import interpolate_layers

UNUSED_KEY_SEED = 0  # the prior eps of fully given layers is drawn and discarded


def posterior_latents(model, images, noise=None):
    """(logits, [z per layer]) of the posterior pass of images (B, R, R, C).

    `noise`: the eps (B, H, W, V) of every layer, z = mean + std * eps; None gives eps = 0 everywhere,
    i.e. z = the posterior mean of every layer given the posterior means above it (the encoding pass).
    """
    if noise is None:
        noise = [jnp.zeros((images.shape[0], b.resolution, b.resolution, b.latent_variates), images.dtype)
                 for b in model.arch.latent_layers]
    logits, posteriors, _ = model(images, noise=noise)
    blocks = [block for _, block in model.top_down.blocks()]
    return logits, [block.posterior_layer.sample(post, eps) for block, post, eps in zip(blocks, posteriors, noise)]


def given_latents(latents, keep_top_layers=None):
    """The `latents` argument of `model.sample`: (z, all-ones mask) for the top `keep_top_layers` layers
    (all when None), None for the others, whose z the prior pass samples."""
    n = len(latents) if keep_top_layers is None else keep_top_layers
    if not 0 <= n <= len(latents):
        raise ValueError(f"keep_top_layers = {keep_top_layers} outside 0..{len(latents)} (the latent layers)")
    return [(z, jnp.ones(z.shape[-1])) if layer < n else None for layer, z in enumerate(latents)]


def decode_latents(model, latents):
    """Output logits (B, R, R, K) of the prior pass with every layer's z given."""
    n = len(latents)
    return model.sample(latents[0].shape[0], [1.0] * n, latents=given_latents(latents),
                        key=jax.random.key(UNUSED_KEY_SEED))[0]


def conditional_sample(model, latents, keep_top_layers, temperatures, *, key):
    """Logits of samples that keep the top `keep_top_layers` layers of `latents` and draw the rest from
    the prior at `temperatures` (one per latent layer) with `key`."""
    return model.sample(latents[0].shape[0], list(temperatures), latents=given_latents(latents, keep_top_layers),
                        key=key)[0]


def interpolated_latents(start, end, fractions, method):
    """Per fraction, the per-layer latents between `start` and `end` (lists of z per layer), 'linear' or
    'spherical' per image and layer (efficient_vdvae_core.interpolation)."""
    to_host = lambda layers: [jax.device_get(z) for z in layers]
    return [[jnp.asarray(z) for z in step] for step in interpolate_layers(to_host(start), to_host(end), fractions,
                                                                           method)]
