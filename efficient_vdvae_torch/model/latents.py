"""Diagonal Gaussian latent layer with 'std' or 'logstd' parameterisation."""
import torch
from torch import nn
from torch.nn import functional as F

from efficient_vdvae_torch.model.layers import Conv2d


class GaussianLatentLayer(nn.Module):
    """1x1 projection to [mean, raw scale]; returns stats [mean, std] or [mean, logstd].

    'std': std = softplus_beta(raw). 'logstd': std = exp(beta * logstd) and the stats hold the
    unscaled logstd. With `prior_stats` (NVAE residual posterior) the stats are relative to the prior.
    """

    def __init__(self, in_filters, latent_variates, distribution_base, beta):
        super().__init__()
        self.projection = Conv2d(in_filters, 2 * latent_variates, 1)
        self.distribution_base = distribution_base
        self.beta = beta

    def stats(self, x, prior_stats=None):
        """Posterior/prior statistics [mean, std-or-logstd] of shape (B, V, H, W) each."""
        mean, raw = torch.chunk(self.projection(x).float(), 2, dim=1)  # float32 under bf16 mixed precision
        if self.distribution_base == "std":
            std = F.softplus(raw, beta=self.beta)
            if prior_stats is not None:
                mean, std = mean + prior_stats[0], std * prior_stats[1]
            return [mean, std]
        if prior_stats is not None:
            mean, raw = mean + prior_stats[0], raw + prior_stats[1]
        return [mean, raw]

    def std(self, stats):
        """The standard deviation for stats in this layer's base."""
        return stats[1] if self.distribution_base == "std" else torch.exp(self.beta * stats[1])

    def sample(self, stats, temperature=1.0, noise=None):
        """z = mean + std * temperature * eps; `noise` (eps) may be given for reproducibility tests."""
        if noise is None:
            noise = torch.randn_like(stats[0])
        std = self.std(stats)
        if temperature != 1.0:
            std = std * temperature
        return stats[0] + std * noise
