"""Diagonal Gaussian latent layer with 'std' or 'logstd' parameterisation. NHWC."""
import jax
import jax.numpy as jnp
from flax import nnx

from efficient_vdvae_jax.model.layers import Conv2d


def softplus(x, beta):
    """(1 / beta) * log(1 + exp(beta * x))."""
    return jax.nn.softplus(beta * x) / beta


class GaussianLatentLayer(nnx.Module, pytree=False):
    """1x1 projection to [mean, raw scale]; returns stats [mean, std] or [mean, logstd].

    'std': std = softplus_beta(raw). 'logstd': std = exp(beta * logstd) and the stats hold the
    unscaled logstd. With `prior_stats` (NVAE residual posterior) the stats are relative to the prior.
    """

    def __init__(self, in_filters, latent_variates, distribution_base, beta, *, keys):
        self.projection = Conv2d(in_filters, 2 * latent_variates, 1, keys=keys)
        self.distribution_base = distribution_base
        self.beta = beta

    def stats(self, x, prior_stats=None):
        """Statistics [mean, std-or-logstd], each (B, H, W, V)."""
        mean, raw = jnp.split(self.projection(x).astype(jnp.float32), 2, axis=-1)  # float32 under bf16 mixed precision
        if self.distribution_base == "std":
            std = softplus(raw, self.beta)
            if prior_stats is not None:
                mean, std = mean + prior_stats[0], std * prior_stats[1]
            return [mean, std]
        if prior_stats is not None:
            mean, raw = mean + prior_stats[0], raw + prior_stats[1]
        return [mean, raw]

    def std(self, stats):
        """The standard deviation for stats in this layer's base."""
        return stats[1] if self.distribution_base == "std" else jnp.exp(self.beta * stats[1])

    def sample(self, stats, noise, temperature=1.0):
        """z = mean + std * temperature * noise, with noise (eps) ~ N(0, 1) of the mean's shape."""
        return stats[0] + self.std(stats) * temperature * noise
