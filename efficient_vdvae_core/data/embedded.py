"""Offline datasets built from data bundled with scikit-image and scikit-learn (no download).

* 'embedded_rgb': square crops of the photographs in `skimage.data`, resized (bilinear) to target_res.
  The crop boxes are fixed (seed 2022): train crops come from the left 3/4 of each photograph,
  val/test crops from the right 1/4, so no held-out pixel is seen in training.
  4000 train, 500 val and 500 test crops.
* 'embedded_digits': scikit-learn's 1797 8x8 digits (`load_digits`, 17 grey levels), upscaled (bicubic)
  to 28x28 and sharpened by a logistic curve into probabilities that are near 0 or 1 except on stroke
  edges, as MNIST's are, so a Bernoulli draw is a clean digit rather than speckle; served 32x32 like MNIST.
  Seed-101 held-out set of 500: 250 val, 250 test. `digit_labels()` gives the class of every image.
"""
import functools

import numpy as np
from PIL import Image

from efficient_vdvae_core.data.decode import MODES
from efficient_vdvae_core.data.stores import HELDOUT_SEED, DigitStore

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
CROP_SEED = 2022
N_RGB = {"train": 4000, "heldout": 1000}
TRAIN_FRACTION = 0.75   # of each photograph's width, from the left
MIN_CROP, MAX_CROP = 32, 160  # crop side in photograph pixels
DIGITS_HELDOUT = 500
DIGIT_SIZE = 28
STROKE_LEVEL = 0.5   # upscaled intensity that becomes probability 0.5
STROKE_SHARPNESS = 20.0  # slope of the logistic curve per unit of intensity


@functools.lru_cache(maxsize=None)
def photo(name):
    """uint8 (H, W, 3) photograph from skimage.data, read once per process."""
    import skimage.data
    return np.ascontiguousarray(getattr(skimage.data, name)())


def crop_boxes(pool):
    """int (N, 4) rows (photo index, top, left, side) of the fixed crops of 'train' or 'heldout'."""
    rng = np.random.default_rng([CROP_SEED, 0 if pool == "train" else 1])
    boxes = []
    for k in range(N_RGB[pool]):
        p = k % len(PHOTOS)
        height, width = photo(PHOTOS[p]).shape[:2]
        split = int(width * TRAIN_FRACTION)
        x0, x1 = (0, split) if pool == "train" else (split, width)
        side = int(rng.integers(MIN_CROP, min(MAX_CROP, height, x1 - x0) + 1))
        top = int(rng.integers(0, height - side + 1))
        left = x0 + int(rng.integers(0, x1 - x0 - side + 1))
        boxes.append((p, top, left, side))
    return np.array(boxes, np.int64)


class CropStore:
    """Fixed square crops of the bundled photographs, resized to res x res on `get`."""

    def __init__(self, tag, boxes, res, channels):
        self.tag = tag
        self.boxes = boxes
        self.res = res
        self.channels = channels

    def __len__(self):
        return len(self.boxes)

    def get(self, i):
        p, top, left, side = self.boxes[i]
        crop = Image.fromarray(photo(PHOTOS[p])[top:top + side, left:left + side]).convert(MODES[self.channels])
        if side != self.res:
            crop = crop.resize((self.res, self.res), Image.BILINEAR)
        return np.asarray(crop, np.uint8).reshape(self.res, self.res, self.channels)

    def name(self, i):
        return f"{self.tag}_{i}"


def rgb_part(part, res, channels):
    """(store, indices) of 'train', 'val' or 'test' of embedded_rgb."""
    if part == "train":
        return CropStore("embedded_rgb", crop_boxes("train"), res, channels), np.arange(N_RGB["train"])
    half = N_RGB["heldout"] // 2
    indices = np.arange(half) if part == "val" else np.arange(half, N_RGB["heldout"])
    return CropStore("embedded_rgb_heldout", crop_boxes("heldout"), res, channels), indices


@functools.lru_cache(maxsize=1)
def _load_digits():
    from sklearn.datasets import load_digits
    return load_digits()


def stroke_probabilities(intensity):
    """Intensities in [0, 1] -> probabilities: a logistic curve around STROKE_LEVEL, rescaled to 0 at 0 and 1 at 1."""
    def curve(v):
        return 1.0 / (1.0 + np.exp(-STROKE_SHARPNESS * (np.asarray(v, np.float64) - STROKE_LEVEL)))
    probs = (curve(intensity) - curve(0.0)) / (curve(1.0) - curve(0.0))
    return np.clip(probs, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _digits():
    small = _load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    big = np.stack([np.asarray(Image.fromarray(d).resize((DIGIT_SIZE, DIGIT_SIZE), Image.BICUBIC))
                    for d in small])
    return stroke_probabilities(big)


def digit_labels():
    """int64 (1797,) class 0-9 of every embedded digit, indexed like the store of `digits_part`."""
    return _load_digits().target.astype(np.int64)


def digits_part(part):
    """(store, indices) of 'train', 'val' or 'test' of embedded_digits (one store, disjoint indices)."""
    digits = _digits()
    perm = np.random.RandomState(HELDOUT_SEED).permutation(len(digits))
    heldout = perm[:DIGITS_HELDOUT]
    if part == "train":
        indices = np.setdiff1d(np.arange(len(digits)), heldout)
    elif part == "val":
        indices = heldout[: DIGITS_HELDOUT // 2]
    else:
        indices = heldout[DIGITS_HELDOUT // 2:]
    return DigitStore("embedded_digits", digits, scale=1.0), indices
