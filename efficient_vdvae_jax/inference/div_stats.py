"""'div_stats' mode: average KL of every (latent layer, variate) over part of the training split.

div_stats[l, v] = mean over images of [sum over positions of KL(q || p) of variate v of layer l] / (H_l W_l),
in bits per latent element (model.md 9), exact over all images (padding rows carry weight 0).
"""
import io

import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.runs import atomic_write_bytes
from efficient_vdvae_jax.evaluation import latent_noise
from efficient_vdvae_jax.inference import common
from efficient_vdvae_jax.inference.data import eval_batches
from efficient_vdvae_jax.model.losses import LN2, gaussian_kl
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.state import merge_model


def kl_sums_fn(loaded):
    """A jitted fn(params, images, weights (B,), key) -> (N_lat, V) KL per variate, position-averaged, weight-summed (nats)."""
    m = loaded.config.model

    def kl_sums(params, images, weights, key):
        model = merge_model(loaded.graphdef, params, loaded.rest)
        _, posteriors, priors = model(images, noise=latent_noise(key, loaded.arch, images.shape[0]))
        rows = [jnp.einsum("bv,b->v", jnp.mean(gaussian_kl(post, prior, distribution_base=m.distribution_base,
                                                           beta=m.gradient_smoothing_beta), axis=(1, 2)), weights)
                for post, prior in zip(posteriors, priors)]
        return jnp.stack(rows)

    return jax.jit(kl_sums, out_shardings=D.replicated(loaded.mesh))


def compute_div_stats(loaded, batches, seed, desc="div_stats"):
    """float32 (N_lat, V) div_stats over every image of `batches`."""
    common.uniform_variates(loaded.arch)
    fn = kl_sums_fn(loaded)
    total, count = None, 0
    for index, batch in enumerate(common.progress(batches, len(batches), desc)):
        weights = (np.arange(batches.batch_size) < batch.n_valid).astype(np.float32)
        sums = D.to_host(fn(loaded.params, D.global_batch(loaded.mesh, batch.images),
                            D.global_batch(loaded.mesh, weights[batches.rows]),
                            common.batch_key(seed, common.SALT_POSTERIOR, index))).astype(np.float64)
        total = sums if total is None else total + sums
        count += batch.n_valid
    return (total / (count * LN2)).astype(np.float32)


def run_div_stats(loaded, paths, options, log=print):
    """Compute div_stats over synthesis.div_stats_subset_ratio of the train split; write latents/div_stats.npy."""
    cfg, syn = loaded.config, loaded.config.synthesis
    common.uniform_variates(loaded.arch)
    batches = eval_batches(loaded, "div_stats", syn.batch_size, options.max_images,
                           subset_ratio=syn.div_stats_subset_ratio)
    log(f"Measuring the KL of every latent variate on {batches.n_images} training images "
        f"(div_stats_subset_ratio {syn.div_stats_subset_ratio})")
    stats = compute_div_stats(loaded, batches, cfg.run.seed)
    path = paths.latents / common.DIV_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, stats)
    atomic_write_bytes(path, buffer.getvalue())
    log(f"div_stats of shape {stats.shape} (bits per latent element): mean {stats.mean():.4g}, max {stats.max():.4g}")
    log(f"Wrote div_stats: {path}")
    return stats
