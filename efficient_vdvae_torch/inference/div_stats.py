"""'div_stats' mode: average KL of every (latent layer, variate) over part of the training split.

div_stats[l, v] = mean over images of [sum over positions of KL(q || p) of variate v of layer l] / (H_l W_l),
in bits per latent element (model.md 9). The mean is exact over all images seen: the PyTorch original
divided every batch, the last partial one too, by the nominal batch size (its bug 12).
"""
import io

import numpy as np
import torch

from efficient_vdvae_core.runs import atomic_write_bytes
from efficient_vdvae_torch.inference import common
from efficient_vdvae_torch.inference.data import eval_loader
from efficient_vdvae_torch.model.losses import LN2, gaussian_kl


@torch.no_grad()
def kl_per_variate_sums(loaded, images, index, seed):
    """(N_lat, V) float64: KL per variate of batch `index`, averaged over positions and summed over images (nats)."""
    model_cfg = loaded.config.model
    noise = common.posterior_noise(loaded.arch, images.shape[0], seed, index, loaded.device)
    _, posteriors, priors = loaded.model(images, None, noise)
    rows = [gaussian_kl(post, prior, distribution_base=model_cfg.distribution_base,
                        beta=model_cfg.gradient_smoothing_beta).double().mean(dim=(2, 3)).sum(dim=0)
            for post, prior in zip(posteriors, priors)]  # each (V,)
    return torch.stack(rows)


def compute_div_stats(loaded, loader, seed, desc="div_stats"):
    """float32 (N_lat, V) div_stats over every image of `loader`."""
    common.uniform_variates(loaded.arch)
    total, count = None, 0
    for index, images in enumerate(common.progress(loader, len(loader), desc)):
        images = images.to(loaded.device)
        sums = kl_per_variate_sums(loaded, images, index, seed)
        total = sums if total is None else total + sums
        count += images.shape[0]
    return (total / (count * LN2)).float().cpu().numpy()


def run_div_stats(loaded, paths, options, log=print):
    """Compute div_stats over synthesis.div_stats_subset_ratio of the train split; write latents/div_stats.npy."""
    cfg, syn = loaded.config, loaded.config.synthesis
    common.uniform_variates(loaded.arch)
    loader = eval_loader(cfg, "div_stats", syn.batch_size, options.max_images, subset_ratio=syn.div_stats_subset_ratio)
    log(f"Measuring the KL of every latent variate on {len(loader.dataset)} training images "
        f"(div_stats_subset_ratio {syn.div_stats_subset_ratio})")
    stats = compute_div_stats(loaded, loader, cfg.run.seed)
    path = paths.latents / common.DIV_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, stats)
    atomic_write_bytes(path, buffer.getvalue())
    log(f"div_stats of shape {stats.shape} (bits per latent element): mean {stats.mean():.4g}, max {stats.max():.4g}")
    log(f"Wrote div_stats: {path}")
    return stats
