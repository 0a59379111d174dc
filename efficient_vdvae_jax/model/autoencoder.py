"""Bottom-up and top-down networks and the full autoencoder. Flax NNX, NHWC.

Module attributes and list indices are those of the PyTorch model: the nnx state path of each
parameter equals the torch state_dict name split at '.' (list indices as ints), `weight` -> `kernel`.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_jax.model.latents import GaussianLatentLayer
from efficient_vdvae_jax.model.layers import (
    Conv2d,
    ParamKeys,
    PoolLayer,
    ResidualConvCell,
    UnpoolLayer,
)


def _cells(block, init_scale, use_1x1_conv, width, keys):
    return [ResidualConvCell(block.n_layers, width, block.mid_ratio, block.kernel_size, init_scale, use_1x1_conv,
                             keys=keys) for _ in range(block.n_blocks)]


def _run(cells, x):
    for cell in cells:
        x = cell(x)
    return x


def _call(block, use_checkpoint, *args):
    """block(*args); with `use_checkpoint` ([train] activation_checkpointing), its activations are recomputed in
    backward instead of kept (only its inputs and outputs stay)."""
    if not use_checkpoint:
        return block(*args)
    return nnx.remat(lambda module, *inputs: module(*inputs))(block, *args)


def _apply_mask(mask, z_keep, z_other):
    """mask * z_keep + (1 - mask) * z_other with a (V,) mask broadcast over batch and space."""
    mask = jnp.asarray(mask).astype(z_keep.dtype).reshape(1, 1, 1, -1)
    return mask * z_keep + (1 - mask) * z_other


class LevelBlockUp(nnx.Module, pytree=False):
    """Residual cells, then the skip projection (before pooling), then the optional pool."""

    def __init__(self, block, init_scale, use_1x1_conv, *, keys):
        self.residual_block = _cells(block, init_scale, use_1x1_conv, block.in_filters, keys)
        self.skip_projection = (Conv2d(block.in_filters, block.skip_filters, 1, keys=keys)
                                if block.use_skip else None)
        self.pool = PoolLayer(block.in_filters, block.filters, block.stride, keys=keys) if block.stride > 1 else None

    def __call__(self, x):
        x = _run(self.residual_block, x)
        skip = self.skip_projection(x) if self.skip_projection is not None else x
        if self.pool is not None:
            x = self.pool(x)
        return x, skip


class LevelBlockDown(nnx.Module, pytree=False):
    """One latent layer: optional unpool, prior and posterior nets, z projection, residual cells."""

    def __init__(self, block, model_cfg, stable_scale, *, keys):
        width = block.width
        cell_scale = stable_scale if model_cfg.stable_init else 1.0
        one = model_cfg.use_1x1_conv
        self.unpool = (UnpoolLayer(block.in_filters, block.filters, block.stride, block.resolution, keys=keys)
                       if block.stride > 1 else None)
        self.residual_block = _cells(block, cell_scale, one, width, keys)
        self.posterior_net = [ResidualConvCell(
            block.n_layers, width + block.skip_filters, block.mid_ratio * 0.5, block.kernel_size, 1.0, one,
            residual=False, output_ratio=0.5, keys=keys)]
        prior_scale = 0.0 if model_cfg.initialize_prior_weights_as_zero else 1.0
        self.prior_net = [ResidualConvCell(
            block.n_layers, width, block.mid_ratio, block.kernel_size, prior_scale, one,
            residual=False, output_ratio=2.0, keys=keys)]
        base, beta = model_cfg.distribution_base, model_cfg.gradient_smoothing_beta
        self.prior_layer = GaussianLatentLayer(width, block.latent_variates, base, beta, keys=keys)
        self.posterior_layer = GaussianLatentLayer(width, block.latent_variates, base, beta, keys=keys)
        self.z_projection = Conv2d(block.latent_variates, block.filters, 1, init_scale=stable_scale, keys=keys)
        self.use_residual_distribution = model_cfg.use_residual_distribution
        self.width = width

    def _prior(self, y):
        if self.unpool is not None:
            y = self.unpool(y)
        p = self.prior_net[0](y)
        kl_residual, y_prior = p[..., :self.width], p[..., self.width:]
        return y, kl_residual, self.prior_layer.stats(y_prior)

    def _finish(self, y, kl_residual, z):
        y = y + kl_residual
        y = y + self.z_projection(z)
        return _run(self.residual_block, y)

    def __call__(self, skip, y, noise, variate_mask=None, prior_noise=None):
        """Posterior pass with posterior eps `noise`; returns (y, posterior stats, prior stats).

        With a (V,) `variate_mask`, variates where it is 0 take the prior sample with eps `prior_noise`.
        """
        y, kl_residual, prior_stats = self._prior(y)
        y_post = self.posterior_net[0](y, skip)  # = posterior_net(concat([y, skip]))
        post_stats = self.posterior_layer.stats(y_post, prior_stats if self.use_residual_distribution else None)
        z = self.posterior_layer.sample(post_stats, noise)
        if variate_mask is not None:
            z = _apply_mask(variate_mask, z, self.prior_layer.sample(prior_stats, prior_noise))
        return self._finish(y, kl_residual, z), post_stats, prior_stats

    def sample_prior(self, y, noise, temperature=1.0, z_given=None, given_mask=None):
        """Prior pass: z from the prior (std x temperature), or `z_given` where `given_mask` is 1."""
        y, kl_residual, prior_stats = self._prior(y)
        z = self.prior_layer.sample(prior_stats, noise, temperature)
        if z_given is not None:
            z = _apply_mask(given_mask, jnp.asarray(z_given, z.dtype), z)
        return self._finish(y, kl_residual, z), z


class BottomUp(nnx.Module, pytree=False):
    """Input conv and the bottom-up levels; returns one skip per level, deepest first."""

    def __init__(self, arch, model_cfg, *, keys):
        scale = arch.stable_init_scale if model_cfg.stable_init else 1.0
        one = model_cfg.use_1x1_conv
        pre_levels, downsample = [], []
        for pre, down in arch.up_levels:
            pre_levels.append([LevelBlockUp(b, scale, one, keys=keys) for b in pre])
            downsample.append(LevelBlockUp(down, scale, one, keys=keys))
        self.levels_up = pre_levels
        self.levels_up_downsample = downsample
        self.input_conv = Conv2d(arch.input_channels, arch.input_filters, arch.input_kernel_size, keys=keys)
        self.checkpoint_blocks = False

    def __call__(self, x):
        x = self.input_conv(x)
        skips = []
        for pre, down in zip(self.levels_up, self.levels_up_downsample):
            for block in pre:
                x, _ = _call(block, self.checkpoint_blocks, x)
            x, skip = _call(down, self.checkpoint_blocks, x)
            skips.append(skip)
        return skips[::-1]


class TopDown(nnx.Module, pytree=False):
    """Learned top input `trainable_h` (1, h0, h0, C), top-down latent layers and the output conv."""

    def __init__(self, arch, model_cfg, *, keys):
        h0, c = arch.top_resolution, arch.top_filters
        bound = math.sqrt(3.0 / (c * h0 * h0))  # kaiming-uniform, gain 1, as the PyTorch model
        self.trainable_h = nnx.Param(jax.random.uniform(keys(), (1, h0, h0, c), jnp.float32, -bound, bound))
        scale = arch.stable_init_scale
        upsample, extras = [], []
        for up, more in arch.down_levels:
            upsample.append(LevelBlockDown(up, model_cfg, scale, keys=keys))
            extras.append([LevelBlockDown(b, model_cfg, scale, keys=keys) for b in more])
        self.levels_down = extras
        self.levels_down_upsample = upsample
        self.output_conv = Conv2d(arch.down_levels[-1][0].filters, arch.output_channels, arch.output_kernel_size,
                                  keys=keys)
        self.checkpoint_blocks = False

    def blocks(self):
        """LevelBlockDown modules in latent-layer order, with their level index."""
        for level, (up, more) in enumerate(zip(self.levels_down_upsample, self.levels_down)):
            yield level, up
            for block in more:
                yield level, block

    def _top(self, batch_size):
        h = self.trainable_h[...]
        return jnp.broadcast_to(h, (batch_size, *h.shape[1:]))

    def __call__(self, skips, noise, variate_masks=None, prior_noise=None):
        """Posterior pass over the skips (deepest first); returns (logits, posteriors, priors)."""
        y = self._top(skips[0].shape[0])
        posteriors, priors = [], []
        for layer, (level, block) in enumerate(self.blocks()):
            mask = None if variate_masks is None else variate_masks[layer]
            eps_prior = None if prior_noise is None else prior_noise[layer]
            y, post, prior = _call(block, self.checkpoint_blocks, skips[level], y, noise[layer], mask, eps_prior)
            posteriors.append(post)
            priors.append(prior)
        return self.output_conv(y), posteriors, priors

    def sample(self, batch_size, temperatures, noise, latents=None):
        """Prior pass. `temperatures`: one per latent layer. `latents`: per layer None or (z, mask)."""
        y = self._top(batch_size)
        zs = []
        for layer, (_, block) in enumerate(self.blocks()):
            z_given, mask = (None, None) if latents is None or latents[layer] is None else latents[layer]
            y, z = block.sample_prior(y, noise[layer], temperatures[layer], z_given, mask)
            zs.append(z)
        return self.output_conv(y), zs


def _layer_noise(key, arch, batch_size, given=None):
    """Standard normal eps (B, H, W, V) per latent layer; entries of `given` that are not None are kept."""
    layers = arch.latent_layers
    if given is not None and len(given) != len(layers):
        raise ValueError(f"noise has {len(given)} entries for {len(layers)} latent layers")
    if given is not None and all(g is not None for g in given):
        return list(given)
    if key is None:
        raise ValueError("pass key= (or noise for every latent layer) to draw the latent noise")
    keys = jax.random.split(key, len(layers))
    return [given[i] if given is not None and given[i] is not None else
            jax.random.normal(keys[i], (batch_size, b.resolution, b.resolution, b.latent_variates), jnp.float32)
            for i, b in enumerate(layers)]


class Autoencoder(nnx.Module, pytree=False):
    """Efficient-VDVAE: `bottom_up` encoder and `top_down` decoder with the PyTorch model's parameter paths."""

    def __init__(self, arch, model_cfg, *, rngs: nnx.Rngs):
        keys = ParamKeys(rngs.params())
        self.arch = arch
        self.bottom_up = BottomUp(arch, model_cfg, keys=keys)
        self.top_down = TopDown(arch, model_cfg, keys=keys)

    def __call__(self, x, variate_masks=None, noise=None, prior_noise=None, *, key=None):
        """x (B, R, R, C) -> (logits (B, R, R, K), posterior stats per layer, prior stats per layer).

        Stats are [mean, std-or-logstd], each (B, H, W, V). `noise`: posterior eps per latent layer
        (drawn from `key` where None). `variate_masks`: per layer a (V,) array or None; variates where
        it is 0 take a prior sample with eps `prior_noise` (drawn from `key`, independently of the
        posterior eps, where None).
        """
        n = self.arch.n_latent_layers
        if variate_masks is not None and len(variate_masks) != n:
            raise ValueError(f"variate_masks has {len(variate_masks)} entries for {n} latent layers")
        post_key = prior_key = None
        if key is not None:
            post_key, prior_key = jax.random.split(key)
        batch = x.shape[0]
        noise = _layer_noise(post_key, self.arch, batch, noise)
        if variate_masks is not None and any(m is not None for m in variate_masks):
            if prior_key is None and prior_noise is None:
                raise ValueError("masked variates take prior samples: pass prior_noise= or key=")
            prior_noise = _layer_noise(prior_key, self.arch, batch, prior_noise)
        return self.top_down(self.bottom_up(x), noise, variate_masks, prior_noise)

    def sample(self, batch_size, temperatures, latents=None, noise=None, *, key=None):
        """Logits (B, R, R, K) of prior samples and the z (B, H, W, V) of every layer.

        `temperatures`: one per latent layer (multiplies the prior std); `latents`: per layer None or
        (z, mask) fixing the variates where the (V,) mask is 1; `noise`: prior eps per latent layer
        (drawn from `key` where None).
        """
        n = self.arch.n_latent_layers
        if len(temperatures) != n or (latents is not None and len(latents) != n):
            raise ValueError(f"need one temperature (and latent entry) per latent layer ({n})")
        noise = _layer_noise(key, self.arch, batch_size, noise)
        return self.top_down.sample(batch_size, temperatures, noise, latents)


def build_model(config, *, seed=None):
    """The Autoencoder for a Config, initialised from `seed` (default: run.seed)."""
    seed = config.run.seed if seed is None else seed
    return Autoencoder(build_architecture(config.model, config.data), config.model, rngs=nnx.Rngs(params=seed))


def model_params(model):
    """The model's parameters as a nested dict (paths as in the nnx state, list indices as ints)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def load_params(model, params):
    """Set the model's parameters from a nested dict of arrays with exactly its paths and shapes."""
    state = nnx.state(model, nnx.Param)
    own = dict(nnx.to_flat_state(state))
    given = {tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path): v
             for path, v in _flatten(params)}
    name = lambda p: "/".join(map(str, p))
    missing = [name(p) for p in own if p not in given]
    unexpected = [name(p) for p in given if p not in own]
    mismatched = [f"{name(p)} {tuple(jnp.shape(v))} vs {tuple(own[p].shape)}" for p, v in given.items()
                  if p in own and tuple(jnp.shape(v)) != tuple(own[p].shape)]
    if missing or unexpected or mismatched:
        raise ValueError("parameters do not match the model: " + "; ".join(
            f"{what}: {', '.join(items[:3])}" for what, items in
            (("shape mismatch (given vs model)", mismatched), ("missing", missing), ("unexpected", unexpected))
            if items))
    for path, value in given.items():
        own[path].set_value(jnp.asarray(value, own[path].dtype))
    nnx.update(model, state)


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v
