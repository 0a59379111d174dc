"""The classifier score of digit images: real digits score high, noise low, fits are seeded."""
import numpy as np
import pytest

from efficient_vdvae_core import classifier_score as cs
from tests.conftest import egs_config


@pytest.fixture(scope="module")
def digits_data():
    return egs_config("tiny_binarized").data


@pytest.fixture(scope="module")
def clf(digits_data):
    return cs.fit_digit_classifier(digits_data, seed=3)


def test_real_held_out_digits_score_high(clf, digits_data):
    real = cs.real_images(digits_data)
    assert real.shape == (250, 28, 28, 1) and set(np.unique(real)) <= {0, 255}
    assert cs.real_score(clf, digits_data) >= 0.8
    assert cs.real_score(clf, digits_data, split="val", n=100) >= 0.8


def test_noise_and_non_digits_score_low(clf, digits_data):
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    sparse = ((rng.random((200, 28, 28, 1)) < 0.15) * 255).astype(np.uint8)
    blank, full = np.zeros((5, 28, 28), np.uint8), np.full((5, 28, 28), 255, np.uint8)
    for images in (uniform, sparse, blank, full):
        assert cs.classifier_score(clf, images) <= 0.05
    real = cs.real_images(digits_data, n=100)
    overlays = np.maximum(real, np.roll(real, 1, axis=0))  # two digits drawn on top of each other
    assert cs.classifier_score(clf, overlays) < cs.classifier_score(clf, real) - 0.4


def test_the_fit_is_deterministic_given_the_seed(clf, digits_data):
    images = cs.real_images(digits_data, n=50)
    again = cs.fit_digit_classifier(digits_data, seed=3)
    assert np.array_equal(cs.digit_probabilities(clf, images), cs.digit_probabilities(again, images))


def test_threshold(clf, digits_data):
    images = cs.real_images(digits_data, n=50)
    assert cs.classifier_score(clf, images, threshold=0.0) == 1.0
    assert cs.classifier_score(clf, images, threshold=0.99) <= cs.classifier_score(clf, images)


def test_classes_covered_counts_diversity(clf, digits_data):
    real = cs.real_images(digits_data)
    assert cs.classes_covered(clf, real) == 10
    assert cs.classes_covered(clf, np.repeat(real[:1], 20, axis=0)) <= 1  # one image drawn 20 times
    classes = cs.recognised_classes(clf, real[:20])
    assert classes.shape == (20,) and set(classes.tolist()) <= set(range(-1, 10))


def test_refuses_what_it_cannot_score(clf):
    with pytest.raises(ValueError, match="28, 28"):
        cs.classifier_score(clf, np.zeros((2, 32, 32), np.uint8))
    rgb = egs_config("tiny").data
    assert not cs.supports(rgb)
    with pytest.raises(ValueError, match="embedded_digits"):
        cs.fit_digit_classifier(rgb)
