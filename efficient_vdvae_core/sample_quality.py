"""Sample-quality metrics over detector features (NumPy/SciPy): FID, Inception Score, k-NN precision/recall.

- Fréchet distance (Heusel et al. 2017) between Gaussians fitted to two feature sets:
  |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in squared feature units.
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), over `splits` parts of the set,
  reported as mean and standard deviation over the parts; 1 means no diversity or no confidence.
- Precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around its
  points whose radius is the distance to the k-th nearest other point of the set; precision = fraction of
  generated points inside the real manifold, recall = fraction of real points inside the generated one.
Everything is float64; distances are computed in row chunks so memory stays bounded.
"""
import hashlib
import math
import warnings

import numpy as np
from scipy import linalg
from scipy.special import log_softmax, logsumexp

COVARIANCE_OFFSET = 1e-6  # added to both diagonals when the product's square root fails (singular covariances)
SQRTM_RESIDUAL_TOLERANCE = 1e-6  # max |root @ root - A| / max |A| accepted from sqrtm without the offset
IMAGINARY_TOLERANCE = 1e-3  # largest |imaginary part| on the diagonal of sqrtm accepted as rounding
DISTANCE_CHUNK_ROWS = 256  # rows of a distance block: 256 x N float64 (100 MB at N = 50k)


def feature_statistics(features):
    """(mean (D,), covariance (D, D)) in float64 of features (N, D), N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _checked_sqrtm(matrix):
    """scipy's matrix square root, or None if it is not finite or does not square back to `matrix`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular input: checked below
        root = linalg.sqrtm(matrix)
    if not np.isfinite(root).all():
        return None
    scale = max(np.abs(matrix).max(), np.finfo(np.float64).tiny)
    return root if np.abs(root @ root - matrix).max() <= SQRTM_RESIDUAL_TOLERANCE * scale else None


def frechet_distance(mean1, cov1, mean2, cov2):
    """Fréchet distance between N(mean1, cov1) and N(mean2, cov2).

    If the matrix square root of cov1 @ cov2 is not finite or inaccurate (singular covariances, e.g. fewer
    samples than dimensions), both covariances get COVARIANCE_OFFSET on their diagonal; an imaginary part larger than
    IMAGINARY_TOLERANCE is an error, a smaller one is rounding and dropped.
    """
    mean1, mean2 = np.atleast_1d(np.asarray(mean1, np.float64)), np.atleast_1d(np.asarray(mean2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != (mean1.size, mean1.size):
        raise ValueError(f"mismatched statistics: means {mean1.shape} and {mean2.shape}, "
                         f"covariances {cov1.shape} and {cov2.shape}")
    root = _checked_sqrtm(cov1 @ cov2)
    if root is None:
        offset = COVARIANCE_OFFSET * np.eye(mean1.size)
        root = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(root):
        imaginary = np.abs(np.diagonal(root).imag).max()
        if imaginary > IMAGINARY_TOLERANCE:
            raise ValueError(f"the square root of the covariance product has imaginary part {imaginary:.3g}")
        root = root.real
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(root))


def frechet_distance_of_features(features1, features2):
    """Fréchet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def inception_score(class_logits, splits=10):
    """(mean, std) over `splits` parts of exp(mean_x KL(p(y|x) || p(y))); rows are logits or log-probabilities."""
    log_p = log_softmax(np.asarray(class_logits, np.float64), axis=1)  # (N, C)
    if len(log_p) < splits:
        raise ValueError(f"{len(log_p)} images for {splits} splits: need at least one image per split")
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = logsumexp(part, axis=0) - math.log(len(part))  # log p(y) over the part
        p = np.exp(part)
        kl = np.where(p > 0, p * (part - log_marginal), 0.0).sum(axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a, b):
    """(len(a), len(b)) squared Euclidean distances, >= 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii_squared(features, k=3, chunk_rows=DISTANCE_CHUNK_ROWS):
    """Squared distance of every point to its k-th nearest other point of the same set (N,)."""
    features = np.asarray(features, np.float64)
    if not 1 <= k < len(features):
        raise ValueError(f"k = {k} nearest neighbours need more than k points (got {len(features)})")
    radii = [np.partition(_squared_distances(features[i:i + chunk_rows], features), k, axis=1)[:, k]
             for i in range(0, len(features), chunk_rows)]  # column 0 of the partition is the point itself
    return np.concatenate(radii)


def manifold_coverage(points, manifold, radii_squared, chunk_rows=DISTANCE_CHUNK_ROWS):
    """Fraction of `points` within the radius of at least one point of `manifold`."""
    points, manifold = np.asarray(points, np.float64), np.asarray(manifold, np.float64)
    inside = [(_squared_distances(points[i:i + chunk_rows], manifold) <= radii_squared[None, :]).any(axis=1)
              for i in range(0, len(points), chunk_rows)]
    return float(np.concatenate(inside).mean())


def precision_recall(real_features, fake_features, k=3):
    """(precision, recall) of generated features against real ones with the k-NN manifolds."""
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    precision = manifold_coverage(fake, real, knn_radii_squared(real, k))
    recall = manifold_coverage(real, fake, knn_radii_squared(fake, k))
    return precision, recall


def file_sha256(path):
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
