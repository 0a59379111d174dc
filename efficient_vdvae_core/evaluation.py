"""Batches of a fixed split for evaluation and synthesis, and the exact metric sums over them.

A split of N images is read in global batches of a fixed size (a multiple of the replica count, so one
compiled shape serves every batch); the last batch is padded by repeating its last image and the
padding rows carry no weight. Process p of P takes the contiguous block p of every global batch. The
metrics are sums of per-image values over the real rows, added over processes, then divided once: an
exact mean over the split, the same for any batch size, process or device count.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from efficient_vdvae_core.metrics import LN2


@dataclass(frozen=True)
class EvalRows:
    """This process's rows of one global batch of a split."""
    index: int  # batch number, 0-based
    start: int  # index in the split of the global batch's first image
    images: np.ndarray  # int64 (b,): image index in the split of each row (padding repeats the last image)
    valid: np.ndarray  # bool (b,): False for padding rows
    stop: int  # index after the global batch's last real image

    @property
    def n_valid(self):
        return int(self.valid.sum())


class EvalPlan:
    """The global batches of a split of `n_images`, and this process's rows of each."""

    def __init__(self, n_images, batch_size, *, n_shards=1, n_processes=1, process_index=0):
        if n_images < 1:
            raise ValueError(f"EvalPlan: need at least one image, got {n_images}")
        if n_shards % n_processes:
            raise ValueError(f"EvalPlan: {n_shards} replicas do not split over {n_processes} processes")
        self.n_images = n_images
        self.batch_size = math.ceil(batch_size / n_shards) * n_shards  # global rows per batch
        self.rows_per_process = self.batch_size // n_processes
        self.process_index = process_index

    def __len__(self):
        return math.ceil(self.n_images / self.batch_size)

    def __iter__(self):
        for index, start in enumerate(range(0, self.n_images, self.batch_size)):
            stop = min(start + self.batch_size, self.n_images)
            rows = np.arange(start, start + self.batch_size)
            mine = rows[self.process_index * self.rows_per_process:(self.process_index + 1) * self.rows_per_process]
            yield EvalRows(index=index, start=start, images=np.minimum(mine, stop - 1), valid=mine < stop, stop=stop)


def report_scale(binarized, effective_pixels):
    """Factor from nats per image to the reported unit: 1 (nats/image, binarized) or 1 / (E ln 2) (bits/dim)."""
    return 1.0 if binarized else 1.0 / (effective_pixels * LN2)


@dataclass
class EvalAccumulator:
    """Sums of per-image metrics over the real rows of many batches; `result` gives the exact means."""
    n_layers: int
    binarized: bool
    effective_pixels: int
    sums: np.ndarray = field(init=False)

    def __post_init__(self):
        self.sums = np.zeros(4 + self.n_layers, np.float64)  # count, recon, kl, ssim, kl per layer

    def add(self, out, valid):
        """Add the rows of an EvalOutput where `valid` is True."""
        valid = np.asarray(valid, bool)
        self.sums[0] += valid.sum()
        self.sums[1] += np.asarray(out.recon_nats, np.float64)[valid].sum()
        self.sums[2] += np.asarray(out.kl_nats, np.float64)[valid].sum()
        self.sums[3] += np.asarray(out.ssim, np.float64)[valid].sum()
        self.sums[4:] += np.asarray(out.kl_per_layer_bits, np.float64)[valid].sum(axis=0)

    def result(self, all_reduce_sum, latent_active_threshold):
        """Means over every real image of every process, in the reported unit (bits/dim or nats/image)."""
        sums = np.asarray(all_reduce_sum(self.sums.copy()), np.float64)
        count = max(sums[0], 1.0)
        scale = report_scale(self.binarized, self.effective_pixels)
        recon, kl = sums[1] / count * scale, sums[2] / count * scale
        layers = sums[4:] / count
        return {"reconstruction_loss": float(recon), "kl_div": float(kl), "nelbo": float(recon + kl),
                "ssim": float(sums[3] / count), "kl_per_layer_bits": layers.tolist(), "n_examples": int(sums[0]),
                "active_groups": int((layers >= latent_active_threshold).sum())}
