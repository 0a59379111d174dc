"""PyTorch vs JAX: the same weights and the same noise give the same logits, losses, KL and NELBO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from efficient_vdvae_core.schedules import gamma_active, kl_beta
from efficient_vdvae_core.params import (
    jax_params_to_torch_state_dict,
    torch_state_dict_to_jax,
)
from efficient_vdvae_jax.model import losses as jax_losses
from efficient_vdvae_jax.model.autoencoder import Autoencoder, load_params
from efficient_vdvae_torch.model import losses as torch_losses
from efficient_vdvae_torch.model.autoencoder import build_model as build_torch_model
from tests.conftest import at_step, egs_config


TOLERANCE = 1e-4  # max |jax - torch| / max |torch| per quantity
STEP = 30  # beta < 1 and gamma balancing on (tiny configs: anneal 5 + 50, gamma_max_steps 100)
CASES = [  # both datasets/heads, both distribution bases, residual distribution on and off
    ("tiny", ()),
    ("tiny", ("model.distribution_base='logstd'", "model.use_residual_distribution=True")),
    ("tiny_binarized", ("model.use_residual_distribution=True",)),
    ("tiny_binarized", ("model.distribution_base='logstd'",)),
]


def nhwc(t):
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def rel_diff(jax_value, torch_value):
    """max |jax - torch| / max |torch|, after bringing torch NCHW tensors to NHWC."""
    t = torch_value.detach().numpy()
    if t.ndim == 4:
        t = t.transpose(0, 2, 3, 1)
    return float(np.max(np.abs(np.asarray(jax_value) - t)) / max(np.max(np.abs(t)), 1e-30))


def twin_models(config, seed=0):
    """A seeded torch model and the JAX model holding its converted weights."""
    torch.manual_seed(seed)
    torch_model = build_torch_model(config)
    arch = torch_model.arch
    jax_model = nnx.eval_shape(lambda: Autoencoder(arch, config.model, rngs=nnx.Rngs(0)))
    load_params(jax_model, torch_state_dict_to_jax({k: v.numpy() for k, v in torch_model.state_dict().items()}))
    return torch_model, jax_model


def batch(config, arch, size=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = config.data.channels
    if config.data.dataset_source == "embedded_digits":
        x = (torch.rand(size, c, 32, 32, generator=g) < 0.3).float()
    else:
        x = (torch.randint(0, 256, (size, c, 32, 32), generator=g).float() - 127.5) / 127.5
    noise = [torch.randn(size, b.latent_variates, b.resolution, b.resolution, generator=g) for b in arch.latent_layers]
    return x, noise


@pytest.mark.parametrize("name,overrides", CASES)
def test_forward_losses_and_prior_sampling_match(name, overrides):
    config = egs_config(name, *overrides)
    torch_model, jax_model = twin_models(config)
    arch = torch_model.arch
    x, noise = batch(config, arch)
    with torch.no_grad():
        t_logits, t_post, t_prior = torch_model(x, noise=noise)
    t_obj = torch_losses.vae_objective(t_logits, x, t_post, t_prior, config, **at_step(STEP, config), batch_size=3)
    t_report = torch_losses.report_units(t_obj)

    beta, gamma_on = kl_beta(STEP, config.loss), gamma_active(STEP, config.loss)
    assert 0 < beta < 1 and gamma_on
    j_logits, j_post, j_prior = jax_model(nhwc(x), noise=[nhwc(n) for n in noise])
    j_obj = jax_losses.vae_objective(j_logits, nhwc(x), j_post, j_prior, config, beta=beta, gamma_on=gamma_on,
                                     batch_size=3)
    j_report = jax_losses.report_units(j_obj)

    diffs = {
        "logits": rel_diff(j_logits, t_logits),
        "posterior stats": max(rel_diff(j, t) for jp, tp in zip(j_post, t_post) for j, t in zip(jp, tp)),
        "prior stats": max(rel_diff(j, t) for jp, tp in zip(j_prior, t_prior) for j, t in zip(jp, tp)),
        "loss": rel_diff(j_obj.loss, t_obj.loss),
        "recon": rel_diff(j_obj.recon_nats_per_dim, t_obj.recon_nats_per_dim),
        "kl per layer": rel_diff(j_obj.kl_per_layer_nats_per_dim, t_obj.kl_per_layer_nats_per_dim),
        "gamma weights": rel_diff(j_obj.gamma_weights, t_obj.gamma_weights),
        "nelbo": rel_diff(j_report.nelbo, t_report.nelbo),
        "nelbo per example": rel_diff(j_report.nelbo_per_example, t_report.nelbo_per_example),
    }
    # Prior sampling: temperature 0 is deterministic; given latents with a full mask fix every z.
    n = arch.n_latent_layers
    t_cold, t_zs = torch_model.sample(2, [0.0] * n)
    j_cold, _ = jax_model.sample(2, [0.0] * n, key=jax.random.key(0))
    diffs["sample logits (T=0)"] = rel_diff(j_cold, t_cold)
    zs = [torch.randn_like(z) for z in t_zs]
    given = torch_model.sample(2, [1.0] * n, [(z, torch.ones(z.shape[1])) for z in zs])[0]
    j_given = jax_model.sample(2, [1.0] * n, [(nhwc(z), jnp.ones(z.shape[1])) for z in zs], key=jax.random.key(1))[0]
    diffs["sample logits (given z)"] = rel_diff(j_given, given)
    print(f"{name} {overrides}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert all(v < TOLERANCE for v in diffs.values()), diffs


def test_gradients_match():
    """d loss / d parameters (NELBO with beta and gamma weights) agree after conversion."""
    config = egs_config("tiny")
    torch_model, jax_model = twin_models(config, seed=3)
    x, noise = batch(config, torch_model.arch, size=2, seed=4)
    logits, post, prior = torch_model(x, noise=noise)
    torch_losses.vae_objective(logits, x, post, prior, config, **at_step(STEP, config), batch_size=2).loss.backward()
    torch_grads = {k: p.grad.numpy() for k, p in torch_model.named_parameters()}

    def loss_fn(model):
        j_logits, j_post, j_prior = model(nhwc(x), noise=[nhwc(n) for n in noise])
        return jax_losses.vae_objective(j_logits, nhwc(x), j_post, j_prior, config, beta=kl_beta(STEP, config.loss),
                                        gamma_on=True, batch_size=2).loss

    grads = nnx.jit(nnx.grad(loss_fn))(jax_model)
    converted = jax_params_to_torch_state_dict(nnx.to_pure_dict(nnx.state(grads, nnx.Param)))
    assert converted.keys() == torch_grads.keys()
    scale = max(np.abs(g).max() for g in torch_grads.values())
    worst = max(np.abs(converted[k] - g).max() for k, g in torch_grads.items()) / scale
    print(f"gradients: max |jax - torch| / max |torch| = {worst:.1e}")
    assert worst < TOLERANCE
