"""Posterior means, decoding given latents, interpolation and partial-latent sampling on the tiny model."""
import numpy as np
import pytest
import torch

from efficient_vdvae_torch.model import latent_ops
from efficient_vdvae_torch.model.autoencoder import build_model
from tests.conftest import egs_config


@pytest.fixture(scope="module")
def model_and_images():
    config = egs_config("tiny")
    torch.manual_seed(0)
    model = build_model(config).eval()
    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, 256, (2, 3, 32, 32), generator=g).float() - 127.5) / 127.5
    return model, x


def close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_posterior_means_decode_to_the_posterior_mean_reconstruction(model_and_images):
    model, x = model_and_images
    logits, means = latent_ops.posterior_latents(model, x)
    _, posteriors, _ = model(x, noise=[torch.zeros_like(z) for z in means])
    assert all(torch.equal(z, post[0]) for z, post in zip(means, posteriors))
    assert close(latent_ops.decode_latents(model, means), logits)
    noise = [torch.randn_like(z) for z in means]
    sample_logits, samples = latent_ops.posterior_latents(model, x, noise)
    assert not close(sample_logits, logits) and close(latent_ops.decode_latents(model, samples), sample_logits)


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_endpoints_decode_to_the_images(model_and_images, method):
    model, x = model_and_images
    logits, means = latent_ops.posterior_latents(model, x)
    start, end = [z[:1] for z in means], [z[1:] for z in means]
    steps = latent_ops.interpolated_latents(start, end, [0.0, 0.5, 1.0], method)
    decoded = [latent_ops.decode_latents(model, step) for step in steps]
    assert close(decoded[0], logits[:1]) and close(decoded[2], logits[1:])
    assert not close(decoded[1], logits[:1]) and not close(decoded[1], logits[1:])
    assert all(z.shape == ref.shape and z.dtype == ref.dtype for z, ref in zip(steps[1], start))


def test_keep_top_layers(model_and_images):
    model, x = model_and_images
    n = model.arch.n_latent_layers
    logits, means = latent_ops.posterior_latents(model, x)
    assert close(latent_ops.conditional_sample(model, means, n, [1.0] * n), logits)  # all kept: the reconstruction

    torch.manual_seed(5)
    plain = model.sample(2, [0.8] * n)[0]
    torch.manual_seed(5)
    assert torch.equal(latent_ops.conditional_sample(model, means, 0, [0.8] * n), plain)  # none kept: the prior

    torch.manual_seed(6)
    a = latent_ops.conditional_sample(model, means, 2, [1.0] * n)
    torch.manual_seed(7)
    b = latent_ops.conditional_sample(model, means, 2, [1.0] * n)
    assert not close(a, b) and not close(a, logits)
    with pytest.raises(ValueError, match="keep_top_layers"):
        latent_ops.conditional_sample(model, means, n + 1, [1.0] * n)


def test_top_layers_fix_the_kept_latents(model_and_images):
    """With k layers kept, the prior pass's z of those layers are the given ones, the others are new."""
    model, x = model_and_images
    _, means = latent_ops.posterior_latents(model, x)
    n = model.arch.n_latent_layers
    _, zs = model.sample(2, [1.0] * n, latent_ops.given_latents(means, 2))
    assert all(torch.equal(zs[i], means[i]) for i in range(2))
    assert not any(np.allclose(zs[i].numpy(), means[i].numpy()) for i in range(2, n))
