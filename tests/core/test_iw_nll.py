"""Streaming log-mean-exp over chunks of samples, per-image bounds and their summary in report units."""
import math

import numpy as np
import pytest

from efficient_vdvae_core import iw_nll


def random_terms(k, batch, layers, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(-3000.0, 50.0, (k, batch)), rng.normal(-5.0, 3.0, (k, batch, layers)),
            rng.gamma(2.0, 2.0, (k, batch, layers)))


def test_sample_chunks():
    assert iw_nll.sample_chunks(10, 4) == [4, 4, 2]
    assert iw_nll.sample_chunks(8, 4) == [4, 4]
    assert iw_nll.sample_chunks(3, 100) == [3]
    with pytest.raises(ValueError):
        iw_nll.sample_chunks(0, 4)


@pytest.mark.parametrize("iw_batch", [1, 7, 64])
def test_chunking_does_not_change_the_bounds(iw_batch):
    """Partial log-sum-exps combine to the one-pass float64 log-mean-exp, also with weights near exp(-3000)."""
    ll, ratio, kl = random_terms(64, 5, 3)
    log_w = ll + ratio.sum(-1)
    bounds, start = iw_nll.ImportanceSampledBounds(), 0
    for k in iw_nll.sample_chunks(64, iw_batch):
        bounds.add(ll[start:start + k], ratio[start:start + k], kl[start:start + k])
        start += k
    assert bounds.n_samples == 64
    peak = log_w.max(axis=0)
    expected = peak + np.log(np.exp(log_w - peak).mean(axis=0))
    np.testing.assert_allclose(bounds.log_likelihood_bound(), expected, rtol=1e-13)
    np.testing.assert_allclose(bounds.elbo(), (ll - kl.sum(-1)).mean(axis=0), rtol=1e-13)
    with np.errstate(divide="ignore"):
        assert np.isneginf(np.log(np.exp(log_w).mean(axis=0))).all()  # the naive form underflows
    assert np.isfinite(bounds.log_likelihood_bound()).all()


def test_bound_lies_between_mean_and_max_log_weight():
    ll, ratio, kl = random_terms(16, 4, 2, seed=1)
    log_w = iw_nll.log_weights(ll, ratio)
    bound = iw_nll.log_mean_exp(log_w, axis=0)
    assert (bound >= log_w.mean(axis=0)).all() and (bound <= log_w.max(axis=0)).all()
    equal = iw_nll.log_mean_exp(np.full((5, 2), -7.5), axis=0)
    np.testing.assert_allclose(equal, -7.5)


def test_no_samples_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        iw_nll.ImportanceSampledBounds().log_likelihood_bound()


def test_summary_units_and_standard_errors():
    bound = np.array([-2000.0, -2100.0, -2050.0])
    elbo = bound - np.array([10.0, 20.0, 30.0])
    e = 3072
    s = iw_nll.summarize(bound, elbo, n_samples=100, binarized=False, effective_pixels=e)
    bits = -bound / (e * math.log(2))
    assert s.units == "bits/dim" and s.n_images == 3 and s.n_samples == 100
    assert s.iw_nll == pytest.approx(bits.mean()) and s.iw_nll_stderr == pytest.approx(bits.std(ddof=1) / math.sqrt(3))
    assert s.gap == pytest.approx(20.0 / (e * math.log(2))) and s.gap > 0
    assert s.nelbo == pytest.approx(s.iw_nll + s.gap)
    digits = iw_nll.summarize(bound, elbo, n_samples=1, binarized=True, effective_pixels=784)
    assert digits.units == "nats/image" and digits.iw_nll == pytest.approx(2050.0) and digits.gap == pytest.approx(20.0)
    single = iw_nll.summarize(bound[:1], elbo[:1], n_samples=1, binarized=True, effective_pixels=784).to_dict()
    assert single["iw_nll_stderr"] is None and single["iw_nll"] == 2000.0
