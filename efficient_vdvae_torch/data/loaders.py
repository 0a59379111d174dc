"""Torch loaders over the core datasets: an endless, resumable training stream and sharded eval loaders.

The data of a training step is a pure function of (seed, global step), defined once for both frameworks
in `efficient_vdvae_core.data.stream`; rank r of W takes the elements r, r + W, ... of each global batch.
So the union over ranks equals the one-process batch, any number of workers gives the same tensors, and
resuming at a step continues the same stream. Batches are float32 NCHW tensors.
"""
import atexit
import multiprocessing
import os
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.data.stream import TrainIndexStream, item_rng
from efficient_vdvae_core.errors import UserError


def default_num_workers(cfg):
    """Loader workers: at most 2, at most [run] num_cpus, never above the CPUs this process may use."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(2, cfg.run.num_cpus, available))


class TorchImages(Dataset):
    """Map-style torch view of an ImageDataset: key (index, epoch) -> (C, H, W) tensor (, name)."""

    def __init__(self, images, seed, with_names=False):
        self.images = images
        self.seed = seed
        self.with_names = with_names

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        index, epoch = key
        rng = item_rng(self.seed, epoch, index)
        image = torch.from_numpy(np.ascontiguousarray(self.images.load(index, rng).transpose(2, 0, 1)))
        return (image, self.images.name(index)) if self.with_names else image


_MAIN_EXITING = multiprocessing.RawValue("b", 0)  # shared with the workers forked later: 1 once this process exits
atexit.register(setattr, _MAIN_EXITING, "value", 1)  # runs before multiprocessing's exit hook, registered earlier


def _on_sigterm_in_worker(signum, frame):
    """SIGTERM in a loader worker: ignored while the main process runs (a scheduler's SIGTERM reaches every
    process of the job; the main process stops cleanly and ends its workers), obeyed once it exits (the
    SIGTERM of multiprocessing's exit hook, which would otherwise wait for this worker for ever)."""
    if _MAIN_EXITING.value:
        os._exit(0)


def ignore_stop_signals(worker_id):
    """A loader worker leaves SIGTERM and Ctrl-C to the main process, which stops cleanly (the workers end with it)."""
    signal.signal(signal.SIGTERM, _on_sigterm_in_worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate(items):
    """Stack (C, H, W) tensors into a batch; (tensor, name) items give (batch, list of names)."""
    if isinstance(items[0], tuple):
        images, names = zip(*items)
        return torch.stack(images), list(names)
    return torch.stack(items)


class TrainBatchSampler:
    """Endless per-rank lists of keys (index, epoch), one list per global step from `start_step` on."""

    def __init__(self, n_images, global_batch, *, rank, world_size, seed, start_step=0):
        self.n_images = n_images
        self.global_batch = global_batch
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.start_step = start_step
        self.steps_per_epoch = n_images // global_batch

    def __iter__(self):
        stream = TrainIndexStream(self.n_images, self.global_batch, seed=self.seed, start_step=self.start_step)
        for keys in stream:
            yield keys[self.rank::self.world_size]


class TrainStream:
    """Iterable of this rank's training batches (float32 NCHW) for global steps start_step, start_step + 1, ..."""

    def __init__(self, loader, sampler):
        self.loader = loader
        self.sampler = sampler
        self.dataset = loader.dataset.images
        self.steps_per_epoch = sampler.steps_per_epoch
        self.batch_size = sampler.global_batch // sampler.world_size

    def __iter__(self):
        return iter(self.loader)


def _check_world(rank, world_size):
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")


def _pin_memory(cfg):
    return torch.cuda.is_available() and cfg.run.device != "cpu"


def make_train_loader(cfg, *, rank, world_size, start_step=0, num_workers=None, images=None):
    """Endless TrainStream of this rank's share of every global batch of [train] batch_size.

    `images`: the opened train split (opened here when None).
    """
    _check_world(rank, world_size)
    global_batch = cfg.train.batch_size
    if global_batch % world_size:
        raise UserError(f"[train] batch_size = {global_batch} is not divisible by the {world_size} processes; "
                        f"use a multiple of {world_size}")
    images = make_dataset(cfg.data, "train", seed=cfg.run.seed) if images is None else images
    if len(images) < global_batch:
        raise UserError(f"the train split of {cfg.data.dataset_source} has {len(images)} images, fewer than "
                        f"[train] batch_size = {global_batch}")
    sampler = TrainBatchSampler(len(images), global_batch, rank=rank, world_size=world_size, seed=cfg.run.seed,
                                start_step=start_step)
    workers = default_num_workers(cfg) if num_workers is None else num_workers
    loader = DataLoader(TorchImages(images, cfg.run.seed), batch_sampler=sampler, collate_fn=collate,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=_pin_memory(cfg),
                        worker_init_fn=ignore_stop_signals)
    return TrainStream(loader, sampler)


def plan_loader(cfg, images, plan, *, with_names=False, num_workers=None):
    """DataLoader over this process's rows of every batch of an EvalPlan (padding rows repeat an image).

    Yields (B, C, H, W) float32 tensors, or (tensor, list of names) with `with_names`.
    """
    batches = [[(int(i), 0) for i in rows.images] for rows in plan]
    workers = default_num_workers(cfg) if num_workers is None else num_workers
    return DataLoader(TorchImages(images, cfg.run.seed, with_names), batch_sampler=batches, collate_fn=collate,
                      num_workers=workers, persistent_workers=False, pin_memory=_pin_memory(cfg),
                      worker_init_fn=ignore_stop_signals)
