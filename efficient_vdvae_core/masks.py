"""Variate masks for latent pruning, built from div_stats."""
import numpy as np


def variate_masks(div_stats, quantile):
    """Boolean masks (N_lat, V): True for the (layer, variate) pairs kept (posterior used).

    `div_stats` (N_lat, V) holds the average KL per latent element in bits. A pair is kept when
    its value is strictly above numpy.quantile(div_stats, 1 - quantile) (linear interpolation),
    so roughly the `quantile` fraction with the largest KL survives. quantile = 1 keeps every
    pair, also those tied with the minimum (the strict test alone would drop them).
    """
    stats = np.asarray(div_stats)
    if not np.issubdtype(stats.dtype, np.floating):
        stats = stats.astype(np.float64)
    if stats.ndim != 2 or stats.size == 0:
        raise ValueError(f"variate_masks: div_stats must be a non-empty (N_lat, V) array, got shape {stats.shape}")
    if not np.all(np.isfinite(stats)):
        raise ValueError("variate_masks: div_stats contains NaN or infinite values")
    if not 0 < quantile <= 1:
        raise ValueError(f"variate_masks: quantile must be in (0, 1], got {quantile}")
    if quantile >= 1:
        return np.ones(stats.shape, dtype=bool)
    return stats > np.quantile(stats, 1.0 - quantile)


def kept_count(masks):
    """Number of kept (True) (layer, variate) pairs."""
    return int(np.count_nonzero(np.asarray(masks)))
