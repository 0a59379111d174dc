"""Fréchet distance against closed forms, Inception Score limits, k-NN precision/recall."""
import math

import numpy as np
import pytest
from scipy.stats import ortho_group

from efficient_vdvae_core import sample_quality as sq


def test_frechet_distance_of_diagonal_gaussians():
    """Diagonal covariances: |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2 with s the standard deviations."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.1, 0.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert sq.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_rotation_invariant_and_matches_one_dimension():
    rotation = ortho_group.rvs(4, random_state=0)
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.3, 2.0, 1.0, 1.0])
    cov1, cov2 = rotation @ np.diag(s1 ** 2) @ rotation.T, rotation @ np.diag(s2 ** 2) @ rotation.T
    mu = rotation @ np.array([1.0, 0.0, 0.0, 2.0])
    assert sq.frechet_distance(mu, cov1, np.zeros(4), cov2) == pytest.approx(5.0 + ((s1 - s2) ** 2).sum(), rel=1e-8)
    assert sq.frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_distance_of_singular_covariances_uses_the_offset():
    """Fewer samples than dimensions: singular covariances still give a finite, near-zero self-distance."""
    features = np.random.default_rng(0).normal(size=(5, 20))
    d = sq.frechet_distance_of_features(features, features)
    assert math.isfinite(d) and abs(d) < 1e-3
    with pytest.raises(ValueError, match="mismatched"):
        sq.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="at least 2"):
        sq.feature_statistics(features[:1])


def test_frechet_distance_of_samples_estimates_the_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(0.5, 2.0, size=(20000, 3))
    assert sq.frechet_distance_of_features(a, b) == pytest.approx(3 * 0.25 + 3 * 1.0, rel=0.05)
    assert abs(sq.frechet_distance_of_features(a, a)) < 1e-8


def test_inception_score_limits():
    one_image = np.tile(np.array([[2.0, -1.0, 0.5, 3.0]]), (20, 1))
    mean, std = sq.inception_score(one_image, splits=4)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    confident_distinct = np.log(np.eye(10) * (1 - 1e-9) + 1e-10)  # log-probabilities, one class per image
    assert sq.inception_score(np.tile(confident_distinct, (3, 1)), splits=3)[0] == pytest.approx(10.0, rel=1e-6)
    with pytest.raises(ValueError, match="splits"):
        sq.inception_score(one_image[:3], splits=4)


def test_precision_recall():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 8))
    assert sq.precision_recall(real, real, k=3) == (1.0, 1.0)
    far = real + 100.0
    assert sq.precision_recall(real, far, k=3) == (0.0, 0.0)
    collapsed = np.repeat(real[:5], 10, axis=0) + rng.normal(scale=1e-3, size=(50, 8))  # five tight clusters
    precision, recall = sq.precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.1  # precise, but most real images are missed
    radii = sq.knn_radii_squared(np.array([[0.0], [1.0], [3.0], [7.0]]), k=1, chunk_rows=3)
    np.testing.assert_allclose(radii, [1.0, 1.0, 4.0, 16.0])


def test_file_sha256(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"abc")
    assert sq.file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
