"""Framework-neutral pieces of the synthesis modes: div_stats masks, progress bars, PNG sets, reports."""
from pathlib import Path

import numpy as np
from tqdm import tqdm

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import save_png
from efficient_vdvae_core.masks import kept_count, variate_masks

DIV_STATS_FILE = "div_stats.npy"


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
