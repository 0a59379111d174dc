"""Linear and spherical interpolation of per-layer latents."""
import numpy as np
import pytest

from efficient_vdvae_core.interpolation import interpolate, interpolate_layers, interpolation_fractions


def test_endpoints_are_the_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 2, 2)).astype(np.float32), rng.normal(size=(3, 4, 2, 2)).astype(np.float32)
    for method in ("linear", "spherical"):
        np.testing.assert_allclose(interpolate(a, b, 0.0, method), a, atol=1e-6)
        np.testing.assert_allclose(interpolate(a, b, 1.0, method), b, atol=1e-6)
        assert interpolate(a, b, 0.3, method).dtype == np.float32


def test_spherical_keeps_the_norm_and_follows_the_great_circle():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 50)), rng.normal(size=(4, 50))
    b *= (np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))[:, None]  # equal norms per image
    angle = np.arccos((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    for t in (0.25, 0.5, 0.9):
        z = interpolate(a, b, t, "spherical")
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.linalg.norm(a, axis=1), rtol=1e-12)
        to_a = np.arccos(np.clip((z * a).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(a, axis=1)), -1, 1))
        np.testing.assert_allclose(to_a, t * angle, rtol=1e-9)
    mid_linear = interpolate(a, b, 0.5, "linear")
    assert (np.linalg.norm(mid_linear, axis=1) < np.linalg.norm(a, axis=1)).all()  # the chord cuts inside


def test_parallel_and_zero_vectors_fall_back_to_linear():
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    b = np.array([[2.0, 4.0, 6.0], [1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]])
    z = interpolate(a, b, 0.5, "spherical")
    np.testing.assert_allclose(z, 0.5 * (a + b))
    assert np.isfinite(z).all()


def test_layers_and_fractions():
    np.testing.assert_allclose(interpolation_fractions(5), [0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(ValueError):
        interpolation_fractions(1)
    start, end = [np.zeros((2, 3)), np.zeros((2, 1, 1))], [np.ones((2, 3)), np.ones((2, 1, 1))]
    steps = interpolate_layers(start, end, [0.0, 0.5, 1.0], "linear")
    assert len(steps) == 3 and [z.shape for z in steps[1]] == [(2, 3), (2, 1, 1)]
    np.testing.assert_allclose(steps[1][0], 0.5)
    with pytest.raises(ValueError, match="unknown interpolation method"):
        interpolate(start[0], end[0], 0.5, "cubic")
