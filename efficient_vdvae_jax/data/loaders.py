"""NumPy batches for JAX over the core datasets: the (seed, step) training stream and padded eval batches.

Training batches follow `efficient_vdvae_core.data.stream`, the stream of the PyTorch loaders: the
global batch of a step is a pure function of (seed, step), so any number of devices or hosts, and a
resumed run, see the same images with the same augmentation. Each process loads its contiguous block
of rows (`distributed.local_rows`). Items are decoded by a small thread pool a few steps ahead.
Eval batches follow an `efficient_vdvae_core.evaluation.EvalPlan` (fixed global size, padded last batch).
Arrays are float32 NHWC.
"""
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.data.stream import TrainIndexStream, item_rng
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_jax.utils.distributed import local_rows

PREFETCH_STEPS = 2


def default_num_threads(cfg):
    """Decoding threads: at most 4, at most [run] num_cpus (at least 1), never above the usable CPUs."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cfg.run.num_cpus, available))


def _load_item(images, seed, key):
    index, epoch = key
    return images.load(index, item_rng(seed, epoch, index))


class TrainStream:
    """Endless iterator of this process's rows (float32 NHWC) of the global batches of steps start_step, ..."""

    def __init__(self, cfg, *, start_step=0, num_threads=None, images=None):
        global_batch = cfg.train.batch_size
        self.images = make_dataset(cfg.data, "train", seed=cfg.run.seed) if images is None else images
        if len(self.images) < global_batch:
            raise UserError(f"the train split of {cfg.data.dataset_source} has {len(self.images)} images, fewer "
                            f"than [train] batch_size = {global_batch}")
        self.seed = cfg.run.seed
        self.index = TrainIndexStream(len(self.images), global_batch, seed=self.seed, start_step=start_step)
        self.steps_per_epoch = self.index.steps_per_epoch
        self.rows = slice(*local_rows(global_batch))
        self.start_step = start_step
        self.num_threads = default_num_threads(cfg) if num_threads is None else num_threads

    def keys(self, step):
        """This process's (index, epoch) keys of the global batch of `step`."""
        return self.index.keys(step)[self.rows]

    def load(self, step, pool=None):
        """This process's rows of the batch of `step` as one float32 (B, H, W, C) array."""
        keys = self.keys(step)
        load = (lambda k: _load_item(self.images, self.seed, k))
        items = list(pool.map(load, keys)) if pool is not None else [load(k) for k in keys]
        return np.stack(items)

    def __iter__(self):
        with ThreadPoolExecutor(self.num_threads) as pool, ThreadPoolExecutor(1) as batcher:
            pending, step = deque(), self.start_step
            while True:
                while len(pending) < PREFETCH_STEPS:
                    pending.append(batcher.submit(self.load, step + len(pending), pool))
                yield pending.popleft().result()
                step += 1


def plan_batches(cfg, images, plan, *, num_threads=None):
    """This process's rows (float32 NHWC) of every batch of an EvalPlan, decoded by a thread pool."""
    threads = default_num_threads(cfg) if num_threads is None else num_threads
    with ThreadPoolExecutor(threads) as pool:
        for rows in plan:
            yield np.stack(list(pool.map(images.load, [int(i) for i in rows.images])))
