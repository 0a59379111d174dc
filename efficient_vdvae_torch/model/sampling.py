"""Output-layer samplers: images from MoL or Bernoulli logits. NCHW tensors.

Random draws use `noise` (given uniform draws in [0, 1)) or else `generator` (it must live on the
logits' device), so results are reproducible; outputs are created on the logits' device.
"""
import math

import torch
import torch.nn.functional as F

from efficient_vdvae_torch.model.losses import MNIST_CROP, pixel_range, split_mol_logits

UNIFORM_EPS = 1e-5  # uniform draws lie in [1e-5, 1 - 1e-5] (Gumbel and logistic noise)


def _uniform(shape, like, generator, given=None):
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) if given is None else given
    return u.to(like.dtype) * (1.0 - 2.0 * UNIFORM_EPS) + UNIFORM_EPS


@torch.no_grad()
def sample_mol(logits, *, num_bits, num_mixtures, distribution_base, beta, min_log_scale, temperature,
               generator=None, noise=None):
    """Images (B, C, H, W) in [min_pix, max_pix] from MoL logits (B, M(3C+1), H, W); C = 3 or 1.

    Gumbel-max mixture choice on logits / temperature, logistic noise scaled by temperature, then the
    channel autoregression with clamping after each channel, as the original. No quantisation.
    temperature = 0 gives the most likely component's mean (no noise). `noise`: the uniform draws
    (mixture (B, M, H, W), logistic (B, C, H, W)), else drawn from `generator`.
    """
    mix_logits, means, raw_scales, raw_coeffs = split_mol_logits(logits, num_mixtures)
    b, c, m, h, w = means.shape
    if distribution_base == "std":
        scales = F.softplus(raw_scales, beta=beta).clamp_min(math.exp(min_log_scale))
    elif distribution_base == "logstd":
        scales = torch.exp(beta * raw_scales.clamp_min(min_log_scale))
    else:
        raise ValueError(f"unknown output_distribution_base {distribution_base!r}")

    u_mixture, u_logistic = (None, None) if noise is None else noise
    gumbel = -torch.log(-torch.log(_uniform((b, m, h, w), logits, generator, u_mixture)))
    if temperature > 0:
        choice = torch.argmax(mix_logits / temperature + gumbel, dim=1)  # (B, H, W)
    else:
        choice = torch.argmax(mix_logits, dim=1)
    index = choice[:, None, None].expand(b, c, 1, h, w)

    def select(params):  # (B, C, M, H, W) -> (B, C, H, W) of the chosen component
        return torch.gather(params, 2, index).squeeze(2)

    u = _uniform((b, c, h, w), logits, generator, u_logistic)
    x = select(means) + select(scales) * temperature * (torch.log(u) - torch.log1p(-u))
    min_pix, max_pix = pixel_range(num_bits)
    if c == 1:
        return x.clamp(min_pix, max_pix)
    coeffs = torch.tanh(select(raw_coeffs))
    x0 = x[:, 0].clamp(min_pix, max_pix)
    x1 = (x[:, 1] + coeffs[:, 0] * x0).clamp(min_pix, max_pix)
    x2 = (x[:, 2] + coeffs[:, 1] * x0 + coeffs[:, 2] * x1).clamp(min_pix, max_pix)
    return torch.stack([x0, x1, x2], dim=1)


def bernoulli_probs(logits, temperature=1.0):
    """sigmoid(logits / temperature) on the 28x28 crop: (B, 1, 28, 28) probabilities (step function at 0)."""
    crop = logits[..., MNIST_CROP, MNIST_CROP]
    if temperature > 0:
        return torch.sigmoid(crop / temperature)
    return torch.heaviside(crop, crop.new_tensor(0.5))


@torch.no_grad()
def sample_bernoulli(logits, temperature=1.0, generator=None, noise=None):
    """Hard {0, 1} draws (B, 1, 28, 28) of sigmoid(logits / temperature) on the 28x28 crop.

    `noise`: given uniform draws (B, 1, 28, 28), a pixel is 1 where u < p; else drawn from `generator`.
    """
    probs = bernoulli_probs(logits, temperature)
    if noise is not None:
        return (noise.to(probs.dtype) < probs).to(probs.dtype)
    return torch.bernoulli(probs, generator=generator)
