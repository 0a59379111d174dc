"""Pieces shared by the synthesis modes: per-batch seeds and noise, variate masks, progress, PNG sets.

Randomness: every random draw of batch `index` comes from seeds that depend on (run.seed, index, purpose)
only, so a batch's result does not depend on the batches before it and any mode can be reproduced batch
by batch (e.g. by the tests, through `posterior_noise` and `output_generator`). Draws made inside the
model with the global RNG (prior samples of masked variates, generation) run under
`seeded_global_rng`, which leaves the caller's RNG state untouched.
"""
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import save_png
from efficient_vdvae_core.masks import kept_count, variate_masks
from efficient_vdvae_torch.evaluation import step_seed

SALT_POSTERIOR, SALT_GLOBAL, SALT_OUTPUT = 11, 12, 13  # purposes of the seeds of one batch
DIV_STATS_FILE = "div_stats.npy"


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


def uniform_variates(arch):
    """The number of variates V shared by every latent layer; UserError if layers differ."""
    counts = sorted({b.latent_variates for b in arch.latent_layers})
    if len(counts) != 1:
        raise UserError(f"div_stats and variate masks need the same number of latent variates in every layer, "
                        f"but [model] down_latent_variates gives {counts}")
    return counts[0]


def load_variate_masks(latents_dir, arch, quantile, needed_by):
    """Boolean masks (N_lat, V) from latents/div_stats.npy; a missing or foreign file is a UserError."""
    path = Path(latents_dir) / DIV_STATS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: {needed_by} needs div_stats; run synthesize.py with "
                        "--set synthesis.synthesis_mode=div_stats first")
    stats = np.load(path)
    expected = (arch.n_latent_layers, uniform_variates(arch))
    if stats.shape != expected:
        raise UserError(f"{path} has shape {stats.shape} but this model has {expected[0]} latent layers of "
                        f"{expected[1]} variates; run the div_stats mode again for this model")
    try:
        return variate_masks(stats, quantile)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def mask_tensors(masks, device):
    """Per-layer float (V,) tensors (1 = posterior, 0 = prior) of boolean masks (N_lat, V)."""
    return [torch.as_tensor(np.asarray(row, dtype=np.float32), device=device) for row in masks]


def describe_masks(masks, quantile):
    """One line: how many variates and layers the masks keep."""
    kept, total = kept_count(masks), int(np.asarray(masks).size)
    layers = int(np.asarray(masks).any(axis=1).sum())
    return (f"variate masks (quantile {quantile}): {kept} of {total} variates kept, in {layers} of "
            f"{len(masks)} latent layers")


def progress(iterable, total, desc):
    """A tqdm bar over batches."""
    return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True)


def save_pngs(folder, pattern, images, start=0):
    """Write uint8 (B, H, W, C) images as folder/pattern.format(start + i); returns the paths."""
    return [save_png(Path(folder) / pattern.format(start + i), image) for i, image in enumerate(images)]


def report_files(log, what, paths):
    """Print where a set of files went: the path of one file, or the first and last of many."""
    paths = list(paths)
    if not paths:
        return
    if len(paths) == 1:
        log(f"Wrote {what}: {paths[0]}")
    else:
        log(f"Wrote {len(paths)} {what}: {paths[0]} ... {paths[-1].name}")
