"""Pieces shared by the synthesis modes: per-batch keys, variate masks, progress bars, PNG sets.

Randomness: every random draw of batch `index` comes from `batch_key(seed, purpose, index)`, so a
batch's result does not depend on the batches before it or on the device count.
"""

import numpy as np

from efficient_vdvae_core.synthesis import (DIV_STATS_FILE, describe_masks, load_variate_masks,  # noqa: F401
                                            progress, report_files, save_pngs, uniform_variates)
from efficient_vdvae_jax.evaluation import seed_key

SALT_POSTERIOR, SALT_GENERATION, SALT_ENCODING, SALT_DECODING = 11, 12, 13, 14  # purposes of the keys of a batch


def batch_key(seed, salt, *index):
    """The key of one purpose (`salt`) of batch `index` (and more integers, e.g. a temperature setting)."""
    return seed_key(seed, salt, *index)


def mask_arrays(masks):
    """Per-layer float32 (V,) arrays (1 = posterior, 0 = prior) of boolean masks (N_lat, V)."""
    return [np.asarray(row, dtype=np.float32) for row in masks]


