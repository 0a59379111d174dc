"""The training data stream as a pure function of (seed, step): which images, in which order, with which rng.

Step s belongs to epoch e = s // steps_per_epoch, whose order is `default_rng([seed, e]).permutation(N)`;
the global batch of the step is the k-th slice of it (k = s % steps_per_epoch), the images that do not
fill a last batch are left out of the epoch. Each image's augmentation (flip, dynamic binarisation) uses
`default_rng([seed, e, index])`. Every framework, process count and worker count reads the same stream,
and resuming at a step continues it. A replica r of W takes the elements r, r + W, ... of a global batch
(PyTorch), or a contiguous block of it (JAX hosts); the union is the one-process batch either way.
"""
import numpy as np


def steps_per_epoch(n_images, global_batch):
    """Whole global batches per epoch (>= 1 needs n_images >= global_batch)."""
    return n_images // global_batch


def epoch_order(n_images, seed, epoch):
    """The image order of one epoch: a permutation of range(n_images)."""
    return np.random.default_rng([seed, epoch]).permutation(n_images)


def item_rng(seed, epoch, index):
    """The numpy Generator of image `index`'s augmentation in `epoch`."""
    return np.random.default_rng([seed, epoch, index])


class TrainIndexStream:
    """Global batches of (index, epoch) keys for steps start_step, start_step + 1, ... (endless)."""

    def __init__(self, n_images, global_batch, *, seed, start_step=0):
        if global_batch < 1 or n_images < global_batch:
            raise ValueError(f"need 1 <= global batch <= number of images, got {global_batch} and {n_images}")
        self.n_images = n_images
        self.global_batch = global_batch
        self.seed = seed
        self.start_step = start_step
        self.steps_per_epoch = steps_per_epoch(n_images, global_batch)
        self._epoch, self._order = None, None

    def batch(self, step):
        """(indices int64 (B,), epoch) of the global batch of `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.n_images, self.seed, epoch)
        return self._order[k * self.global_batch:(k + 1) * self.global_batch], epoch

    def keys(self, step):
        """[(index, epoch)] of the global batch of `step`."""
        indices, epoch = self.batch(step)
        return [(int(i), epoch) for i in indices]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.keys(step)
            step += 1
