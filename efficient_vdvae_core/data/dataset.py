"""Splits and preprocessing: `make_dataset(data_cfg, split, seed=...)` -> `ImageDataset`.

Splits (all deterministic, independent of worker and process counts):
* 'train'     the whole train part in its stable order (file order / array order); the loaders permute it
              per epoch with `default_rng([seed, epoch])`;
* 'encode'    the same images, same order, with names;
* 'div_stats' the first round(N * subset_ratio) images of the train part permuted by `default_rng([seed, 2])`;
* 'val'       the validation part permuted by `default_rng([seed, 1])`, then its first `n_samples`;
* 'test'      the part used by reconstruction (synthesis_data_path, or the second half of the seed-101
              permutation of the official MNIST / CIFAR-10 test set), in its stable order.
`n_samples` truncates any split.

A folder image that passed the checks when the dataset was opened and fails to decode when read is an
`UnreadableImageError` (one line naming the file); under [data] bad_files = 'skip', the 'train', 'val' and
'div_stats' splits read the next readable image of the split in its place (one warning per file), while
'encode' and 'test', whose outputs are named per image, still refuse.
"""
import sys
import zlib

import numpy as np

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.data.decode import UnreadableImageError
from efficient_vdvae_core.data.sources import open_part
from efficient_vdvae_core.errors import UserError

SPLIT_PART = {"train": "train", "encode": "train", "div_stats": "train", "val": "val", "test": "test"}
SPLITS = tuple(SPLIT_PART)
SUBSTITUTABLE_SPLITS = ("train", "val", "div_stats")  # splits whose images are not saved under their names
VAL_STREAM, DIV_STATS_STREAM = 1, 2
FIXED_BINARIZATION_SEED = 101


class ImageDataset:
    """One split: `load(i, rng)` is the preprocessed float32 (H, W, C) image, `raw(i)` the stored one.

    MoL sources: uint8 -> bit reduction -> horizontal flip (p = 0.5; 'train' only, if enabled) ->
    (x - 127.5) / 127.5. Binarized sources: {0, 1}; 'train' draws a new Bernoulli sample from `rng` on
    every call, other splits return a fixed sample per image (seeded by the image, not by the run).
    """

    def __init__(self, store, indices, *, split, num_bits, random_horizontal_flip, binarized,
                 substitute_unreadable=False):
        self.store = store
        self.indices = np.asarray(indices, np.int64)
        self.split = split
        self.substitute_unreadable = substitute_unreadable
        self._substituted = set()  # paths already reported in this process
        self.binarized = binarized
        self.flip = bool(random_horizontal_flip) and split == "train" and not binarized
        self.level_step = 2.0 ** (8 - num_bits)  # width of one reduced-bit level on the 8-bit scale
        self._names = None

    def __len__(self):
        return len(self.indices)

    def name(self, index):
        """Stable name of image `index`: its file path in the folder, or '<source>_<array index>'."""
        return self.store.name(int(self.indices[index]))

    @property
    def names(self):
        """Names of all images of the split, in order."""
        if self._names is None:
            self._names = [self.name(i) for i in range(len(self))]
        return self._names

    def raw(self, index):
        """The stored image: uint8 (H, W, C), or float32 probabilities (32, 32, 1) for binarized sources."""
        try:
            return self.store.get(int(self.indices[index]))
        except UnreadableImageError as exc:
            if not self.substitute_unreadable:
                raise
            return self._substitute(index, exc)

    def _substitute(self, index, exc):
        """The next readable image of the split after `index` (wrapping), read in place of an unreadable one."""
        for step in range(1, len(self)):
            other = (index + step) % len(self)
            try:
                image = self.store.get(int(self.indices[other]))
            except UnreadableImageError:
                continue
            if exc.path not in self._substituted:
                self._substituted.add(exc.path)
                print(f"warning: {exc.path}: not a readable image ({exc.reason}); [data] bad_files = 'skip': "
                      f"reading {self.name(other)} in its place", file=sys.stderr, flush=True)
            return image
        raise exc

    def load(self, index, rng=None):
        """Preprocessed float32 (H, W, C) image; `rng` (numpy Generator) drives flips and dynamic binarisation."""
        if (self.flip or (self.binarized and self.split == "train")) and rng is None:
            raise ValueError(f"split {self.split!r} needs an rng for its random augmentation")
        image = self.raw(index)
        if self.binarized:
            if self.split != "train":
                key = zlib.crc32(self.store.tag.encode())
                rng = np.random.default_rng([FIXED_BINARIZATION_SEED, key, int(self.indices[index])])
            return (rng.random(image.shape, dtype=np.float32) < image).astype(np.float32)
        x = image.astype(np.float32)
        if self.level_step != 1:
            x = np.floor(x / self.level_step) * self.level_step
        if self.flip and rng.random() < 0.5:
            x = x[:, ::-1]
        return np.ascontiguousarray((x - 127.5) / 127.5, dtype=np.float32)


def make_dataset(data_cfg, split, *, seed, n_samples=None, subset_ratio=None):
    """The `split` ('train', 'val', 'test', 'div_stats', 'encode') of the dataset of a DataConfig."""
    if split not in SPLIT_PART:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    store, indices = open_part(data_cfg, SPLIT_PART[split])
    if split == "val":
        indices = indices[np.random.default_rng([seed, VAL_STREAM]).permutation(len(indices))]
    elif split == "div_stats":
        if subset_ratio is None or not 0 < subset_ratio <= 1:
            raise ValueError(f"split 'div_stats' needs 0 < subset_ratio <= 1, got {subset_ratio!r}")
        count = max(1, round(len(indices) * subset_ratio))
        indices = indices[np.random.default_rng([seed, DIV_STATS_STREAM]).permutation(len(indices))[:count]]
    if n_samples is not None:
        if not 1 <= n_samples <= len(indices):
            raise UserError(f"{n_samples} images asked from the {split} split of {data_cfg.dataset_source}, "
                            f"which has {len(indices)}; ask for at most {len(indices)} "
                            "(e.g. [val] n_samples_for_validation)")
        indices = indices[:n_samples]
    return ImageDataset(store, indices, split=split, num_bits=data_cfg.num_bits,
                        random_horizontal_flip=data_cfg.random_horizontal_flip, binarized=is_binarized(data_cfg),
                        substitute_unreadable=data_cfg.bad_files == "skip" and split in SUBSTITUTABLE_SPLITS)
