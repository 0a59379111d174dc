"""Linear and spherical interpolation of per-layer latents, per image over its flattened latent (NumPy).

A latent layer of a batch is an array (B, ...) in any layout; each image's latent of that layer is one
vector (its flattened entries). Spherical interpolation (slerp, Shoemake 1985; White 2016 for
generative models) follows the great circle between the directions of the two vectors, so for two
vectors of equal norm the norm stays constant; where the vectors are (anti)parallel, or one is zero,
the angle is undefined or meaningless and it falls back to linear interpolation. Arithmetic is float64;
results have the inputs' dtype.
"""
import numpy as np

METHODS = ("linear", "spherical")
PARALLEL_SIN_TOLERANCE = 1e-6  # |sin(angle)| below this: lerp instead of slerp


def interpolation_fractions(n_points):
    """n_points >= 2 fractions from 0 to 1 inclusive, evenly spaced."""
    if n_points < 2:
        raise ValueError(f"an interpolation needs at least 2 points (got {n_points})")
    return np.linspace(0.0, 1.0, n_points)


def lerp(start, end, fraction):
    """(1 - t) * start + t * end for rows (B, D) in float64."""
    return (1.0 - fraction) * start + fraction * end


def slerp(start, end, fraction):
    """Spherical interpolation of rows (B, D) in float64; rows that are (anti)parallel or zero are lerped."""
    norms = np.linalg.norm(start, axis=1) * np.linalg.norm(end, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    cos = np.clip((start * end).sum(axis=1) / safe, -1.0, 1.0)
    angle = np.arccos(cos)
    sin = np.sin(angle)
    spherical = (norms > 0) & (np.abs(sin) > PARALLEL_SIN_TOLERANCE)
    sin = np.where(spherical, sin, 1.0)
    w_start = np.where(spherical, np.sin((1.0 - fraction) * angle) / sin, 1.0 - fraction)[:, None]
    w_end = np.where(spherical, np.sin(fraction * angle) / sin, fraction)[:, None]
    return w_start * start + w_end * end


def interpolate(start, end, fraction, method):
    """Interpolate one layer's latents (B, ...) at `fraction` in [0, 1] with 'linear' or 'spherical'."""
    if method not in METHODS:
        raise ValueError(f"unknown interpolation method {method!r} (known: {', '.join(METHODS)})")
    start, end = np.asarray(start), np.asarray(end)
    if start.shape != end.shape:
        raise ValueError(f"latents to interpolate have shapes {start.shape} and {end.shape}")
    rows = lambda a: a.reshape(a.shape[0], -1).astype(np.float64)  # (B, D)
    combine = lerp if method == "linear" else slerp
    return combine(rows(start), rows(end), float(fraction)).reshape(start.shape).astype(start.dtype)


def interpolate_layers(start_layers, end_layers, fractions, method):
    """For every fraction, the list of interpolated latents of every layer (lists of (B, ...) arrays)."""
    if len(start_layers) != len(end_layers):
        raise ValueError(f"{len(start_layers)} and {len(end_layers)} latent layers to interpolate")
    return [[interpolate(a, b, t, method) for a, b in zip(start_layers, end_layers)] for t in fractions]
