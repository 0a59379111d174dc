"""PyTorch vs JAX: the same weights and posterior noise give the same importance-sampling terms, IW bound and
latent operations."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from efficient_vdvae_core import iw_nll
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.metrics import effective_pixels
from efficient_vdvae_jax.model import latent_ops as jax_latent_ops
from efficient_vdvae_jax.model import likelihood as jax_likelihood
from efficient_vdvae_torch.model import latent_ops as torch_latent_ops
from efficient_vdvae_torch.model import likelihood as torch_likelihood
from tests.conftest import egs_config
from tests.parity.test_model_parity import CASES, TOLERANCE, batch, nhwc, rel_diff, twin_models

K = 4  # posterior samples per image


def sample_major_nhwc(eps):
    """torch eps (k, B, V, H, W) -> JAX (k, B, H, W, V)."""
    return jnp.asarray(eps.numpy().transpose(0, 1, 3, 4, 2))


@pytest.mark.parametrize("name,overrides", CASES)
def test_importance_terms_and_bound_match(name, overrides):
    config = egs_config(name, *overrides)
    torch_model, jax_model = twin_models(config)
    arch = torch_model.arch
    x, _ = batch(config, arch)
    g = torch.Generator().manual_seed(9)
    noise = [torch.randn(K, 3, b.latent_variates, b.resolution, b.resolution, generator=g) for b in arch.latent_layers]
    t_terms = torch_likelihood.importance_terms(torch_model, x, noise, config)
    fn = nnx.jit(functools.partial(jax_likelihood.importance_terms, config=config))
    j_terms = fn(jax_model, nhwc(x), [sample_major_nhwc(n) for n in noise])
    diffs = {field: rel_diff(j, t) for field, j, t in zip(t_terms._fields, j_terms, t_terms)}

    summaries = []
    for terms in (t_terms, j_terms):
        bounds = iw_nll.ImportanceSampledBounds()
        bounds.add(*(np.asarray(t) for t in terms))
        summaries.append(iw_nll.summarize(bounds.log_likelihood_bound(), bounds.elbo(), n_samples=K,
                                          binarized=is_binarized(config.data),
                                          effective_pixels=effective_pixels(config.data)))
    diffs["iw nll"] = abs(summaries[0].iw_nll - summaries[1].iw_nll) / abs(summaries[0].iw_nll)
    diffs["nelbo"] = abs(summaries[0].nelbo - summaries[1].nelbo) / abs(summaries[0].nelbo)
    print(f"{name} {overrides}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert all(v < TOLERANCE for v in diffs.values()), diffs
    assert summaries[0].iw_nll <= summaries[0].nelbo


def test_latent_operations_match():
    config = egs_config("tiny")
    torch_model, jax_model = twin_models(config)
    x, _ = batch(config, torch_model.arch, size=2)
    t_logits, t_means = torch_latent_ops.posterior_latents(torch_model, x)
    j_logits, j_means = jax_latent_ops.posterior_latents(jax_model, nhwc(x))
    diffs = {"posterior-mean logits": rel_diff(j_logits, t_logits),
             "posterior means": max(rel_diff(j, t) for j, t in zip(j_means, t_means))}
    t_steps = torch_latent_ops.interpolated_latents([z[:1] for z in t_means], [z[1:] for z in t_means], [0.5],
                                                    "spherical")
    j_steps = jax_latent_ops.interpolated_latents([z[:1] for z in j_means], [z[1:] for z in j_means], [0.5],
                                                  "spherical")
    diffs["slerp midpoint decode"] = rel_diff(jax_latent_ops.decode_latents(jax_model, j_steps[0]),
                                              torch_latent_ops.decode_latents(torch_model, t_steps[0]))
    print(", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert all(v < TOLERANCE for v in diffs.values()), diffs
