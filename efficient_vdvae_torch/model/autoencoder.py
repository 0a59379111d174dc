"""Bottom-up and top-down networks and the full autoencoder."""
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from efficient_vdvae_torch.model.latents import GaussianLatentLayer
from efficient_vdvae_torch.model.layers import Conv2d, PoolLayer, ResidualConvCell, UnpoolLayer


def _call(module, use_checkpoint, *args):
    """module(*args), recomputing its activations in backward when `use_checkpoint`."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def _cells(block, init_scale, use_1x1_conv, width):
    return nn.Sequential(*[
        ResidualConvCell(block.n_layers, width, block.mid_ratio, block.kernel_size, init_scale, use_1x1_conv)
        for _ in range(block.n_blocks)])


class LevelBlockUp(nn.Module):
    """Residual cells, then the skip projection (before pooling), then the optional pool."""

    def __init__(self, block, init_scale, use_1x1_conv):
        super().__init__()
        self.residual_block = _cells(block, init_scale, use_1x1_conv, block.in_filters)
        self.skip_projection = Conv2d(block.in_filters, block.skip_filters, 1) if block.use_skip else None
        self.pool = PoolLayer(block.in_filters, block.filters, block.stride) if block.stride > 1 else None

    def forward(self, x):
        x = self.residual_block(x)
        skip = self.skip_projection(x) if self.skip_projection is not None else x
        if self.pool is not None:
            x = self.pool(x)
        return x, skip


class LevelBlockDown(nn.Module):
    """One latent layer: optional unpool, prior and posterior nets, z projection, residual cells."""

    def __init__(self, block, model_cfg, stable_scale):
        super().__init__()
        width = block.width
        cell_scale = stable_scale if model_cfg.stable_init else 1.0
        one = model_cfg.use_1x1_conv
        self.unpool = (UnpoolLayer(block.in_filters, block.filters, block.stride, block.resolution)
                       if block.stride > 1 else None)
        self.residual_block = _cells(block, cell_scale, one, width)
        self.posterior_net = nn.Sequential(ResidualConvCell(
            block.n_layers, width + block.skip_filters, block.mid_ratio * 0.5, block.kernel_size, 1.0, one,
            residual=False, output_ratio=0.5))
        prior_scale = 0.0 if model_cfg.initialize_prior_weights_as_zero else 1.0
        self.prior_net = nn.Sequential(ResidualConvCell(
            block.n_layers, width, block.mid_ratio, block.kernel_size, prior_scale, one,
            residual=False, output_ratio=2.0))
        base, beta = model_cfg.distribution_base, model_cfg.gradient_smoothing_beta
        self.prior_layer = GaussianLatentLayer(width, block.latent_variates, base, beta)
        self.posterior_layer = GaussianLatentLayer(width, block.latent_variates, base, beta)
        self.z_projection = Conv2d(block.latent_variates, block.filters, 1, init_scale=stable_scale)
        self.use_residual_distribution = model_cfg.use_residual_distribution
        self.width = width

    def _prior(self, y):
        if self.unpool is not None:
            y = self.unpool(y)
        kl_residual, y_prior = torch.split(self.prior_net(y), self.width, dim=1)
        return y, kl_residual, self.prior_layer.stats(y_prior)

    def _finish(self, y, kl_residual, z):
        y = y + kl_residual
        y = y + self.z_projection(z)
        return self.residual_block(y)

    def forward(self, skip, y, variate_mask=None, noise=None, prior_noise=None):
        """Posterior pass with posterior eps `noise`; returns (y, posterior stats, prior stats).

        With a (V,) `variate_mask`, variates where it is 0 take the prior sample with eps `prior_noise`.
        """
        y, kl_residual, prior_stats = self._prior(y)
        y_post = self.posterior_net[0](y, skip)  # = posterior_net(cat([y, skip]))
        post_stats = self.posterior_layer.stats(y_post, prior_stats if self.use_residual_distribution else None)
        z = self.posterior_layer.sample(post_stats, noise=noise)
        if variate_mask is not None:
            mask = variate_mask.to(z.dtype).view(1, -1, 1, 1)
            z = mask * z + (1 - mask) * self.prior_layer.sample(prior_stats, noise=prior_noise)
        return self._finish(y, kl_residual, z), post_stats, prior_stats

    def sample_prior(self, y, temperature=1.0, z_given=None, given_mask=None, noise=None):
        """Prior pass: z from the prior (std x temperature, eps `noise`), or `z_given` where `given_mask` is 1."""
        y, kl_residual, prior_stats = self._prior(y)
        z = self.prior_layer.sample(prior_stats, temperature, noise=noise)
        if z_given is not None:
            mask = given_mask.to(z.dtype).view(1, -1, 1, 1)
            z = mask * z_given.to(z.dtype) + (1 - mask) * z
        return self._finish(y, kl_residual, z), z


class BottomUp(nn.Module):
    """Input conv and the bottom-up levels; returns one skip per level, deepest first."""

    def __init__(self, arch, model_cfg):
        super().__init__()
        scale = arch.stable_init_scale if model_cfg.stable_init else 1.0
        one = model_cfg.use_1x1_conv
        pre_levels, downsample = [], []
        for pre, down in arch.up_levels:  # construction order of the original: pre blocks, then downsample
            pre_levels.append(nn.ModuleList([LevelBlockUp(b, scale, one) for b in pre]))
            downsample.append(LevelBlockUp(down, scale, one))
        input_conv = Conv2d(arch.input_channels, arch.input_filters, arch.input_kernel_size)
        self.levels_up = nn.ModuleList(pre_levels)
        self.levels_up_downsample = nn.ModuleList(downsample)
        self.input_conv = input_conv
        self.checkpoint_blocks = False

    def forward(self, x):
        x = self.input_conv(x)
        skips = []
        for pre, down in zip(self.levels_up, self.levels_up_downsample):
            for block in pre:
                x, _ = _call(block, self.checkpoint_blocks, x)
            x, skip = _call(down, self.checkpoint_blocks, x)
            skips.append(skip)
        return skips[::-1]


class TopDown(nn.Module):
    """Learned top input, top-down latent layers and the output conv."""

    def __init__(self, arch, model_cfg):
        super().__init__()
        h0 = arch.top_resolution
        self.trainable_h = nn.Parameter(torch.empty(1, arch.top_filters, h0, h0))
        nn.init.kaiming_uniform_(self.trainable_h, nonlinearity="linear")
        scale = arch.stable_init_scale
        upsample, extras = [], []
        for up, more in arch.down_levels:  # construction order of the original: upsample, then extras
            upsample.append(LevelBlockDown(up, model_cfg, scale))
            extras.append(nn.ModuleList([LevelBlockDown(b, model_cfg, scale) for b in more]))
        self.levels_down = nn.ModuleList(extras)
        self.levels_down_upsample = nn.ModuleList(upsample)
        self.output_conv = Conv2d(arch.down_levels[-1][0].filters, arch.output_channels, arch.output_kernel_size)
        self.checkpoint_blocks = False

    def blocks(self):
        """LevelBlockDown modules in latent-layer order, with their level index."""
        for level, (up, more) in enumerate(zip(self.levels_down_upsample, self.levels_down)):
            yield level, up
            for block in more:
                yield level, block

    def _top(self, batch_size):
        return self.trainable_h.expand(batch_size, -1, -1, -1)

    def forward(self, skips, variate_masks=None, noise=None, prior_noise=None):
        """Posterior pass over the skips (deepest first); returns (logits, posteriors, priors)."""
        y = self._top(skips[0].shape[0])
        posteriors, priors = [], []
        for layer, (level, block) in enumerate(self.blocks()):
            mask = None if variate_masks is None else variate_masks[layer]
            eps = None if noise is None else noise[layer]
            prior_eps = None if prior_noise is None else prior_noise[layer]
            y, post, prior = _call(block, self.checkpoint_blocks, skips[level], y, mask, eps, prior_eps)
            posteriors.append(post)
            priors.append(prior)
        return self.output_conv(y), posteriors, priors

    def sample(self, batch_size, temperatures, latents=None, noise=None):
        """Prior pass. `temperatures`: one per latent layer. `latents`: per layer None or (z, mask).
        `noise`: prior eps per latent layer (drawn from the global RNG where None)."""
        y = self._top(batch_size)
        zs = []
        for layer, (_, block) in enumerate(self.blocks()):
            z_given, mask = (None, None) if latents is None or latents[layer] is None else latents[layer]
            eps = None if noise is None else noise[layer]
            y, z = block.sample_prior(y, temperatures[layer], z_given, mask, eps)
            zs.append(z)
        return self.output_conv(y), zs


class Autoencoder(nn.Module):
    """Efficient-VDVAE: `bottom_up` encoder and `top_down` decoder with the original's parameter names."""

    def __init__(self, arch, model_cfg):
        super().__init__()
        self.arch = arch
        self.bottom_up = BottomUp(arch, model_cfg)
        self.top_down = TopDown(arch, model_cfg)

    def forward(self, x, variate_masks=None, noise=None, prior_noise=None):
        """x (B, C, R, R) -> (output logits, posterior stats per layer, prior stats per layer).

        `noise`: posterior eps per latent layer, `prior_noise`: prior eps of the variates that
        `variate_masks` sets to 0 (both drawn from the global RNG where None).
        """
        return self.top_down(self.bottom_up(x), variate_masks, noise, prior_noise)

    @torch.no_grad()
    def sample(self, batch_size, temperatures, latents=None, noise=None):
        """Logits of prior samples and the z of every layer; `noise`: prior eps per latent layer."""
        return self.top_down.sample(batch_size, temperatures, latents, noise)


def build_model(config):
    """The Autoencoder for a Config (parameters on the current default device)."""
    from efficient_vdvae_core.architecture import build_architecture
    return Autoencoder(build_architecture(config.model, config.data), config.model)
