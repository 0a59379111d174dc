"""Importance-weighted NLL: stable log-mean-exp over K posterior samples, per-image bounds and their summary.

For an image x and K samples z_k ~ q(z|x), log p(x) >= log (1/K) sum_k w_k with log importance weight
log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) (Burda et al. 2016, "Importance weighted
autoencoders"). The bound tightens (weakly) as K grows; K = 1 is the single-sample ELBO. The
frameworks' `model/likelihood.py` give the per-sample terms in nats per image; everything here is
float64 NumPy, and samples arrive in chunks of at most `iw_batch` (sample-major arrays (k, B, ...)),
so the memory of one model pass is bounded whatever K is.
"""
import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.special import logsumexp

from efficient_vdvae_core.metrics import nats_per_dim_to_report, report_unit_name


def sample_chunks(n_samples, iw_batch):
    """Sizes of the chunks of at most `iw_batch` samples that together make `n_samples` (K)."""
    if n_samples < 1 or iw_batch < 1:
        raise ValueError(f"need n_samples >= 1 and iw_batch >= 1 (got {n_samples} and {iw_batch})")
    full, rest = divmod(n_samples, iw_batch)
    return [iw_batch] * full + ([rest] if rest else [])


def log_weights(log_likelihood, log_prior_minus_posterior):
    """float64 log importance weights (...,): log p(x|z) (...,) plus the sum over layers of
    log p(z_l) - log q(z_l|x), given per layer (..., N_lat); all in nats per image."""
    return (np.asarray(log_likelihood, np.float64)
            + np.asarray(log_prior_minus_posterior, np.float64).sum(axis=-1))


def log_mean_exp(values, axis=0):
    """log(mean(exp(values))) along `axis`, in float64, without overflow or underflow."""
    values = np.asarray(values, np.float64)
    return logsumexp(values, axis=axis) - math.log(values.shape[axis])


class ImportanceSampledBounds:
    """Per-image IW log-likelihood bound and ELBO of one batch of B images, over chunks of samples.

    `add` takes the terms of k more samples (the fields of a framework's `ImportanceTerms`, sample-major):
    log_likelihood (k, B), log_prior_minus_posterior (k, B, N_lat), kl (k, B, N_lat), in nats. Partial
    log-sum-exps of the chunks are combined with logaddexp, so the result does not depend on the chunking.
    """

    def __init__(self):
        self._log_sum = None  # (B,) log sum_k w_k
        self._elbo_sum = None  # (B,) sum_k (log p(x|z_k) - KL_k)
        self.n_samples = 0

    def add(self, log_likelihood, log_prior_minus_posterior, kl):
        """Add k samples of every image of the batch."""
        log_w = log_weights(log_likelihood, log_prior_minus_posterior)  # (k, B)
        if log_w.ndim != 2:
            raise ValueError(f"expected sample-major terms of shape (k, B), got log weights of shape {log_w.shape}")
        elbo = np.asarray(log_likelihood, np.float64) - np.asarray(kl, np.float64).sum(axis=-1)  # (k, B)
        chunk_log_sum, chunk_elbo_sum = logsumexp(log_w, axis=0), elbo.sum(axis=0)
        if self._log_sum is None:
            self._log_sum, self._elbo_sum = chunk_log_sum, chunk_elbo_sum
        else:
            self._log_sum = np.logaddexp(self._log_sum, chunk_log_sum)
            self._elbo_sum = self._elbo_sum + chunk_elbo_sum
        self.n_samples += log_w.shape[0]

    def _check(self):
        if not self.n_samples:
            raise ValueError("no samples added")

    def log_likelihood_bound(self):
        """(B,) float64: log (1/K) sum_k w_k, the IW lower bound on log p(x), nats per image."""
        self._check()
        return self._log_sum - math.log(self.n_samples)

    def elbo(self):
        """(B,) float64: the ELBO log p(x|z) - KL averaged over the same K samples, nats per image."""
        self._check()
        return self._elbo_sum / self.n_samples


def _stderr(values):
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else None


@dataclass(frozen=True)
class IWNLLSummary:
    """Mean over images of the IW-NLL and the negative ELBO, in `units`, with standard errors over images.

    gap = NELBO - IW-NLL per image (>= 0 but for sampling noise); its standard error is of the paired
    differences. Standard errors are None for a single image.
    """
    units: str  # 'bits/dim' or 'nats/image'
    n_images: int
    n_samples: int  # K
    iw_nll: float
    iw_nll_stderr: Optional[float]
    nelbo: float
    nelbo_stderr: Optional[float]
    gap: float
    gap_stderr: Optional[float]

    def to_dict(self):
        """Plain dict for a JSON report."""
        return asdict(self)


def summarize(log_likelihood_bound, elbo, *, n_samples, binarized, effective_pixels):
    """IWNLLSummary of per-image bounds in nats per image (N,), in the ELBO's report unit.

    bits/dim for images (nats / (E ln 2)), nats/image for binarized digits; E = effective_pixels.
    """
    bound = np.asarray(log_likelihood_bound, np.float64).reshape(-1)
    elbo = np.asarray(elbo, np.float64).reshape(-1)
    if bound.shape != elbo.shape or not bound.size:
        raise ValueError(f"need one bound and one ELBO per image (got {bound.size} and {elbo.size})")
    nll = nats_per_dim_to_report(-bound / effective_pixels, binarized=binarized, effective_pixels=effective_pixels)
    nelbo = nats_per_dim_to_report(-elbo / effective_pixels, binarized=binarized, effective_pixels=effective_pixels)
    gap = nelbo - nll
    return IWNLLSummary(units=report_unit_name(binarized), n_images=int(bound.size), n_samples=int(n_samples),
                        iw_nll=float(nll.mean()), iw_nll_stderr=_stderr(nll), nelbo=float(nelbo.mean()),
                        nelbo_stderr=_stderr(nelbo), gap=float(gap.mean()), gap_stderr=_stderr(gap))
