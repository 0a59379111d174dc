"""Latent-space operations on a trained model: encode to per-layer z, interpolate, decode, partial sampling (NCHW).

Latents are lists with one z (B, V, H, W) per latent layer, in latent-layer order (layer 0 = the top of
the hierarchy, the lowest resolution). Decoding runs the prior pass with every variate given, so it
reproduces the logits of the posterior pass that produced the latents (up to float rounding).
"""
import numpy as np
import torch

from efficient_vdvae_core.interpolation import interpolate_layers


@torch.no_grad()
def posterior_latents(model, images, noise=None):
    """(logits, [z per layer]) of the posterior pass of images (B, C, R, R).

    `noise`: the eps (B, V, H, W) of every layer, z = mean + std * eps; None gives eps = 0 everywhere,
    i.e. z = the posterior mean of every layer given the posterior means above it (the encoding pass).
    """
    if noise is None:
        noise = [torch.zeros((images.shape[0], b.latent_variates, b.resolution, b.resolution), device=images.device,
                             dtype=images.dtype) for b in model.arch.latent_layers]
    logits, posteriors, _ = model(images, noise=noise)
    blocks = [block for _, block in model.top_down.blocks()]
    return logits, [block.posterior_layer.sample(post, noise=eps)
                    for block, post, eps in zip(blocks, posteriors, noise)]


def given_latents(latents, keep_top_layers=None):
    """The `latents` argument of `model.sample`: (z, all-ones mask) for the top `keep_top_layers` layers
    (all when None), None for the others, whose z the prior pass samples."""
    n = len(latents) if keep_top_layers is None else keep_top_layers
    if not 0 <= n <= len(latents):
        raise ValueError(f"keep_top_layers = {keep_top_layers} outside 0..{len(latents)} (the latent layers)")
    return [(z, torch.ones(z.shape[1], device=z.device)) if layer < n else None for layer, z in enumerate(latents)]


@torch.no_grad()
def decode_latents(model, latents):
    """Output logits (B, K, R, R) of the prior pass with every layer's z given (the prior draws it makes
    with the global torch RNG are discarded)."""
    n = len(latents)
    return model.sample(latents[0].shape[0], [1.0] * n, latents=given_latents(latents))[0]


@torch.no_grad()
def conditional_sample(model, latents, keep_top_layers, temperatures):
    """Logits of samples that keep the top `keep_top_layers` layers of `latents` and draw the rest from
    the prior at `temperatures` (one per latent layer) with the global torch RNG."""
    return model.sample(latents[0].shape[0], list(temperatures), latents=given_latents(latents, keep_top_layers))[0]


def interpolated_latents(start, end, fractions, method):
    """Per fraction, the per-layer latents between `start` and `end` (lists of z per layer), 'linear' or
    'spherical' per image and layer (efficient_vdvae_core.interpolation)."""
    to_numpy = lambda layers: [z.detach().cpu().numpy() for z in layers]
    steps = interpolate_layers(to_numpy(start), to_numpy(end), fractions, method)
    return [[torch.from_numpy(np.ascontiguousarray(z)).to(ref.device) for z, ref in zip(step, start)]
            for step in steps]
