"""Torch losses vs an independent NumPy reference and vs test vectors of the original code."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from efficient_vdvae_core.config import load_config
from efficient_vdvae_torch.model import losses
from tests import numpy_reference as ref
from tests.conftest import REFERENCE, at_step

EGS = Path(__file__).resolve().parents[2] / "egs"
VECTORS = REFERENCE / "loss_vectors"
MOL_FILES = ["mol_8bit_std", "mol_5bit_std", "mol_8bit_logstd", "mol_8bit_logstd_beta1"]
BETA_LN2 = 0.6931472


def egs_config(name):
    """A shipped config, egs/<name>.cfg."""
    return load_config(EGS / f"{name}.cfg")[0]


def with_values(cfg, **values):
    """Copy of cfg with 'section__key=value' replacements (no re-validation)."""
    by_section = {}
    for name, value in values.items():
        section, key = name.split("__")
        by_section.setdefault(section, {})[key] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in by_section.items()})


def load_vectors(name):
    data = np.load(VECTORS / f"{name}.npz")
    return data, json.loads(str(data["config_json"]))


def mol_kwargs(config):
    return dict(num_bits=config["data.num_bits"], num_mixtures=config["model.num_output_mixtures"],
                distribution_base=config["model.output_distribution_base"],
                beta=config["model.output_gradient_smoothing_beta"], min_log_scale=config["loss.min_mol_logscale"])


# ---------------------------------------------------------------- random MoL cases vs NumPy reference

def make_mol_case(seed, num_bits, channels, distribution_base, beta=BETA_LN2, mixtures=3, shape=(3, 5, 6)):
    """Grid targets (float64) with forced edge pixels, and logits covering all four branches."""
    rng = np.random.default_rng(seed)
    b, h, w = shape
    pixels = rng.integers(0, 256, (b, channels, h, w))
    pixels[rng.random(pixels.shape) < 0.1] = 0
    pixels[rng.random(pixels.shape) < 0.1] = 255
    pixels[0, :, 0, 0], pixels[0, :, 0, 1] = 0, 255
    step = 2 ** (8 - num_bits)
    targets = (np.floor(pixels / step) * step - 127.5) / 127.5
    logits = np.empty((b, mixtures * (3 * channels + 1), h, w))
    logits[:, :mixtures] = rng.normal(0, 1.5, (b, mixtures, h, w))
    params = logits[:, mixtures:].reshape(b, channels, 3 * mixtures, h, w)
    x = np.repeat(targets[:, :, None], mixtures, axis=2)
    params[:, :, :mixtures] = x + rng.normal(0, 0.05, x.shape) * (rng.random(x.shape) < 0.5) \
        + rng.uniform(-1, 1, x.shape) * (rng.random(x.shape) < 0.3)
    scales = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), x.shape))
    scales[rng.random(x.shape) < 0.05] = 3e3
    if distribution_base == "std":
        params[:, :, mixtures:2 * mixtures] = scales + np.log(-np.expm1(-beta * scales)) / beta  # inverse softplus
    else:
        params[:, :, mixtures:2 * mixtures] = np.log(scales) / beta
    params[:, :, 2 * mixtures:] = rng.normal(0, 1, x.shape)
    logits[:, mixtures:] = params.reshape(b, -1, h, w)
    kwargs = dict(num_bits=float(num_bits), num_mixtures=mixtures, distribution_base=distribution_base, beta=beta,
                  min_log_scale=-14.0 if num_bits == 5 else -250.0)
    return logits, targets, kwargs


MOL_CASES = [(bits, base, c) for bits in (8, 5) for base in ("std", "logstd") for c in (3, 1)]


@pytest.mark.parametrize("bits,base,channels", MOL_CASES)
def test_mol_matches_numpy_reference(bits, base, channels):
    logits, targets, kwargs = make_mol_case(100 * bits + channels, bits, channels, base)
    expected = ref.mol_nll(logits, targets, **kwargs)
    _, expected_branches = ref.mol_log_probs(logits, targets, **kwargs)
    assert set(np.unique(expected_branches)) == {0, 1, 2, 3}

    got64 = losses.mol_nll(torch.tensor(logits), torch.tensor(targets), **kwargs).numpy()
    np.testing.assert_allclose(got64, expected, rtol=1e-9, atol=1e-8)
    branches = losses.mol_branches(torch.tensor(logits), torch.tensor(targets), **kwargs).numpy()
    np.testing.assert_array_equal(branches, expected_branches)

    logits32 = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    targets32 = torch.tensor(targets, dtype=torch.float32)
    got32 = losses.mol_nll(logits32, targets32, **kwargs)
    np.testing.assert_allclose(got32.detach().sum(dim=(1, 2)).numpy(), expected.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(got32.detach().numpy(), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(losses.mol_branches(logits32, targets32, **kwargs).numpy(), expected_branches)
    got32.sum().backward()
    assert torch.isfinite(logits32.grad).all()


def test_mol_grayscale_ignores_coefficient_slots():
    logits, targets, kwargs = make_mol_case(7, 8, 1, "std")
    changed = logits.copy()
    changed[:, kwargs["num_mixtures"] + 2 * kwargs["num_mixtures"]:] += 3.0  # the unused coefficient slots
    a = losses.mol_nll(torch.tensor(logits), torch.tensor(targets), **kwargs)
    b = losses.mol_nll(torch.tensor(changed), torch.tensor(targets), **kwargs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mol_5bit_top_value_is_max_branch():
    _, max_pix = losses.pixel_range(5)
    assert max_pix == pytest.approx(0.9450980392156862, abs=1e-15)
    logits, _, kwargs = make_mol_case(3, 5, 3, "std", shape=(1, 2, 2))
    targets = torch.full((1, 3, 2, 2), max_pix, dtype=torch.float32)
    logits = torch.tensor(logits, dtype=torch.float32)
    assert (losses.mol_branches(logits, targets, **kwargs) == losses.BRANCH_MAX).all()
    targets = torch.ones(1, 3, 2, 2)  # 1.0 is not the 5-bit top value: interior
    assert (losses.mol_branches(logits, targets, **kwargs) >= 2).all()


def test_mol_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num_mixtures"):
        losses.mol_nll(torch.zeros(1, 11, 2, 2), torch.zeros(1, 1, 2, 2), num_bits=8., num_mixtures=3,
                       distribution_base="std", beta=1., min_log_scale=-250.)
    with pytest.raises(ValueError, match="targets"):
        losses.mol_nll(torch.zeros(1, 30, 2, 2), torch.zeros(1, 1, 2, 2), num_bits=8., num_mixtures=3,
                       distribution_base="std", beta=1., min_log_scale=-250.)


def test_bernoulli_and_kl_match_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, (2, 1, 32, 32))
    targets = (rng.random((2, 1, 32, 32)) < 0.5).astype(np.float64)
    got = losses.bernoulli_nll(torch.tensor(logits), torch.tensor(targets)).numpy()
    assert got.shape == (2, 28, 28)
    np.testing.assert_allclose(got, ref.bernoulli_nll(logits, targets), rtol=1e-12, atol=1e-12)
    p_mean, q_mean, p_s, q_s = rng.normal(0, 1, (4, 2, 3, 4, 4))
    for base in ("std", "logstd"):
        if base == "std":
            p_s, q_s = np.exp(p_s), np.exp(q_s)
        got = losses.gaussian_kl([torch.tensor(p_mean), torch.tensor(p_s)], [torch.tensor(q_mean), torch.tensor(q_s)],
                                 distribution_base=base, beta=BETA_LN2).numpy()
        expected = ref.gaussian_kl(p_mean, p_s, q_mean, q_s, distribution_base=base, beta=BETA_LN2)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- reference vectors of the original code

@pytest.mark.parametrize("name", MOL_FILES)
def test_mol_reference_vectors(name):
    data, config = load_vectors(name)
    kwargs = mol_kwargs(config)
    n_batch = config["global_batch_size"]
    dims = config["data.target_res"] ** 2 * config["data.channels"]
    logits = torch.tensor(data["logits_nchw"], requires_grad=True)
    targets = torch.tensor(data["targets_nchw"])
    nll = losses.mol_nll(logits, targets, **kwargs)
    loss = nll.sum() / (n_batch * dims)
    loss.backward()
    np.testing.assert_allclose(loss.item(), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(loss.item(), data["jax_loss"], rtol=1e-5)
    per_example = nll.detach().sum(dim=(1, 2)).numpy()
    np.testing.assert_allclose(per_example, data["per_example_nll_nats"], rtol=1e-5)
    avg_bits_per_dim = (per_example / dims).sum() / (n_batch * math.log(2))
    np.testing.assert_allclose(avg_bits_per_dim, data["avg_bits_per_dim"], rtol=1e-5)
    np.testing.assert_allclose(nll.detach().numpy(), data["pixel_nll_nats_bhw"], atol=1e-3)
    np.testing.assert_array_equal(losses.mol_branches(logits, targets, **kwargs).numpy(), data["branch_bcmhw"])
    grad, grad_ref = logits.grad.numpy(), data["grad_logits_nchw"]
    assert np.all(np.abs(grad - grad_ref) <= 1e-3 * np.abs(grad_ref) + 5e-4)

    # float64 run on targets rebuilt from the uint8 pixels, and the NumPy reference, vs the f64 original.
    step = 2 ** (8 - config["data.num_bits"])
    targets64 = (np.floor(data["pixels_uint8"] / step) * step - 127.5) / 127.5
    logits64 = torch.tensor(data["logits_nchw"].astype(np.float64), requires_grad=True)
    nll64 = losses.mol_nll(logits64, torch.tensor(targets64), **kwargs)
    loss64 = nll64.sum() / (n_batch * dims)
    loss64.backward()
    np.testing.assert_allclose(loss64.item(), data["loss_f64"], rtol=1e-12)
    np.testing.assert_allclose(nll64.detach().sum(dim=(1, 2)).numpy(), data["per_example_nll_nats_f64"], rtol=1e-12)
    np.testing.assert_allclose(logits64.grad.numpy(), data["grad_logits_nchw_f64"], rtol=1e-9, atol=1e-12)
    numpy_loss = ref.mol_nll(data["logits_nchw"], targets64, **kwargs).sum() / (n_batch * dims)
    np.testing.assert_allclose(numpy_loss, data["loss_f64"], rtol=1e-12)


def test_bernoulli_reference_vectors():
    data, config = load_vectors("bernoulli")
    logits = torch.tensor(data["logits_nchw"], requires_grad=True)
    nll = losses.bernoulli_nll(logits, torch.tensor(data["targets_nchw"]))
    assert nll.shape == (4, 28, 28)
    loss = nll.sum() / (4 * 784)
    loss.backward()
    np.testing.assert_allclose(loss.item(), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(nll.detach().sum(dim=(1, 2)).numpy(), data["per_example_nll_nats"], rtol=1e-5)
    np.testing.assert_allclose(nll.detach().sum().item() / 4, data["avg_nats_per_image"], rtol=1e-5)
    grad, grad_ref = logits.grad.numpy(), data["grad_logits_nchw"]
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6 * np.abs(grad_ref).max())
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(grad[:, :, border] == 0)
    np.testing.assert_allclose(ref.bernoulli_nll(data["logits_nchw"], data["targets_nchw"]).sum() / (4 * 784),
                               data["loss_f64"], rtol=1e-12)


@pytest.mark.parametrize("base", ["std", "logstd"])
def test_kl_reference_vectors(base):
    data, config = load_vectors(f"kl_{base}")
    names = ["p_mean", f"p_{base}", "q_mean", f"q_{base}"]
    inputs = [torch.tensor(data[f"{n}_nchw"], requires_grad=True) for n in names]
    beta = config["model.gradient_smoothing_beta"]
    kl = losses.gaussian_kl(inputs[:2], inputs[2:], distribution_base=base, beta=beta)
    loss = kl.sum() / (4 * 3072)
    loss.backward()
    np.testing.assert_allclose(loss.item(), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(kl.detach().sum(dim=(1, 2, 3)).numpy(), data["per_example_kl_nats"], rtol=1e-5)
    np.testing.assert_allclose(kl.detach().sum().item() / (4 * 8 * 4 * 4 * math.log(2)), data["avg_bits"], rtol=1e-5)
    for tensor, name in zip(inputs, names):
        grad_ref = data[f"grad_{name}_nchw"]
        np.testing.assert_allclose(tensor.grad.numpy(), grad_ref, rtol=1e-5, atol=1e-6 * np.abs(grad_ref).max())
    expected = ref.gaussian_kl(*(data[f"{n}_nchw"] for n in names), distribution_base=base, beta=beta)
    np.testing.assert_allclose(expected.sum() / (4 * 3072), data["loss_f64"], rtol=1e-12)


# ---------------------------------------------------------------- vae_objective and reported units

@pytest.fixture(scope="module")
def cifar_cfg():
    """cifar10_baseline with the schedule values these tests assume pinned."""
    return with_values(egs_config("cifar10_baseline"), loss__variation_schedule="Linear",
                       loss__vae_beta_anneal_start=21, loss__vae_beta_anneal_steps=5000, loss__vae_beta_min=1e-4,
                       loss__use_gamma_schedule=True, loss__gamma_max_steps=10000, loss__scaled_gamma=True, model__distribution_base="std",
                       model__gradient_smoothing_beta=BETA_LN2, model__output_distribution_base="std",
                       model__output_gradient_smoothing_beta=BETA_LN2, loss__min_mol_logscale=-250.0)


def random_stats(seed, shapes, base="std"):
    """Posterior and prior stats lists for latent layers of the given (B, V, H, W) shapes."""
    gen = torch.Generator().manual_seed(seed)
    posts, priors = [], []
    for shape in shapes:
        p_mean, q_mean, p_s, q_s = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4))
        if base == "std":
            p_s, q_s = p_s.exp(), q_s.exp()
        posts.append([p_mean.requires_grad_(), p_s.requires_grad_()])
        priors.append([q_mean.requires_grad_(), q_s.requires_grad_()])
    return posts, priors


def numpy_kls(posts, priors, base="std"):
    return [ref.gaussian_kl(*(t.detach().numpy() for t in (*p, *q)), distribution_base=base, beta=BETA_LN2)
            for p, q in zip(posts, priors)]


def test_objective_mol_and_kl_vectors(cifar_cfg):
    data, config = load_vectors("mol_8bit_std")
    kl_data, _ = load_vectors("kl_std")
    cfg = with_values(cifar_cfg, data__target_res=8, model__num_output_mixtures=3, loss__variation_schedule="None",
                      loss__use_gamma_schedule=False)
    post = [torch.tensor(kl_data["p_mean_nchw"]), torch.tensor(kl_data["p_std_nchw"])]
    prior = [torch.tensor(kl_data["q_mean_nchw"]), torch.tensor(kl_data["q_std_nchw"])]
    small = [t[:, :, :2, :2] for t in post], [t[:, :, :2, :2] for t in prior]
    out = losses.vae_objective(torch.tensor(data["logits_nchw"]), torch.tensor(data["targets_nchw"]),
                               [post, small[0]], [prior, small[1]], cfg, **at_step(0, cfg), batch_size=4)
    kl_small = losses.gaussian_kl(small[0], small[1], distribution_base="std", beta=BETA_LN2).sum().item()
    kl_full = kl_data["loss"] * 4 * 3072  # total nats of the KL file
    assert out.effective_pixels == 192 and not out.binarized and out.beta == 1.0 and out.gamma_weights is None
    np.testing.assert_allclose(out.recon_nats_per_dim.item(), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim.numpy(), [kl_full / 768, kl_small / 768], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent[0].item(), kl_data["avg_bits"], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent[1].item(), kl_small / (4 * 32 * math.log(2)), rtol=1e-5)
    np.testing.assert_allclose(out.loss.item(), data["loss"] + (kl_full + kl_small) / 768, rtol=1e-5)
    np.testing.assert_allclose(out.recon_per_example_nats.numpy(), data["per_example_nll_nats"], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_example_nats.numpy(),
                               kl_data["per_example_kl_nats"] + np.array([kl.sum().item() for kl in losses.gaussian_kl(
                                   small[0], small[1], distribution_base="std", beta=BETA_LN2)]), rtol=1e-5)
    report = losses.report_units(out)
    assert report.units == "bits/dim"
    np.testing.assert_allclose(report.recon.item(), data["avg_bits_per_dim"], rtol=1e-5)
    np.testing.assert_allclose(report.kl.item(), out.kl_nats_per_dim.item() / math.log(2), rtol=1e-6)
    np.testing.assert_allclose(report.nelbo.item(), report.recon.item() + report.kl.item(), rtol=1e-6)
    np.testing.assert_allclose(report.nelbo_per_example.mean().item(), report.nelbo.item(), rtol=1e-5)


def test_objective_binarized_reports_nats_per_image():
    data, _ = load_vectors("bernoulli")
    cfg = with_values(egs_config("binarized_mnist_baseline"), loss__variation_schedule="None",
                      model__distribution_base="std", model__gradient_smoothing_beta=BETA_LN2)
    posts, priors = random_stats(1, [(4, 3, 2, 2)])
    logits, targets = torch.tensor(data["logits_nchw"]), torch.tensor(data["targets_nchw"])
    out = losses.vae_objective(logits.double(), targets.double(), posts, priors, cfg, **at_step(10 ** 6, cfg), batch_size=4)
    assert out.binarized and out.effective_pixels == 784 and out.gamma_weights is None
    np.testing.assert_allclose(out.recon_nats_per_dim.item(), data["loss_f64"], rtol=1e-12)
    report = losses.report_units(out)
    assert report.units == "nats/image"
    np.testing.assert_allclose(report.recon.item(), data["avg_nats_per_image"], rtol=1e-5)
    kl_nats = sum(kl.sum() for kl in numpy_kls(posts, priors))
    np.testing.assert_allclose(report.kl.item(), kl_nats / 4, rtol=1e-10)
    np.testing.assert_allclose(report.nelbo.item(), data["avg_nats_per_image"] + kl_nats / 4, rtol=1e-5)
    np.testing.assert_allclose(report.nelbo_per_example.numpy(),
                               out.recon_per_example_nats.numpy() + out.kl_per_example_nats.numpy(), rtol=1e-12)


def objective_inputs(cfg, seed=0, shapes=((2, 4, 1, 1), (2, 4, 2, 2), (2, 4, 4, 4))):
    """Random MoL logits/targets at cfg's resolution and random stats for latent layers."""
    rng = np.random.default_rng(seed)
    res, m = cfg.data.target_res, cfg.model.num_output_mixtures
    logits = torch.tensor(rng.normal(0, 1, (2, m * 10, res, res)))
    targets = torch.tensor((rng.integers(0, 256, (2, 3, res, res)) - 127.5) / 127.5)
    posts, priors = random_stats(seed, shapes)
    return logits, targets, posts, priors


@pytest.mark.parametrize("scaled", [True, False])
def test_objective_gamma_balancing(cifar_cfg, scaled):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2, loss__scaled_gamma=scaled)
    logits, targets, posts, priors = objective_inputs(cfg)
    step = 2521
    out = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(step, cfg), batch_size=2)
    weights = out.gamma_weights
    assert weights is not None and not weights.requires_grad
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-12)
    beta = 2500 / 5021
    assert out.beta == pytest.approx(beta, rel=1e-12)
    pixel_nll = losses.mol_nll(logits, targets, num_bits=8., num_mixtures=2, distribution_base="std", beta=BETA_LN2,
                               min_log_scale=-250.).numpy()
    expected, per_dim, per_latent, ref_weights = ref.vae_loss(
        pixel_nll, numpy_kls(posts, priors), batch_size=2, effective_pixels=48, beta=beta,
        gamma="scaled" if scaled else "unscaled")
    np.testing.assert_allclose(out.loss.item(), expected, rtol=1e-12)
    np.testing.assert_allclose(weights.numpy(), ref_weights, rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim.numpy(), per_dim, rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent.numpy(), per_latent / math.log(2), rtol=1e-12)
    np.testing.assert_allclose(out.kl_nats_per_dim.item(), per_dim.sum(), rtol=1e-12)  # true KL, not weighted
    np.testing.assert_allclose(out.kl_loss_nats_per_dim.item(), np.sum(ref_weights * per_dim), rtol=1e-12)

    # Gradients treat the weights as constants.
    out.loss.backward()
    grads = [p[0].grad.clone() for p in posts]
    for p in posts:
        p[0].grad = None
    kls = [losses.gaussian_kl(p, q, distribution_base="std", beta=BETA_LN2).sum() / 96 for p, q in zip(posts, priors)]
    (beta * sum(w * kl for w, kl in zip(weights.tolist(), kls))).backward()
    for grad, p in zip(grads, posts):
        torch.testing.assert_close(grad, p[0].grad, rtol=1e-12, atol=1e-15)


def test_objective_gamma_stats_reduce_makes_shards_match_the_full_batch(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2)
    logits, targets, posts, priors = objective_inputs(cfg, seed=4, shapes=((4, 4, 1, 1), (4, 4, 2, 2)))
    logits, targets = logits.repeat(2, 1, 1, 1), targets.repeat(2, 1, 1, 1)
    full = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(5, cfg), batch_size=4)
    full.loss.backward()
    full_grads = [p[0].grad.clone() for p in posts]
    global_stats = torch.stack([full.kl_per_layer_nats_per_dim, full.kl_per_layer_bits_per_latent * losses.LN2])
    shard_grads = []
    for shard in (slice(0, 2), slice(2, 4)):
        for p in posts:
            p[0].grad = None
        cut = [[t[shard] for t in stats] for stats in posts], [[t[shard] for t in stats] for stats in priors]
        out = losses.vae_objective(logits[shard], targets[shard], *cut, cfg, **at_step(5, cfg), batch_size=2,
                                   gamma_stats_reduce=lambda local: global_stats)
        torch.testing.assert_close(out.gamma_weights, full.gamma_weights)
        out.loss.backward()
        shard_grads.append([p[0].grad.clone() for p in posts])
    for layer, grad in enumerate(full_grads):  # DDP averages the shards' gradients
        torch.testing.assert_close((shard_grads[0][layer] + shard_grads[1][layer]) / 2, grad, rtol=1e-12, atol=1e-15)


def test_objective_gamma_off_and_beta_schedule(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2)
    logits, targets, posts, priors = objective_inputs(cfg, seed=3)
    for step, beta in [(0, 1e-4), (10001, 1.0), (5041, 5020 / 5021)]:
        out = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(step, cfg), batch_size=2)
        assert out.beta == pytest.approx(beta, rel=1e-12)
        assert (out.gamma_weights is None) == (step > 10000)
        kl_term = out.kl_loss_nats_per_dim if step <= 10000 else out.kl_nats_per_dim
        assert out.loss.item() == pytest.approx(out.recon_nats_per_dim.item() + beta * kl_term.item(), rel=1e-12)


def test_objective_masks_drop_kl_of_masked_variates(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2, loss__use_gamma_schedule=False)
    logits, targets, posts, priors = objective_inputs(cfg, seed=5)
    masks = [torch.tensor([1., 0., 1., 0.], dtype=torch.float64), None, torch.tensor([True, True, False, False])]
    out = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(10 ** 6, cfg), batch_size=2, variate_masks=masks)
    np_masks = [[1, 0, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    kls = numpy_kls(posts, priors)
    _, per_dim, per_latent, _ = ref.vae_loss(np.zeros(1), kls, batch_size=2, effective_pixels=48, beta=1.0,
                                             masks=np_masks)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim.numpy(), per_dim, rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent.numpy(), per_latent / math.log(2), rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_example_nats.numpy(),
                               sum((kl * np.array(mk)[None, :, None, None]).sum(axis=(1, 2, 3))
                                   for kl, mk in zip(kls, np_masks)), rtol=1e-12)
    out.loss.backward()
    assert torch.all(posts[0][0].grad[:, [1, 3]] == 0) and torch.all(posts[0][0].grad[:, [0, 2]] != 0)
    assert torch.all(posts[2][0].grad[:, 2:] == 0)
    unmasked = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(10 ** 6, cfg), batch_size=2)
    assert unmasked.kl_nats_per_dim > out.kl_nats_per_dim


def test_objective_argument_errors(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2)
    logits, targets, posts, priors = objective_inputs(cfg)
    with pytest.raises(ValueError, match="variate_masks"):
        losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(0, cfg), batch_size=2, variate_masks=[None])
    with pytest.raises(ValueError, match="posterior"):
        losses.vae_objective(logits, targets, posts, priors[:2], cfg, **at_step(0, cfg), batch_size=2)
    with pytest.raises(ValueError, match="target_res"):
        losses.vae_objective(logits, targets, posts, priors, with_values(cfg, data__target_res=8), **at_step(0, cfg), batch_size=2)


def test_gamma_weights_edge_cases():
    zero = torch.zeros(3)
    torch.testing.assert_close(losses.gamma_weights(zero, zero, scaled=True), torch.ones(3))
    per_dim = [torch.tensor(1.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)]
    weights = losses.gamma_weights(per_dim, [torch.tensor(2.0), torch.tensor(2.0)], scaled=False)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.5]))
    assert not weights.requires_grad


def test_units_helpers():
    assert losses.nats_per_dim_to_report(math.log(2), binarized=False, effective_pixels=3072) == pytest.approx(1.0)
    assert losses.nats_per_dim_to_report(0.1, binarized=True, effective_pixels=784) == pytest.approx(78.4)
    assert losses.report_unit_name(True) == "nats/image" and losses.report_unit_name(False) == "bits/dim"
    assert losses.pixel_range(8) == (-1.0, 1.0)
    assert losses.num_classes(5.) == 31.0
