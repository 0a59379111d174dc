"""What a framework supplies to the synthesis driver: a small inference backend over one model's weights.

Everything crossing this boundary is plain Python or NumPy (images NHWC float: [-1, 1], or {0, 1} for
binarized digits; latents NHWC). Batches follow an `efficient_vdvae_core.evaluation.EvalPlan`; every
random draw of image i is its own (`efficient_vdvae_core.randomness`).
"""
from typing import Iterator, Protocol

import numpy as np

from efficient_vdvae_core.training.backend import EvalOutput


class InferenceBackend(Protocol):
    """A model in eval mode on this framework's devices."""

    def eval_batches(self, dataset, plan) -> Iterator: ...  # framework batches of the plan's rows
    def reconstruct(self, batch, rows, masks) -> EvalOutput: ...  # details (inputs, samples) always included
    def kl_per_variate(self, batch, rows) -> np.ndarray: ...  # (b, N_lat, V) KL per variate, mean over positions, nats
    def posterior_means(self, batch, rows, masks) -> list: ...  # per layer (mean, std), each (b, H, W, V)
    def decode(self, latents, indices) -> np.ndarray: ...  # latents: per layer None or (z (b, H, W, V), mask (V,))
    def sample(self, indices, temperatures, counter) -> np.ndarray: ...  # (b, H, W, C) prior samples
    def all_reduce_sum(self, array) -> np.ndarray: ...  # sum over processes (identity in one process)
    def barrier(self) -> None: ...  # wait for every process (called with several processes only)
