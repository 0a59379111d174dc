"""Output samplers: shapes, ranges, determinism, temperature limits, mixture and noise statistics."""
import math

import numpy as np
import pytest
import torch

from efficient_vdvae_torch.model import sampling
from efficient_vdvae_torch.model.losses import pixel_range

BETA_LN2 = 0.6931472


def mol_kwargs(num_bits=8.0, base="std", mixtures=3, temperature=1.0):
    return dict(num_bits=num_bits, num_mixtures=mixtures, distribution_base=base, beta=BETA_LN2,
                min_log_scale=-14.0 if num_bits == 5 else -250.0, temperature=temperature)


def random_logits(channels, mixtures=3, shape=(2, 5, 6), seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    b, h, w = shape
    return scale * torch.randn(b, mixtures * (3 * channels + 1), h, w, generator=gen)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("num_bits", [8.0, 5.0])
@pytest.mark.parametrize("base", ["std", "logstd"])
def test_mol_shapes_and_range(channels, num_bits, base):
    logits = random_logits(channels, scale=3.0)
    images = sampling.sample_mol(logits, **mol_kwargs(num_bits, base), generator=torch.Generator().manual_seed(1))
    assert images.shape == (2, channels, 5, 6) and images.dtype == logits.dtype
    low, high = pixel_range(num_bits)
    assert images.min() >= np.float32(low) and images.max() <= np.float32(high)
    assert torch.isfinite(images).all()


def test_mol_5bit_clamps_to_top_value():
    logits = torch.zeros(1, 3 * 10, 2, 2)
    logits[:, 3:6] = 50.0  # every mean of colour 0 far above the range
    logits[:, 3 + 9:3 + 12] = -50.0  # colour 1 far below
    images = sampling.sample_mol(logits, **mol_kwargs(5.0), generator=torch.Generator().manual_seed(0))
    assert torch.all(images[:, 0] == np.float32(0.9450980392156862))
    assert torch.all(images[:, 1] == -1.0)


def test_mol_is_deterministic_with_a_generator():
    logits = random_logits(3)
    a = sampling.sample_mol(logits, **mol_kwargs(), generator=torch.Generator().manual_seed(7))
    b = sampling.sample_mol(logits, **mol_kwargs(), generator=torch.Generator().manual_seed(7))
    c = sampling.sample_mol(logits, **mol_kwargs(), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def expected_mode(logits, mixtures=3):
    """Mean of the most likely component with the clamped channel autoregression (temperature 0)."""
    b, _, h, w = logits.shape
    k = logits[:, :mixtures].argmax(dim=1)
    params = logits[:, mixtures:].reshape(b, 3, 3 * mixtures, h, w)
    means = [params[:, c, :mixtures].gather(1, k[:, None]).squeeze(1) for c in range(3)]
    coeffs = [torch.tanh(params[:, c, 2 * mixtures:].gather(1, k[:, None]).squeeze(1)) for c in range(3)]
    x0 = means[0].clamp(-1, 1)
    x1 = (means[1] + coeffs[0] * x0).clamp(-1, 1)
    x2 = (means[2] + coeffs[1] * x0 + coeffs[2] * x1).clamp(-1, 1)
    return torch.stack([x0, x1, x2], dim=1)


def test_mol_temperature_to_zero_gives_the_mode():
    logits = random_logits(3, scale=0.5)
    mode = expected_mode(logits)
    exact = sampling.sample_mol(logits, **mol_kwargs(temperature=0.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(exact, mode, rtol=0, atol=1e-6)
    tiny = sampling.sample_mol(logits, **mol_kwargs(temperature=1e-7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tiny, mode, rtol=0, atol=1e-5)


def test_mol_mixture_choice_and_logistic_noise_statistics():
    n = 20000
    logits = torch.zeros(n, 2 * 4, 1, 1)  # C = 1, M = 2: [logit_0, logit_1, mean_0, mean_1, scale_0, scale_1, ...]
    logits[:, 1] = math.log(3.0)  # component 1 three times as likely
    logits[:, 2], logits[:, 3] = -0.5, 0.5
    scale = 0.01
    raw = scale + math.log(-math.expm1(-BETA_LN2 * scale)) / BETA_LN2  # inverse beta-softplus
    logits[:, 4:6] = raw
    x = sampling.sample_mol(logits, **mol_kwargs(mixtures=2), generator=torch.Generator().manual_seed(3)).flatten()
    chose_one = (x > 0).double().mean().item()
    assert chose_one == pytest.approx(0.75, abs=0.015)
    spread = (x[x > 0] - 0.5).std().item()
    assert spread == pytest.approx(scale * math.pi / math.sqrt(3), rel=0.05)
    hot = sampling.sample_mol(logits, **mol_kwargs(mixtures=2, temperature=2.0),
                              generator=torch.Generator().manual_seed(3)).flatten()
    assert (hot[hot > 0] - 0.5).std().item() == pytest.approx(2 * scale * math.pi / math.sqrt(3), rel=0.05)


def test_bernoulli_draws_and_probs():
    gen = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(3, 1, 32, 32, generator=gen)
    draws = sampling.sample_bernoulli(logits, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (3, 1, 28, 28) and draws.device == logits.device
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    again = sampling.sample_bernoulli(logits, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws, again, rtol=0, atol=0)
    probs = sampling.bernoulli_probs(logits, temperature=2.0)
    assert probs.shape == (3, 1, 28, 28)
    torch.testing.assert_close(probs, torch.sigmoid(logits[:, :, 2:30, 2:30] / 2.0))
    sure = torch.full((2, 1, 32, 32), 30.0)
    sure[:, :, 2:30, 2:16] = -30.0
    certain = sampling.sample_bernoulli(sure)
    assert torch.all(certain[..., :14] == 0) and torch.all(certain[..., 14:] == 1)
    mixed = torch.zeros(1, 1, 32, 32)
    mixed[..., 2:10], mixed[..., 20:30] = -1.0, 2.0
    step = sampling.bernoulli_probs(mixed, temperature=0.0)  # the temperature -> 0 limit
    assert torch.all(step[..., :8] == 0) and torch.all(step[..., 8:18] == 0.5) and torch.all(step[..., 18:] == 1)
