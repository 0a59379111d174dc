"""The JAX model: parameter paths/shapes/counts vs the PyTorch reference listings, init, forward/backward, sampling."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.params import jax_to_torch_key
from efficient_vdvae_jax.model.autoencoder import (
    Autoencoder,
    build_model,
    load_params,
    model_params,
)
from efficient_vdvae_jax.model.layers import (
    Conv2d,
    ParamKeys,
    ResidualConvCell,
    same_padding,
)
from efficient_vdvae_jax.summary import abstract_params
from tests.conftest import EGS, egs_config


def _reference_counts(reference_dir):
    rows = {}
    for line in (reference_dir / "param_counts.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, _, params, tensors = [x.strip() for x in line.split("|")]
            rows[name] = (int(params), int(tensors))
    return rows


@functools.cache
def _abstract(arch, use_1x1_conv):
    """[(path, shape)] of the JAX model (abstract evaluation; depends on the shapes only)."""
    config = egs_config("tiny", f"model.use_1x1_conv={use_1x1_conv}")
    return abstract_params(arch, config.model)


def _abstract_of(name):
    config = egs_config(name)
    return _abstract(build_architecture(config.model, config.data), config.model.use_1x1_conv)


def test_parameter_counts_of_every_egs_config(reference_dir):
    counts = _reference_counts(reference_dir)
    assert len(counts) == 20
    for name, (n_params, n_tensors) in counts.items():
        params = _abstract_of(name)
        assert (sum(math.prod(s) for _, s in params), len(params)) == (n_params, n_tensors), name


@pytest.mark.parametrize("name", ["cifar10_baseline", "binarized_mnist_baseline"])
def test_parameters_mirror_the_torch_state_dict(reference_dir, name):
    """Every JAX path is the torch name split at '.', kernels HWIO, scale_bias/trainable_h channels-last."""
    ref = [line.rsplit(" (", 1) for line in (reference_dir / f"torch_state_dict_{name}.txt").read_text().splitlines()
           if line and not line.startswith("#")]
    ref = {n: tuple(int(d) for d in s.rstrip(",)").split(",")) for n, s in ref}
    ours = dict(jax_to_torch_key(path, shape) for path, shape in _abstract_of(name))
    assert ours == ref


def test_summary_command_prints_parameter_count(capsys):
    from efficient_vdvae_core.cli import run_main
    from efficient_vdvae_jax.summary import main, parser
    run_main(main, ["--config", str(EGS / "binarized_mnist_baseline.cfg")], parser=parser())
    assert capsys.readouterr().out.strip().splitlines()[-1] == "trainable parameters: 69919585"
    run_main(main, ["--config", str(EGS / "tiny.cfg"), "--keys"], parser=parser())
    lines = capsys.readouterr().out.strip().splitlines()
    assert "top_down/levels_down_upsample/1/unpool/scale_bias (1, 4, 4, 16)" in lines
    assert "bottom_up/levels_up/0/0/residual_block/0/convs/1/kernel (1, 1, 16, 8)" in lines


@pytest.fixture(scope="module")
def tiny():
    config = egs_config("tiny")
    return config, build_model(config)


def _noise(arch, batch, seed=0):
    keys = jax.random.split(jax.random.key(seed), arch.n_latent_layers)
    return [jax.random.normal(k, (batch, b.resolution, b.resolution, b.latent_variates))
            for k, b in zip(keys, arch.latent_layers)]


def test_forward_backward_tiny(tiny):
    _, model = tiny
    arch = model.arch
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)

    def loss_fn(m):
        logits, posts, priors = m(x, key=jax.random.key(2))
        loss = jnp.mean(logits ** 2) + sum(jnp.mean(p[0] ** 2) + jnp.mean(q[1]) for p, q in zip(posts, priors))
        return loss, (logits, posts, priors)

    (_, (logits, posts, priors)), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    assert logits.shape == (4, 32, 32, arch.output_channels)
    assert len(posts) == len(priors) == arch.n_latent_layers
    for block, post, prior in zip(arch.latent_layers, posts, priors):
        shape = (4, block.resolution, block.resolution, block.latent_variates)
        assert post[0].shape == post[1].shape == prior[0].shape == shape
        assert (post[1] > 0).all()  # 'std' base
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert len(leaves) == len(jax.tree.leaves(model_params(model)))
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)


def test_noise_key_and_masks(tiny):
    _, model = tiny
    arch = model.arch
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    noise = _noise(arch, 2)
    a = model(x, noise=noise, key=jax.random.key(0))[0]
    assert jnp.array_equal(a, model(x, noise=noise)[0])  # injected noise: no key needed
    ones = [jnp.ones(blk.latent_variates) for blk in arch.latent_layers]
    np.testing.assert_allclose(model(x, ones, noise, key=jax.random.key(3))[0], a, rtol=1e-6, atol=1e-6)
    zeros = [jnp.zeros(blk.latent_variates) for blk in arch.latent_layers]
    c = model(x, zeros, noise, key=jax.random.key(3))[0]
    d = model(x, zeros, noise, key=jax.random.key(4))[0]
    assert not jnp.allclose(c, a) and not jnp.allclose(c, d)  # prior samples, drawn from the key
    # noise drawn from the key: reproducible per key
    e = model(x, key=jax.random.key(7))[0]
    assert jnp.array_equal(e, model(x, key=jax.random.key(7))[0]) and not jnp.allclose(e, a)
    with pytest.raises(ValueError, match="key"):
        model(x)
    with pytest.raises(ValueError, match="key"):
        model(x, zeros, noise)


def test_prior_sampling_and_binarized_forward(tiny):
    _, model = tiny
    n = model.arch.n_latent_layers
    logits, zs = model.sample(3, [0.5] * n, key=jax.random.key(0))
    assert logits.shape == (3, 32, 32, model.arch.output_channels) and len(zs) == n
    cold, _ = model.sample(3, [0.0] * n, key=jax.random.key(1))
    assert jnp.allclose(cold, model.sample(3, [0.0] * n, key=jax.random.key(2))[0])
    # given latents with a full mask fix every z
    latents = [(z, jnp.ones(z.shape[-1])) for z in zs]
    again, zs2 = model.sample(3, [1.0] * n, latents, key=jax.random.key(9))
    assert all(jnp.allclose(a, b) for a, b in zip(zs, zs2))
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-5)

    config = egs_config("tiny_binarized")
    arch = build_architecture(config.model, config.data)
    binarized = nnx.eval_shape(lambda: Autoencoder(arch, config.model, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m(x, key=jax.random.key(0)), binarized, jnp.zeros((2, 32, 32, 1)))
    assert out[0].shape == (2, 32, 32, 1)


def test_load_params_checks_paths_and_shapes(tiny):
    _, model = tiny
    params = model_params(model)
    params["top_down"]["output_conv"]["bias"] = jnp.zeros(7)
    with pytest.raises(ValueError, match="output_conv/bias"):
        load_params(model, params)
    del params["top_down"]["output_conv"]["bias"]
    with pytest.raises(ValueError, match="missing"):
        load_params(model, params)


def test_same_padding_matches_torch():
    """Total k - s per axis, the odd pixel on the low side (PyTorch model's explicit pad)."""
    assert same_padding((3, 3), (1, 1)) == ((1, 1), (1, 1))
    assert same_padding((2, 4), (1, 1)) == ((1, 0), (2, 1))
    assert same_padding((4, 4), (4, 4)) == ((0, 0), (0, 0))
    conv = Conv2d(1, 1, 2, keys=ParamKeys(jax.random.key(0)))
    conv.kernel[...] = jnp.ones((2, 2, 1, 1))
    conv.bias[...] = jnp.zeros(1)
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    # padded top/left: output (i, j) sums rows i-1..i, cols j-1..j
    assert conv(x)[0, :, :, 0].tolist() == [[0, 1, 3], [3, 8, 12], [9, 20, 24]]


def _glorot_std(kernel):
    kh, kw, cin, cout = kernel.shape
    return math.sqrt(2.0 / (kh * kw * (cin + cout)))


def test_initialisation_statistics():
    """The original's init: stable-scaled last convs and z projections, zero biases, default-init first convs."""
    keys = ParamKeys(jax.random.key(0))
    s = math.sqrt(1 / 47)
    cell = ResidualConvCell(2, 384, 0.25, 3, s, True, keys=keys)
    last = cell.convs[7].kernel[...]
    assert float(last.std()) == pytest.approx(s * _glorot_std(last), rel=0.05)
    mid = cell.convs[3].kernel[...]
    assert float(mid.std()) == pytest.approx(_glorot_std(mid), rel=0.05)
    first, first_bias = cell.convs[1].kernel[...], cell.convs[1].bias[...]
    bound = 1 / math.sqrt(384)
    assert float(jnp.abs(first).max()) <= bound and float(first.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert float(jnp.abs(first_bias).max()) <= bound and float(jnp.abs(first_bias).sum()) > 0
    assert all(float(jnp.abs(cell.convs[i].bias[...]).sum()) == 0 for i in (3, 5, 7))
    zero = ResidualConvCell(1, 64, 0.5, 3, 0.0, True, residual=False, output_ratio=2.0, keys=keys)
    assert float(jnp.abs(zero.convs[-1].kernel[...]).sum()) == 0


def test_model_initialisation(tiny):
    config, model = tiny
    s = model.arch.stable_init_scale
    params = model_params(model)
    z = params["top_down"]["levels_down_upsample"][4]["z_projection"]["kernel"]
    assert float(jnp.abs(z).max()) <= s * math.sqrt(6 / (8 + 16)) and float(jnp.abs(z).max()) > 0
    h = params["top_down"]["trainable_h"]
    assert h.shape == (1, 1, 1, 16) and 0 < float(jnp.abs(h).max()) <= math.sqrt(3 / 16)
    unpool = params["top_down"]["levels_down_upsample"][1]["unpool"]["scale_bias"]
    assert unpool.shape == (1, 4, 4, 16) and float(jnp.abs(unpool).sum()) == 0
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "bias" and path[-2] != 1:  # every bias except the cells' first convs
            assert float(jnp.abs(leaf[...]).sum()) == 0, path
    same = build_model(config)
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(model_params(same))))
    other = model_params(build_model(config, seed=1))
    assert not jnp.array_equal(h, other["top_down"]["trainable_h"])


def test_prior_zero_init_and_no_stable_init():
    config = egs_config("tiny", "model.initialize_prior_weights_as_zero=True", "model.stable_init=False")
    model = build_model(config)
    for _, block in model.top_down.blocks():
        assert float(jnp.abs(block.prior_net[0].convs[-1].kernel[...]).sum()) == 0
        assert float(jnp.abs(block.posterior_net[0].convs[-1].kernel[...]).sum()) > 0


def test_activation_checkpointing_changes_no_value_or_gradient():
    """[train] activation_checkpointing recomputes the blocks in backward (nnx.remat): same loss, same gradients."""
    config = egs_config("tiny")
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
    results = []
    for checkpointing in (False, True):
        model = build_model(config)
        model.bottom_up.checkpoint_blocks = model.top_down.checkpoint_blocks = checkpointing

        def loss(params, graphdef, rest):
            logits, posteriors, _ = nnx.merge(graphdef, params, rest)(x, key=jax.random.key(1))
            return jnp.mean(logits ** 2) + sum(jnp.mean(p[0] ** 2) for p in posteriors)

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        step = jax.value_and_grad(loss)
        assert ("remat" in str(jax.make_jaxpr(step, static_argnums=(1,))(params, graphdef, rest))) == checkpointing
        results.append(jax.jit(step, static_argnums=(1,))(params, graphdef, rest))
    (value, grads), (value_ckpt, grads_ckpt) = results
    np.testing.assert_allclose(value_ckpt, value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_ckpt), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
