"""PyTorch vs JAX: the same weights and posterior noise give the same importance-sampling terms, IW bound (the
latent operations of the modes: tests/behaviour/test_synthesis_modes.py)."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from efficient_vdvae_core import iw_nll
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.metrics import effective_pixels
from efficient_vdvae_jax.model import likelihood as jax_likelihood
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

