"""Image stores: indexable collections of raw images, before bit reduction and normalisation.

A store has `len()`, `get(i)` (the raw image: uint8 (H, W, C), or float32 probabilities in [0, 1]
(32, 32, 1) for digit stores), `name(i)` and `tag` (a string naming the store, used to seed the fixed
binarisation). Stores pickle cheaply, so torch DataLoader workers can receive them: a memory-mapped
store pickles as its file path and re-opens the map in the worker.
"""
import os

import numpy as np

from efficient_vdvae_core.data.decode import decode_image

DIGIT_PAD = 2  # 28x28 digits are zero-padded to 32x32
HELDOUT_SEED = 101  # the original's fixed shuffle of the MNIST / CIFAR-10 official test sets


def heldout_halves(n):
    """(val, test) indices of an official test set of n images: the halves of the seed-101 permutation."""
    perm = np.random.RandomState(HELDOUT_SEED).permutation(n)
    return perm[: n // 2], perm[n // 2:]


class ArrayStore:
    """Images in one uint8 array (N, H, W, C), held in memory or memory-mapped from a .npy file."""

    def __init__(self, tag, array=None, *, npy_path=None, names=None):
        if (array is None) == (npy_path is None):
            raise ValueError("give exactly one of array and npy_path")
        self.tag = tag
        self.npy_path = None if npy_path is None else os.fspath(npy_path)
        self._array = array
        self._names = names  # None: '<tag>_<i>'

    @property
    def array(self):
        if self._array is None:
            self._array = np.load(self.npy_path, mmap_mode="r")
        return self._array

    def __len__(self):
        return len(self.array)

    def get(self, i):
        return np.asarray(self.array[i])

    def name(self, i):
        return f"{self.tag}_{i}" if self._names is None else self._names[i]

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.npy_path is not None:
            state["_array"] = None
        return state


class DigitStore:
    """28x28 digit intensities (uint8 0..255 or float 0..1) served as (32, 32, 1) float32 probabilities."""

    def __init__(self, tag, digits, scale):
        self.tag = tag
        self.digits = digits  # (N, 28, 28)
        self.scale = scale    # multiplies a stored value into [0, 1]

    def __len__(self):
        return len(self.digits)

    def get(self, i):
        size = self.digits.shape[1] + 2 * DIGIT_PAD
        probs = np.zeros((size, size, 1), np.float32)
        probs[DIGIT_PAD:-DIGIT_PAD, DIGIT_PAD:-DIGIT_PAD, 0] = self.digits[i] * np.float32(self.scale)
        return probs

    def name(self, i):
        return f"{self.tag}_{i}"


class FolderStore:
    """Image files under a folder (sorted relative paths), decoded (see `decode`) and resized lazily, one per `get`."""

    def __init__(self, tag, root, relpaths, res, channels):
        self.tag = tag
        self.root = os.fspath(root)
        self.relpaths = relpaths
        self.res = res
        self.channels = channels

    def __len__(self):
        return len(self.relpaths)

    def path(self, i):
        return os.path.join(self.root, self.relpaths[i])

    def get(self, i):
        return decode_image(self.path(i), self.res, self.channels)

    def name(self, i):
        return self.relpaths[i]
