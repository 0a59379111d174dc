"""'div_stats' mode: average KL of every (latent layer, variate) over part of the training split.

div_stats[l, v] = mean over images of [sum over positions of KL(q || p) of variate v of layer l] / (H_l W_l),
in bits per latent element: a float32 (N_lat, V) array at latents/div_stats.npy, the exact mean over the
images of `div_stats_subset_ratio` of the train split (padding rows carry no weight).
"""
import io

import numpy as np

from efficient_vdvae_core.metrics import LN2
from efficient_vdvae_core.runs import atomic_write_bytes
from efficient_vdvae_core.synthesis import common


def compute_div_stats(ctx, dataset, desc="div_stats"):
    """float32 (N_lat, V) div_stats over every image of `dataset`."""
    plan = common.plan_for(ctx, len(dataset))
    total = np.zeros((ctx.loaded.arch.n_latent_layers, common.uniform_variates(ctx.loaded.arch)), np.float64)
    for rows, batch in common.progress(zip(plan, ctx.backend.eval_batches(dataset, plan)), len(plan), desc,
                                       ctx.dist.is_main):
        total += np.asarray(ctx.backend.kl_per_variate(batch, rows), np.float64)[rows.valid].sum(axis=0)
    total = ctx.backend.all_reduce_sum(total)
    return (total / (len(dataset) * LN2)).astype(np.float32)


def run_div_stats(ctx):
    """Compute div_stats over synthesis.div_stats_subset_ratio of the train split; write latents/div_stats.npy."""
    cfg, syn = ctx.config, ctx.config.synthesis
    common.uniform_variates(ctx.loaded.arch)
    dataset = common.open_split(cfg, "div_stats", ctx.options.max_images, subset_ratio=syn.div_stats_subset_ratio)
    ctx.log(f"Measuring the KL of every latent variate on {len(dataset)} training images "
            f"(div_stats_subset_ratio {syn.div_stats_subset_ratio})")
    stats = compute_div_stats(ctx, dataset)
    path = ctx.paths.latents / common.DIV_STATS_FILE
    if ctx.dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, stats)
        atomic_write_bytes(path, buffer.getvalue())
    ctx.log(f"div_stats of shape {stats.shape} (bits per latent element): mean {stats.mean():.4g}, "
            f"max {stats.max():.4g}")
    ctx.log(f"Wrote div_stats: {path}")
    return stats
