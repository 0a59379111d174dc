"""JAX losses and samplers vs the original's reference vectors and the independent NumPy reference."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_vdvae_jax.model import losses, sampling
from tests import numpy_reference as ref
from tests.conftest import REFERENCE, egs_config


VECTORS = REFERENCE / "loss_vectors"
MOL_FILES = ["mol_8bit_std", "mol_5bit_std", "mol_8bit_logstd", "mol_8bit_logstd_beta1"]
BETA_LN2 = 0.6931472


def nhwc(a):
    return jnp.asarray(np.moveaxis(np.asarray(a), 1, -1))


def load_vectors(name):
    data = np.load(VECTORS / f"{name}.npz")
    return data, json.loads(str(data["config_json"]))


def mol_kwargs(config):
    return dict(num_bits=config["data.num_bits"], num_mixtures=config["model.num_output_mixtures"],
                distribution_base=config["model.output_distribution_base"],
                beta=config["model.output_gradient_smoothing_beta"], min_log_scale=config["loss.min_mol_logscale"])


def with_values(cfg, **values):
    """Copy of cfg with 'section__key=value' replacements (no re-validation)."""
    by_section = {}
    for name, value in values.items():
        section, key = name.split("__")
        by_section.setdefault(section, {})[key] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in by_section.items()})


# ---------------------------------------------------------------- reference vectors of the original code

@pytest.mark.parametrize("name", MOL_FILES)
def test_mol_reference_vectors(name):
    """Our layout = torch's: the NCHW logits transposed to NHWC (not the original JAX `logits_nhwc`)."""
    data, config = load_vectors(name)
    kwargs = mol_kwargs(config)
    dims = config["data.target_res"] ** 2 * config["data.channels"]
    logits, targets = nhwc(data["logits_nchw"]), nhwc(data["targets_nchw"])

    def loss_fn(lg):
        nll = losses.mol_nll(lg, targets, **kwargs)
        return nll.sum() / (4 * dims), nll

    (loss, nll), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(logits)
    np.testing.assert_allclose(float(loss), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(nll.sum(axis=(1, 2)), data["per_example_nll_nats"], rtol=1e-5)
    np.testing.assert_allclose(nll, data["pixel_nll_nats_bhw"], atol=1e-3)
    grad_ref = np.moveaxis(data["grad_logits_nchw"], 1, -1)
    assert np.all(np.abs(np.asarray(grad) - grad_ref) <= 1e-3 * np.abs(grad_ref) + 5e-4)


def test_mol_grayscale_matches_numpy_reference():
    rng = np.random.default_rng(0)
    m, b, h, w = 3, 2, 5, 6
    pixels = rng.integers(0, 256, (b, 1, h, w))
    pixels[0, :, 0, :2] = [0, 255]
    targets = (pixels - 127.5) / 127.5
    logits = rng.normal(0, 1, (b, 4 * m, h, w))
    logits[:, m:2 * m] = targets + rng.normal(0, 0.05, (b, m, h, w))  # means near the targets
    logits[:, 2 * m:3 * m] = rng.uniform(-6, 1, (b, m, h, w))
    kwargs = dict(num_bits=8.0, num_mixtures=m, distribution_base="std", beta=BETA_LN2, min_log_scale=-250.0)
    expected = ref.mol_nll(logits, targets, **kwargs)
    got = losses.mol_nll(nhwc(logits.astype(np.float32)), nhwc(targets.astype(np.float32)), **kwargs)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got.sum(), expected.sum(), rtol=1e-5)


def test_mol_rejects_bad_shapes():
    kwargs = dict(num_bits=8., num_mixtures=3, distribution_base="std", beta=1., min_log_scale=-250.)
    with pytest.raises(ValueError, match="num_mixtures"):
        losses.mol_nll(jnp.zeros((1, 2, 2, 11)), jnp.zeros((1, 2, 2, 1)), **kwargs)
    with pytest.raises(ValueError, match="targets"):
        losses.mol_nll(jnp.zeros((1, 2, 2, 30)), jnp.zeros((1, 2, 2, 1)), **kwargs)


def test_bernoulli_reference_vectors():
    data, _ = load_vectors("bernoulli")
    logits, targets = nhwc(data["logits_nchw"]), nhwc(data["targets_nchw"])
    nll = losses.bernoulli_nll(logits, targets)
    assert nll.shape == (4, 28, 28)
    np.testing.assert_allclose(float(nll.sum() / (4 * 784)), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(nll.sum(axis=(1, 2)), data["per_example_nll_nats"], rtol=1e-5)
    grad = np.asarray(jax.grad(lambda lg: losses.bernoulli_nll(lg, targets).sum() / (4 * 784))(logits))
    grad_ref = np.moveaxis(data["grad_logits_nchw"], 1, -1)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6 * np.abs(grad_ref).max())
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(grad[:, border] == 0)


@pytest.mark.parametrize("base", ["std", "logstd"])
def test_kl_reference_vectors(base):
    """'logstd' equals the PyTorch original (β in the log term), not the original JAX's `jax_loss`."""
    data, config = load_vectors(f"kl_{base}")
    names = ["p_mean", f"p_{base}", "q_mean", f"q_{base}"]
    inputs = [nhwc(data[f"{n}_nchw"]) for n in names]
    beta = config["model.gradient_smoothing_beta"]

    def loss_fn(*args):
        kl = losses.gaussian_kl(args[:2], args[2:], distribution_base=base, beta=beta)
        return kl.sum() / (4 * 3072), kl

    (loss, kl), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3), has_aux=True)(*inputs)
    np.testing.assert_allclose(float(loss), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(kl.sum(axis=(1, 2, 3)), data["per_example_kl_nats"], rtol=1e-5)
    np.testing.assert_allclose(float(kl.sum()) / (4 * 8 * 4 * 4 * math.log(2)), data["avg_bits"], rtol=1e-5)
    for grad, name in zip(grads, names):
        grad_ref = np.moveaxis(data[f"grad_{name}_nchw"], 1, -1)
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6 * np.abs(grad_ref).max())
    if base == "logstd":
        assert abs(float(loss) - data["jax_loss"]) > 1e-4  # the original JAX's missing β


# ---------------------------------------------------------------- vae_objective

@pytest.fixture(scope="module")
def cifar_cfg():
    return with_values(egs_config("cifar10_baseline"), data__target_res=4, model__num_output_mixtures=2,
                       loss__variation_schedule="Linear", loss__vae_beta_anneal_start=21,
                       loss__vae_beta_anneal_steps=5000, loss__vae_beta_min=1e-4, loss__use_gamma_schedule=True,
                       loss__gamma_max_steps=10000, loss__scaled_gamma=True, model__distribution_base="std",
                       model__gradient_smoothing_beta=BETA_LN2, model__output_distribution_base="std",
                       model__output_gradient_smoothing_beta=BETA_LN2, loss__min_mol_logscale=-250.0)


def objective_inputs(seed=0, shapes=((2, 4, 1, 1), (2, 4, 2, 2), (2, 4, 4, 4))):
    """NumPy MoL logits/targets (NCHW, 4x4, M = 2) and stats of latent layers of (B, V, H, W) shapes."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (2, 20, 4, 4)).astype(np.float32)
    targets = ((rng.integers(0, 256, (2, 3, 4, 4)) - 127.5) / 127.5).astype(np.float32)
    posts, priors = [], []
    for shape in shapes:
        p_mean, q_mean, p_s, q_s = rng.normal(0, 1, (4, *shape)).astype(np.float32)
        posts.append([p_mean, np.exp(p_s)])
        priors.append([q_mean, np.exp(q_s)])
    return logits, targets, posts, priors


def as_jax(logits, targets, posts, priors):
    def stats(s):
        return [[nhwc(t) for t in pair] for pair in s]
    return nhwc(logits), nhwc(targets), stats(posts), stats(priors)


def numpy_kls(posts, priors):
    return [ref.gaussian_kl(*p, *q, distribution_base="std", beta=BETA_LN2) for p, q in zip(posts, priors)]


@pytest.mark.parametrize("scaled", [True, False])
def test_objective_gamma_balancing(cifar_cfg, scaled):
    cfg = with_values(cifar_cfg, loss__scaled_gamma=scaled)
    inputs = objective_inputs()
    logits, targets, posts, priors = as_jax(*inputs)
    beta = 2500 / 5021

    def loss_fn(posts):
        out = losses.vae_objective(logits, targets, posts, priors, cfg, beta=beta, gamma_on=True, batch_size=2)
        return out.loss, out

    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(posts)
    pixel_nll = ref.mol_nll(inputs[0], inputs[1], num_bits=8., num_mixtures=2, distribution_base="std",
                            beta=BETA_LN2, min_log_scale=-250.)
    expected, per_dim, per_latent, ref_weights = ref.vae_loss(
        pixel_nll, numpy_kls(inputs[2], inputs[3]), batch_size=2, effective_pixels=48, beta=beta,
        gamma="scaled" if scaled else "unscaled")
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-5)
    np.testing.assert_allclose(out.gamma_weights, ref_weights, rtol=1e-5)
    assert float(out.gamma_weights.sum()) == pytest.approx(3.0, rel=1e-6)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim, per_dim, rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent, per_latent / math.log(2), rtol=1e-5)
    np.testing.assert_allclose(float(out.kl_nats_per_dim), per_dim.sum(), rtol=1e-5)  # true KL, not weighted
    np.testing.assert_allclose(float(out.kl_loss_nats_per_dim), np.sum(ref_weights * per_dim), rtol=1e-5)
    assert out.effective_pixels == 48 and not out.binarized

    # gradients treat the weights as constants
    weights = out.gamma_weights

    def weighted(posts):
        kls = [losses.gaussian_kl(p, q, distribution_base="std", beta=BETA_LN2).sum() / 96
               for p, q in zip(posts, priors)]
        return beta * sum(w * kl for w, kl in zip(weights, kls))
    expected_grads = jax.grad(weighted)(posts)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_objective_traced_schedule_values_do_not_retrace(cifar_cfg):
    """beta and gamma_on are traced: one compilation serves every step, equal to the host-side values."""
    from efficient_vdvae_core.schedules import gamma_active, kl_beta
    logits, targets, posts, priors = as_jax(*objective_inputs(seed=3))

    @jax.jit
    def objective(beta, gamma_on):
        return losses.vae_objective(logits, targets, posts, priors, cifar_cfg, beta=beta, gamma_on=gamma_on,
                                    batch_size=2)

    for step, beta in [(0, 1e-4), (10001, 1.0), (5041, 5020 / 5021)]:
        out = objective(kl_beta(step, cifar_cfg.loss), gamma_active(step, cifar_cfg.loss))
        eager = losses.vae_objective(logits, targets, posts, priors, cifar_cfg, beta=beta,
                                     gamma_on=step <= 10000, batch_size=2)
        assert float(out.beta) == pytest.approx(beta, rel=1e-6)
        np.testing.assert_allclose(float(out.loss), float(eager.loss), rtol=1e-6)
        if step > 10000:
            assert np.all(np.asarray(out.gamma_weights) == 1.0)
            np.testing.assert_allclose(float(out.kl_loss_nats_per_dim), float(out.kl_nats_per_dim), rtol=1e-6)
        kl_term = out.kl_loss_nats_per_dim
        assert float(out.loss) == pytest.approx(float(out.recon_nats_per_dim) + beta * float(kl_term), rel=1e-5)
    assert objective._cache_size() == 1


def test_objective_gamma_stats_reduce_is_applied(cifar_cfg):
    logits, targets, posts, priors = as_jax(*objective_inputs(seed=4))
    fixed = jnp.asarray([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    out = losses.vae_objective(logits, targets, posts, priors, cifar_cfg, beta=1.0, gamma_on=True, batch_size=2,
                               gamma_stats_reduce=lambda local: fixed)
    np.testing.assert_allclose(out.gamma_weights, [0.75, 0.75, 1.5], rtol=1e-6)  # scaled: row 1


def test_objective_masks_drop_kl_of_masked_variates(cifar_cfg):
    inputs = objective_inputs(seed=5)
    logits, targets, posts, priors = as_jax(*inputs)
    masks = [jnp.asarray([1., 0., 1., 0.]), None, jnp.asarray([True, True, False, False])]
    out = losses.vae_objective(logits, targets, posts, priors, cifar_cfg, beta=1.0, gamma_on=False, batch_size=2,
                               variate_masks=masks)
    np_masks = [[1, 0, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    _, per_dim, per_latent, _ = ref.vae_loss(np.zeros(1), numpy_kls(inputs[2], inputs[3]), batch_size=2,
                                             effective_pixels=48, beta=1.0, masks=np_masks)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim, per_dim, rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent, per_latent / math.log(2), rtol=1e-5)


def test_objective_binarized_reports_nats_per_image():
    data, _ = load_vectors("bernoulli")
    cfg = with_values(egs_config("binarized_mnist_baseline"), model__distribution_base="std",
                      model__gradient_smoothing_beta=BETA_LN2)
    _, _, posts, priors = as_jax(*objective_inputs(seed=1, shapes=[(4, 3, 2, 2)]))
    out = losses.vae_objective(nhwc(data["logits_nchw"]), nhwc(data["targets_nchw"]), posts, priors, cfg,
                               beta=1.0, gamma_on=False, batch_size=4)
    assert out.binarized and out.effective_pixels == 784
    report = losses.report_units(out)
    assert report.units == "nats/image"
    np.testing.assert_allclose(float(report.recon), data["avg_nats_per_image"], rtol=1e-5)
    kl_nats = float(sum(losses.gaussian_kl(p, q, distribution_base="std", beta=BETA_LN2).sum()
                        for p, q in zip(posts, priors)))
    np.testing.assert_allclose(float(report.kl), kl_nats / 4, rtol=1e-5)
    np.testing.assert_allclose(report.nelbo_per_example, out.recon_per_example_nats + out.kl_per_example_nats,
                               rtol=1e-5)


# ---------------------------------------------------------------- output samplers

MOL = dict(num_bits=8.0, num_mixtures=3, distribution_base="std", beta=BETA_LN2, min_log_scale=-250.0)


@pytest.mark.parametrize("channels,num_bits", [(3, 8.0), (1, 5.0)])
def test_mol_samples_shapes_range_and_keys(channels, num_bits):
    logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 6, 3 * (3 * channels + 1)))
    kwargs = dict(MOL, num_bits=num_bits, temperature=1.0)
    a = sampling.sample_mol(logits, jax.random.key(1), **kwargs)
    assert a.shape == (2, 5, 6, channels)
    low, high = losses.pixel_range(num_bits)
    assert float(a.min()) >= np.float32(low) and float(a.max()) <= np.float32(high)
    assert jnp.array_equal(a, sampling.sample_mol(logits, jax.random.key(1), **kwargs))
    assert not jnp.array_equal(a, sampling.sample_mol(logits, jax.random.key(2), **kwargs))


def test_mol_zero_temperature_gives_the_best_component_mean():
    logits = np.asarray(jax.random.normal(jax.random.key(3), (1, 2, 2, 30)))
    out = sampling.sample_mol(jnp.asarray(logits), jax.random.key(0), **MOL, temperature=0.0)
    best = logits[..., :3].argmax(-1)
    params = logits[..., 3:].reshape(1, 2, 2, 3, 9)
    mean = np.take_along_axis(params[..., :3], best[..., None, None], -1)[..., 0]
    coeff = np.tanh(np.take_along_axis(params[..., 6:], best[..., None, None], -1)[..., 0])
    x0 = np.clip(mean[..., 0], -1, 1)
    x1 = np.clip(mean[..., 1] + coeff[..., 0] * x0, -1, 1)
    x2 = np.clip(mean[..., 2] + coeff[..., 1] * x0 + coeff[..., 2] * x1, -1, 1)
    np.testing.assert_allclose(out, np.stack([x0, x1, x2], -1), rtol=1e-6, atol=1e-6)


def test_bernoulli_samples_and_output_samples():
    config = egs_config("tiny_binarized")
    logits = jnp.full((3, 32, 32, 1), -30.0).at[:, 2:30, 2:30].set(30.0).at[:, 10, 10].set(-30.0)
    draws = sampling.output_samples(logits, config, jax.random.key(0))
    assert draws.shape == (3, 28, 28, 1)
    expected = np.ones((3, 28, 28, 1))
    expected[:, 8, 8] = 0
    assert np.array_equal(np.asarray(draws), expected)
    probs = sampling.bernoulli_probs(jnp.zeros((1, 32, 32, 1)), temperature=0.5)
    assert probs.shape == (1, 28, 28, 1) and np.allclose(probs, 0.5)
    half = sampling.sample_bernoulli(jnp.zeros((4, 32, 32, 1)), jax.random.key(1))
    assert set(np.unique(np.asarray(half))) == {0.0, 1.0}
    rgb = sampling.output_samples(jnp.zeros((2, 32, 32, 30)), egs_config("tiny"), jax.random.key(0),
                                  temperature=0.0)
    assert rgb.shape == (2, 32, 32, 3)
