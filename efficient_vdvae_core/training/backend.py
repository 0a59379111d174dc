"""What a framework supplies to the core drivers: its distributed context and a small training backend.

The core decides when and whether (checks, folders, cadence, skips, stop rules, file names, messages,
metric units and tags); a framework answers how (tensors, devices, compilation). Everything crossing
this boundary is plain Python or NumPy. `tests/core/test_driver.py` drives the loop with a fake backend.
"""
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np


@dataclass(frozen=True)
class StepOutput:
    """One training iteration on the global batch, reduced over all processes."""
    recon_nats_per_dim: float
    kl_nats_per_dim: float
    kl_per_layer_bits: np.ndarray  # (N_lat,) KL per latent element in bits, batch mean
    grad_norm: float  # global L2 norm of the gradients before clipping
    skipped: bool  # True when the update was not applied (the core's skip rule, applied by the backend)


@dataclass(frozen=True)
class EvalOutput:
    """Per-image results of one evaluation batch, for this process's rows (padding rows included)."""
    recon_nats: np.ndarray  # (B,) reconstruction NLL per image, nats
    kl_nats: np.ndarray  # (B,) KL per image, nats (beta = 1)
    kl_per_layer_bits: np.ndarray  # (B, N_lat) KL per latent element, bits
    ssim: np.ndarray  # (B,) SSIM of the output sample vs the input (0 for binarized data)
    inputs: np.ndarray | None = None  # (B, H, W, C) float inputs, when details were asked
    samples: np.ndarray | None = None  # (B, H', W', C) float output samples, when details were asked
    means: np.ndarray | None = None  # (B, 28, 28, 1) Bernoulli probabilities (binarized data), when details were asked
    histograms: dict | None = None  # tag -> values (e.g. 'OutputLayer/means'), when details were asked


@dataclass(frozen=True)
class Dist:
    """The process layout: `n_processes` processes, this one is `process_index`; `n_shards` replicas
    (processes x local devices) that a global batch is split over."""
    process_index: int
    n_processes: int
    n_shards: int
    description: str  # e.g. '2 process(es), device cuda:0'

    @property
    def is_main(self):
        return self.process_index == 0


class Framework(Protocol):
    """The module-level functions of `efficient_vdvae_<framework>.backend`."""
    name: str  # 'torch' or 'jax'

    def init_distributed(self, config) -> Dist: ...
    def check_options(self, config) -> None: ...  # UserError for options this framework cannot honour
    def param_shapes(self, config) -> dict: ...  # {torch state_dict name: shape} of the model, nothing allocated
    def read_weights(self, path) -> Any: ...  # efficient_vdvae_core.weights.Weights of any checkpoint
    def memory_available(self, dist) -> tuple: ...  # (free bytes or None, where, replicas sharing them)
    def bf16_support(self, dist) -> tuple: ...  # (whether this process's device runs bf16, the device in words)
    def trainer(self, config, dist, log) -> "TrainBackend": ...


class TrainBackend(Protocol):
    """The model, EMA and optimizer of one training run, on this framework's devices."""
    codec: Any  # efficient_vdvae_core.checkpoints.Codec

    def state(self, meta) -> Any: ...  # the checkpoint payload of the current state, with `meta` (a Checkpoint)
    def load_state(self, checkpoint, resume_from_ema) -> None: ...  # from one of our checkpoints
    def load_weights(self, weights) -> None: ...  # model and EMA weights only (fine-tuning)
    def train_batches(self, dataset, start_step) -> Iterator: ...  # framework batches of steps start_step, ...
    def train_step(self, batch, values) -> StepOutput: ...  # values: efficient_vdvae_core.schedules.StepValues
    def eval_batches(self, dataset, plan) -> Iterator: ...  # framework batches of an EvalPlan's rows
    def evaluate(self, batch, rows, counter, details) -> EvalOutput: ...  # raw weights; noise per image
    def prior_samples(self, n, counter, ema=True) -> tuple: ...  # (samples (n, H, W, C), Bernoulli means or None)
                                                                # of the EMA (or raw) weights' prior, temperature 1
    def all_reduce_sum(self, array) -> np.ndarray: ...  # sum over processes (identity in one process)
    def barrier(self) -> None: ...
    def is_lost_process(self, exc) -> bool: ...  # True for a collective's error on losing another process
    def close(self) -> None: ...
