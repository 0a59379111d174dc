"""Classifier score of generated digits: the share that a classifier of real digits recognises confidently.

    clf = fit_digit_classifier(config.data, seed=config.run.seed)   # a few seconds on one core
    generated = classifier_score(clf, samples_uint8)                # (N, 28, 28[, 1]) uint8, 0 = paper
    real = real_score(clf, config.data)                             # the same share for real test digits
    covered = classes_covered(clf, samples_uint8)                   # diversity: digit classes drawn

The classifier is a small MLP on 7x7 average-pooled pixels (4x4 pixel cells, so stroke shape counts and
pixel speckle does not), fitted on the embedded digits' train split only, each image binarised a few
times as training sees it. It has an eleventh class, "not a digit", fitted on images that are not one
digit: Bernoulli noise of any density, smooth random blobs, digits whose 4x4 cells are shuffled and
overlays of two digits of different classes. Without it a pixel classifier calls uniform noise a digit
with confidence (linear logits grow away from the data). An image counts as recognised when one digit
class gets probability >= CONFIDENCE. The real score uses the test split, which the classifier never
sees; generated images should be scored the same way (hard Bernoulli samples, or means, as uint8).
"""
import warnings

import numpy as np
from scipy import ndimage

from efficient_vdvae_core.data import embedded, make_dataset
from efficient_vdvae_core.metrics import MNIST_CROP, MNIST_SIZE

CONFIDENCE = 0.9  # probability of one digit class at which an image counts as recognised
NOT_A_DIGIT = 10  # the eleventh class
CELL = 4  # side of the pooled pixel cells: 28x28 -> 7x7 features
DRAWS = 3  # Bernoulli draws of every train digit
HIDDEN_UNITS = 64
MAX_ITER = 150
DATA_SALT = 7  # purpose salt of the classifier's random draws
SCORE_TAGS = ("Quality/classifier_score", "Quality/classifier_score_real")  # metrics.jsonl / TensorBoard
SUPPORTED_SOURCES = ("embedded_digits",)  # sources with digit labels


def supports(data_cfg):
    """True when the classifier score is defined for this data (labelled digits)."""
    return data_cfg.dataset_source in SUPPORTED_SOURCES


def pooled_features(images):
    """uint8 (N, 28, 28) or (N, 28, 28, 1) images -> float32 (N, 49) ink fractions of their 4x4 cells."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise ValueError(f"digit images must be (N, {MNIST_SIZE}, {MNIST_SIZE}[, 1]); got {images.shape}")
    side = MNIST_SIZE // CELL
    cells = images.astype(np.float32).reshape(len(images), side, CELL, side, CELL) / 255.0
    return cells.mean(axis=(2, 4)).reshape(len(images), side * side)


def _require(data_cfg):
    if not supports(data_cfg):
        raise ValueError(f"the classifier score needs labelled digits (dataset_source in {SUPPORTED_SOURCES}); "
                         f"got {data_cfg.dataset_source!r}")


def _train_digits(data_cfg, seed):
    """(probabilities float32 (N, 28, 28), labels int64 (N,)) of the train split."""
    train = make_dataset(data_cfg, "train", seed=seed)
    probs = np.stack([train.raw(i)[MNIST_CROP, MNIST_CROP, 0] for i in range(len(train))])
    return probs, embedded.digit_labels()[train.indices]


def _shuffled_cells(digits, rng):
    side = MNIST_SIZE // CELL
    cells = digits.reshape(-1, side, CELL, side, CELL).transpose(0, 1, 3, 2, 4).reshape(len(digits), side * side,
                                                                                      CELL, CELL)
    cells = rng.permuted(cells, axis=1)
    return cells.reshape(-1, side, side, CELL, CELL).transpose(0, 1, 3, 2, 4).reshape(digits.shape)


def not_digit_images(probs, labels, n, rng):
    """float32 (about n, 28, 28) {0, 1} images of the "not a digit" class, four kinds in equal numbers."""
    k = n // 4
    size = (k, MNIST_SIZE, MNIST_SIZE)
    noise = rng.random(size) < rng.uniform(0.02, 0.7, (k, 1, 1))
    smooth = np.stack([ndimage.gaussian_filter(rng.random(size[1:]), s) for s in rng.uniform(1.0, 3.0, k)])
    levels = np.array([np.quantile(b, q) for b, q in zip(smooth, rng.uniform(0.5, 0.9, k))])
    blobs = smooth > levels[:, None, None]
    draws = rng.random(size) < probs[rng.integers(0, len(probs), k)]
    shuffled = _shuffled_cells(draws, rng)
    a, b = rng.integers(0, len(probs), (2, k))
    a, b = a[labels[a] != labels[b]], b[labels[a] != labels[b]]
    overlays = rng.random((len(a),) + size[1:]) < np.maximum(probs[a], probs[b])
    return np.concatenate([noise, blobs, shuffled, overlays]).astype(np.float32)


def fit_digit_classifier(data_cfg, seed=0):
    """A fitted scikit-learn pipeline (scaler + MLP, classes 0-9 and NOT_A_DIGIT) for uint8 28x28 digits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _require(data_cfg)
    rng = np.random.default_rng([seed, DATA_SALT])
    probs, labels = _train_digits(data_cfg, seed)
    digits = np.concatenate([rng.random(probs.shape) < probs for _ in range(DRAWS)]).astype(np.float32)
    others = not_digit_images(probs, labels, len(probs), rng)
    images = np.concatenate([digits, others]) * 255.0
    targets = np.concatenate([np.tile(labels, DRAWS), np.full(len(others), NOT_A_DIGIT)])
    clf = make_pipeline(StandardScaler(), MLPClassifier((HIDDEN_UNITS,), alpha=1e-2, max_iter=MAX_ITER,
                                                        random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(pooled_features(images.astype(np.uint8)), targets)
    return clf


def digit_probabilities(clf, images):
    """float (N, 10) probabilities of the digit classes 0-9 of uint8 (N, 28, 28[, 1]) images."""
    probs = clf.predict_proba(pooled_features(images))
    columns = [list(clf.classes_).index(c) for c in range(NOT_A_DIGIT)]
    return probs[:, columns]


def recognised_classes(clf, images, threshold=CONFIDENCE):
    """int (N,) digit class of each image given one with probability >= threshold, else -1."""
    probs = digit_probabilities(clf, images)
    return np.where(probs.max(axis=1) >= threshold, probs.argmax(axis=1), -1)


def classifier_score(clf, images, threshold=CONFIDENCE):
    """Share of uint8 (N, 28, 28[, 1]) images given one digit class with probability >= threshold."""
    return float((recognised_classes(clf, images, threshold) >= 0).mean())


def classes_covered(clf, images, threshold=CONFIDENCE):
    """How many of the 10 digit classes at least one image is recognised as (1 for a model that draws one digit)."""
    classes = recognised_classes(clf, images, threshold)
    return int(np.unique(classes[classes >= 0]).size)


def real_images(data_cfg, split="test", n=None):
    """uint8 (N, 28, 28, 1) real digits of `split` in its fixed binarisation (0 or 255)."""
    _require(data_cfg)
    part = make_dataset(data_cfg, split, seed=0, n_samples=n)
    images = np.stack([part.load(i)[MNIST_CROP, MNIST_CROP] for i in range(len(part))])
    return (images * 255).astype(np.uint8)


def real_score(clf, data_cfg, split="test", n=None, threshold=CONFIDENCE):
    """classifier_score of real held-out digits (the test split by default), for comparison."""
    return classifier_score(clf, real_images(data_cfg, split, n), threshold)
