"""JAX importance-sampling terms on the tiny models (parity with torch: tests/parity)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficient_vdvae_core import iw_nll
from efficient_vdvae_jax.model import likelihood, losses
from efficient_vdvae_jax.model.autoencoder import build_model
from tests.conftest import egs_config


def images(config, n, seed=1):
    rng = np.random.default_rng(seed)
    shape = (n, 32, 32, config.data.channels)
    if config.data.dataset_source == "embedded_digits":
        return jnp.asarray((rng.random(shape) < 0.3).astype(np.float32))
    return jnp.asarray((rng.integers(0, 256, shape).astype(np.float32) - 127.5) / 127.5)


def noise(arch, k, batch, seed):
    keys = jax.random.split(jax.random.key(seed), arch.n_latent_layers)
    return [jax.random.normal(key, (k, batch, b.resolution, b.resolution, b.latent_variates))
            for key, b in zip(keys, arch.latent_layers)]


def test_one_sample_is_the_single_sample_elbo_estimate():
    config = egs_config("tiny_binarized", "model.distribution_base='logstd'", "model.use_residual_distribution=True")
    model = build_model(config, seed=0)
    x = images(config, 3)
    eps = noise(model.arch, 1, 3, seed=2)

    @nnx.jit
    def terms_and_loss(model, x, eps):  # one compiled program for both passes
        logits, post, prior = model(x, noise=[e[0] for e in eps])
        objective = losses.vae_objective(logits, x, post, prior, config, beta=1.0, gamma_on=False, batch_size=3)
        return likelihood.importance_terms(model, x, eps, config), objective

    terms, objective = terms_and_loss(model, x, eps)
    np.testing.assert_allclose(terms.log_likelihood[0], -objective.recon_per_example_nats, rtol=1e-5)
    np.testing.assert_allclose(terms.kl[0].sum(-1), objective.kl_per_example_nats, rtol=1e-4)
    bounds = iw_nll.ImportanceSampledBounds()
    bounds.add(*(np.asarray(t) for t in terms))
    nelbo = np.asarray(objective.recon_per_example_nats + objective.kl_per_example_nats, np.float64)
    np.testing.assert_allclose(-bounds.elbo(), nelbo, rtol=1e-5)
    single = np.asarray(terms.log_likelihood[0], np.float64) + np.asarray(terms.log_prior_minus_posterior[0],
                                                                           np.float64).sum(-1)
    np.testing.assert_allclose(bounds.log_likelihood_bound(), single, rtol=1e-12)

