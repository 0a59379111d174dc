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
from tests.conftest import REFERENCE

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
