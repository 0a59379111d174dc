"""Importance-weighted likelihood terms: the loss's ELBO at K = 1, -KL in expectation, a tighter bound with
more samples, and convergence to the exact likelihood of a model small enough to integrate on a grid."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from efficient_vdvae_core import iw_nll
from efficient_vdvae_torch.model import likelihood, losses
from efficient_vdvae_torch.model.autoencoder import build_model
from tests.conftest import at_step, egs_config

CASES = [  # both heads, both distribution bases, residual posterior on and off
    ("tiny", ()),
    ("tiny", ("model.distribution_base='logstd'", "model.use_residual_distribution=True")),
    ("tiny_binarized", ("model.use_residual_distribution=True",)),
    ("tiny_binarized", ("model.distribution_base='logstd'",)),
]
ONE_LATENT_LEVEL = {  # one level at 1x1: a single latent layer of 2 variates over RGB images of one pixel
    "up_strides": 1, "up_n_blocks_per_res": 0, "up_n_blocks": 1, "up_n_layers": 1, "up_filters": 16,
    "up_mid_filters_ratio": 0.5, "up_kernel_size": 1, "up_skip_filters": 16, "down_strides": 1,
    "down_n_blocks_per_res": 0, "down_n_blocks": 1, "down_n_layers": 1, "down_filters": 16,
    "down_mid_filters_ratio": 0.5, "down_kernel_size": 1, "down_latent_variates": 2}


def one_pixel_config():
    return egs_config("tiny", "data.target_res=1", "model.num_output_mixtures=1",
                      *(f"model.{key}=[{value}]" for key, value in ONE_LATENT_LEVEL.items()))


def model_and_images(config, n_images, seed=0):
    torch.manual_seed(seed)
    model = build_model(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    c, r = config.data.channels, config.data.target_res
    if config.data.dataset_source == "embedded_digits":
        x = (torch.rand(n_images, c, r, r, generator=g) < 0.3).float()
    else:
        x = (torch.randint(0, 256, (n_images, c, r, r), generator=g).float() - 127.5) / 127.5
    return model, x


def sample_noise(arch, k, batch, generator):
    return [torch.randn(k, batch, b.latent_variates, b.resolution, b.resolution, generator=generator)
            for b in arch.latent_layers]


def reference_log_ratio(eps, post, prior, base, beta):
    """Per-image sum of log N(z; prior) - log N(z; posterior) for z = mean + std * eps, with SciPy in float64."""
    std = (lambda s: s) if base == "std" else (lambda s: np.exp(beta * s))
    post = [t.double().numpy() for t in post]
    prior = [t.double().numpy() for t in prior]
    z = post[0] + std(post[1]) * eps.double().numpy()
    log_ratio = norm.logpdf(z, prior[0], std(prior[1])) - norm.logpdf(z, post[0], std(post[1]))
    return log_ratio.reshape(len(z), -1).sum(axis=1)


@pytest.mark.parametrize("name,overrides", CASES)
def test_one_sample_is_the_single_sample_elbo_estimate(name, overrides):
    config = egs_config(name, *overrides)
    model, x = model_and_images(config, 3)
    noise = sample_noise(model.arch, 1, 3, torch.Generator().manual_seed(2))
    terms = likelihood.importance_terms(model, x, noise, config)
    with torch.no_grad():
        logits, post, prior = model(x, noise=[n[0] for n in noise])
    objective = losses.vae_objective(logits, x, post, prior, config, **at_step(10 ** 6, config), batch_size=3)
    assert objective.beta == 1.0 and objective.gamma_weights is None

    # log p(x|z) and the KL are the loss's, for the same z
    np.testing.assert_allclose(terms.log_likelihood[0].numpy(), -objective.recon_per_example_nats.numpy(), rtol=1e-5)
    np.testing.assert_allclose(terms.kl[0].sum(-1).numpy(), objective.kl_per_example_nats.numpy(), rtol=1e-4)
    # log p(z) - log q(z|x) per layer, against SciPy's Gaussian densities
    m = config.model
    for layer in range(model.arch.n_latent_layers):
        expected = reference_log_ratio(noise[layer][0], post[layer], prior[layer], m.distribution_base,
                                       m.gradient_smoothing_beta)
        np.testing.assert_allclose(terms.log_prior_minus_posterior[0, :, layer].numpy(), expected, rtol=1e-4,
                                   atol=1e-3)
    # K = 1: the bound is the single-sample log weight, and the ELBO is the loss's negative NELBO
    bounds = iw_nll.ImportanceSampledBounds()
    bounds.add(*(t.numpy() for t in terms))
    single = terms.log_likelihood[0].numpy() + terms.log_prior_minus_posterior[0].sum(-1).numpy()
    np.testing.assert_allclose(bounds.log_likelihood_bound(), single, rtol=1e-12)
    nelbo = (objective.recon_per_example_nats + objective.kl_per_example_nats).double().numpy()
    np.testing.assert_allclose(-bounds.elbo(), nelbo, rtol=1e-5)


@pytest.mark.parametrize("name,overrides", CASES[:2])
def test_log_density_ratio_averages_to_minus_kl(name, overrides):
    """E over z_l ~ q of log p(z_l) - log q(z_l) = -KL, per layer and image (given the layers above)."""
    config = egs_config(name, *overrides)
    model, x = model_and_images(config, 2, seed=3)
    k = 200
    terms = likelihood.importance_terms(model, x, sample_noise(model.arch, k, 2, torch.Generator().manual_seed(4)),
                                        config)
    difference = (terms.log_prior_minus_posterior + terms.kl).numpy()  # (k, B, N_lat), zero mean
    mean, stderr = difference.mean(axis=0), difference.std(axis=0, ddof=1) / math.sqrt(k)
    assert (terms.kl.numpy() > 0).all()
    assert (np.abs(mean) < 5 * stderr + 1e-6).all(), (mean, stderr)


def test_bound_tightens_with_more_samples():
    """Over the same 64 samples, the bound with groups of K = 1, 2, 4, ..., 64 samples never decreases."""
    config = egs_config("tiny")
    model, x = model_and_images(config, 2, seed=5)
    terms = likelihood.importance_terms(model, x, sample_noise(model.arch, 64, 2, torch.Generator().manual_seed(6)),
                                        config)
    log_w = iw_nll.log_weights(terms.log_likelihood.numpy(), terms.log_prior_minus_posterior.numpy())  # (64, B)
    bounds = [iw_nll.log_mean_exp(log_w.reshape(64 // k, k, -1), axis=1).mean(axis=0) for k in (1, 2, 4, 8, 16, 32, 64)]
    steps = np.diff(np.stack(bounds), axis=0)
    assert (steps >= -1e-9).all(), bounds
    assert (bounds[-1] > bounds[0]).all()


def exact_log_likelihood(model, image, config, grid_points=401, half_width=8.0):
    """log p(x) = log of the integral over z (2 variates) of p(x|z) p(z), by the rectangle rule on a grid."""
    axis = torch.linspace(-half_width, half_width, grid_points)
    z = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2, 1, 1)
    n = z.shape[0]
    with torch.no_grad():
        _, _, priors = model(image, noise=[torch.zeros(1, 2, 1, 1)])
        logits, _ = model.sample(n, [1.0], [(z, torch.ones(2))])
    log_px_z = -losses.reconstruction_nll(logits, image.expand(n, -1, -1, -1), config).flatten(1).sum(1)
    prior = [s.expand_as(z) for s in priors[0]]
    m = config.model
    log_pz = likelihood.gaussian_log_density(z, prior, distribution_base=m.distribution_base,
                                             beta=m.gradient_smoothing_beta).flatten(1).sum(1)
    cell = (2 * half_width / (grid_points - 1)) ** 2
    return float(torch.logsumexp(log_px_z.double() + log_pz.double(), dim=0)) + math.log(cell)


def test_bound_converges_to_the_exact_likelihood():
    config = one_pixel_config()
    model, x = model_and_images(config, 3, seed=0)
    with torch.no_grad():  # a random init barely uses z: make the likelihood depend strongly on it
        model.top_down.levels_down_upsample[0].z_projection.weight.mul_(3.0)
    exact = np.array([exact_log_likelihood(model, x[i:i + 1], config) for i in range(3)])
    coarse = np.array([exact_log_likelihood(model, x[i:i + 1], config, grid_points=301) for i in range(3)])
    assert np.abs(exact - coarse).max() < 2e-3  # the grid integral has converged (well below the 0.1 tolerance)

    generator = torch.Generator().manual_seed(7)
    errors = {}
    for k in (1, 10, 100, 1000):
        bounds = iw_nll.ImportanceSampledBounds()
        for chunk in iw_nll.sample_chunks(k, 250):
            terms = likelihood.importance_terms(model, x, sample_noise(model.arch, chunk, 3, generator), config)
            bounds.add(*(t.numpy() for t in terms))
        errors[k] = exact - bounds.log_likelihood_bound()
        elbo_gap = exact - bounds.elbo()
    print("exact log p(x) (nats):", exact, "| exact - IW bound:", errors, "| exact - ELBO:", elbo_gap)
    assert (elbo_gap > 0.2).all()  # the ELBO is loose here, so convergence says something
    assert np.abs(errors[1000]).max() < 0.2  # ~3 standard deviations of one K = 1000 estimate
    assert np.abs(errors[1000]).mean() < np.abs(errors[1]).mean() / 4
