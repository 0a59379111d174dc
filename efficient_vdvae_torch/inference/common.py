"""Pieces shared by the synthesis modes: per-batch seeds and noise, variate masks, progress, PNG sets.

Randomness: every random draw of batch `index` comes from seeds that depend on (run.seed, index, purpose)
only, so a batch's result does not depend on the batches before it and any mode can be reproduced batch
by batch (e.g. by the tests, through `posterior_noise` and `output_generator`). Draws made inside the
model with the global RNG (prior samples of masked variates, generation) run under
`seeded_global_rng`, which leaves the caller's RNG state untouched.
"""
from contextlib import contextmanager

import numpy as np
import torch

from efficient_vdvae_core.synthesis import (DIV_STATS_FILE, describe_masks, load_variate_masks,  # noqa: F401
                                            progress, report_files, save_pngs, uniform_variates)
from efficient_vdvae_torch.evaluation import step_seed

SALT_POSTERIOR, SALT_GLOBAL, SALT_OUTPUT = 11, 12, 13  # purposes of the seeds of one batch


def batch_seed(seed, index, salt):
    """The seed of one purpose (`salt`) of batch `index`."""
    return step_seed(seed, index, salt)


def posterior_noise(arch, batch_size, seed, index, device):
    """eps (B, V, H, W) per latent layer for posterior samples z = mean + std * eps of batch `index`."""
    g = torch.Generator(device=device).manual_seed(batch_seed(seed, index, SALT_POSTERIOR))
    return [torch.randn((batch_size, b.latent_variates, b.resolution, b.resolution), generator=g, device=device)
            for b in arch.latent_layers]


def zero_noise(arch, batch_size, device):
    """eps = 0 for every latent layer: the posterior pass then uses z = posterior mean everywhere."""
    return [torch.zeros((batch_size, b.latent_variates, b.resolution, b.resolution), device=device)
            for b in arch.latent_layers]


def output_generator(seed, index, device, salt=SALT_OUTPUT):
    """Generator for the output-head samples of batch `index`."""
    return torch.Generator(device=device).manual_seed(batch_seed(seed, index, salt))


@contextmanager
def seeded_global_rng(seed, index, device, salt=SALT_GLOBAL):
    """Run a block with the global torch RNG seeded for batch `index`; the previous state is restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(batch_seed(seed, index, salt))
        yield


def mask_tensors(masks, device):
    """Per-layer float (V,) tensors (1 = posterior, 0 = prior) of boolean masks (N_lat, V)."""
    return [torch.as_tensor(np.asarray(row, dtype=np.float32), device=device) for row in masks]


