"""Independent float64 NumPy/SciPy reference of the losses, written from their formulas (tests only).

Deliberately plain: explicit loops over mixtures and colour channels, SciPy's log-sigmoid, and the
edge pixels recognised by their position on the pixel grid rather than by float equality.
"""
import numpy as np
from scipy.special import expit, log_expit, log_softmax, logsumexp

# Autoregressive mean terms: channel -> [(coefficient slot channel, conditioning channel), ...].
AR_TERMS = {0: [], 1: [(0, 0)], 2: [(1, 0), (2, 1)]}


def grid_edges(num_bits):
    """Lowest and highest normalised pixel values of `num_bits` data."""
    step = 2 ** (8 - int(num_bits))
    top = (255 // step) * step
    return -1.0, (top - 127.5) / 127.5


def beta_softplus(x, beta):
    return np.logaddexp(0.0, beta * x) / beta


def mol_log_probs(logits, targets, *, num_bits, num_mixtures, distribution_base, beta, min_log_scale):
    """Per-element log-probabilities (B, C, M, H, W) and branch codes (0 min, 1 max, 2 mass, 3 density)."""
    logits = np.asarray(logits, np.float64)
    x = np.asarray(targets, np.float64)
    n_batch, n_chan, height, width = x.shape
    m = num_mixtures
    assert logits.shape[1] == m * (3 * n_chan + 1)
    low, high = grid_edges(num_bits)
    classes = 2.0 ** num_bits - 1.0
    half = 1.0 / classes
    at_low = np.abs(x - low) < 1e-6
    at_high = np.abs(x - high) < 1e-6
    log_probs = np.zeros((n_batch, n_chan, m, height, width))
    branches = np.zeros((n_batch, n_chan, m, height, width), np.int8)

    def slot(c, k):  # flat channel of slot k (0..3M-1) of colour c, torch layout (C, 3M)
        return logits[:, m + c * 3 * m + k]

    for k in range(m):
        for c in range(n_chan):
            mean = slot(c, k).copy()
            if n_chan == 3:
                for coeff_chan, cond_chan in AR_TERMS[c]:
                    mean = mean + np.tanh(slot(coeff_chan, 2 * m + k)) * x[:, cond_chan]
            raw = slot(c, m + k)
            if distribution_base == "std":
                sigma = np.maximum(beta_softplus(raw, beta), np.exp(min_log_scale))
                log_sigma, inv = np.log(sigma), 1.0 / sigma
            else:
                log_sigma = np.maximum(raw, min_log_scale)
                inv = np.exp(-beta * log_sigma)
            d = x[:, c] - mean
            upper, lower, centre = inv * (d + half), inv * (d - half), inv * d
            mass = expit(upper) - expit(lower)
            density = centre - log_sigma - 2.0 * np.logaddexp(0.0, centre) - np.log(classes / 2.0)
            conditions = [at_low[:, c], at_high[:, c], mass > 1e-5]
            log_probs[:, c, k] = np.select(conditions, [log_expit(upper), log_expit(-lower),
                                                        np.log(np.maximum(mass, 1e-12))], density)
            branches[:, c, k] = np.select(conditions, [0, 1, 2], 3)
    return log_probs, branches


def mol_nll(logits, targets, **kwargs):
    """Per-pixel MoL NLL (B, H, W) in nats."""
    log_probs, _ = mol_log_probs(logits, targets, **kwargs)
    m = kwargs["num_mixtures"]
    mixture = log_softmax(np.asarray(logits, np.float64)[:, :m], axis=1)
    return -logsumexp(log_probs.sum(axis=1) + mixture, axis=1)


def bernoulli_nll(logits, targets):
    """Per-pixel Bernoulli NLL of the 28x28 crop, (B, 28, 28) in nats."""
    l = np.asarray(logits, np.float64)[:, 0, 2:30, 2:30]
    x = np.asarray(targets, np.float64)[:, 0, 2:30, 2:30]
    return -(x * log_expit(l) + (1.0 - x) * log_expit(-l))


def gaussian_kl(p_mean, p_scale, q_mean, q_scale, *, distribution_base, beta):
    """Elementwise KL(p || q) in nats; scales are stds or logstds (std = exp(beta * logstd))."""
    p_mean, q_mean = np.asarray(p_mean, np.float64), np.asarray(q_mean, np.float64)
    if distribution_base == "std":
        p_std, q_std = np.asarray(p_scale, np.float64), np.asarray(q_scale, np.float64)
    else:
        p_std = np.exp(beta * np.asarray(p_scale, np.float64))
        q_std = np.exp(beta * np.asarray(q_scale, np.float64))
    return np.log(q_std / p_std) + (p_std ** 2 + (p_mean - q_mean) ** 2) / (2.0 * q_std ** 2) - 0.5


def vae_loss(pixel_nll, kl_elements, *, batch_size, effective_pixels, beta, gamma=None, masks=None):
    """recon + beta * KL in nats/dim; gamma None, 'scaled' or 'unscaled'; kl_elements: list of (B, V, H, W)."""
    denom = batch_size * effective_pixels
    recon = pixel_nll.sum() / denom
    if masks is not None:
        kl_elements = [kl * np.asarray(mk, np.float64)[None, :, None, None] for kl, mk in zip(kl_elements, masks)]
    per_dim = np.array([kl.sum() / denom for kl in kl_elements])
    per_latent = np.array([kl.sum() / (batch_size * kl[0].size) for kl in kl_elements])
    if gamma is None:
        weights = np.ones(len(kl_elements))
    else:
        a = per_latent if gamma == "scaled" else per_dim
        weights = len(a) * a / a.sum()
    return recon + beta * np.sum(weights * per_dim), per_dim, per_latent, weights
