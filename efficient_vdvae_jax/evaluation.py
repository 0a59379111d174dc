"""Per-batch NELBO/SSIM evaluation shared by training-time validation and synthesis reconstruction.

Batches are padded global batches (`data.loaders.EvalBatches`) sharded over the mesh; the accumulator
adds only the real rows of each, so every metric is an exact mean over the real images.
Randomness: keys are `jax.random.fold_in` chains of (run.seed, step or batch index, purpose), so a
result never depends on the device count or on the batches before it.
"""
import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.images import to_uint8
from efficient_vdvae_jax.model.losses import LN2, gaussian_kl, vae_objective
from efficient_vdvae_jax.model.sampling import output_samples
from efficient_vdvae_jax.utils.distributed import batch_sharding, replicated, to_host
from efficient_vdvae_jax.utils.ssim import ssim_per_example
from efficient_vdvae_jax.utils.state import merge_model

SALT_EVAL_POSTERIOR, SALT_PRIOR_SAMPLES = 1, 3  # purposes of training-time keys


def seed_key(seed, *path):
    """jax.random.key(seed) folded with each integer of `path` in turn."""
    key = jax.random.key(seed)
    for value in path:
        key = jax.random.fold_in(key, value)
    return key


def latent_noise(key, arch, batch_size):
    """Standard normal eps (B, H, W, V) for every latent layer, from ONE draw of shape (B, sum of H*W*V).

    Row b of the draw is example b's noise for all layers, so a batch sharded over devices draws the same
    values as on one device. (One draw compiles in a fraction of the time of one draw per layer.)
    """
    shapes = [(b.resolution, b.resolution, b.latent_variates) for b in arch.latent_layers]
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(key, (batch_size, sum(sizes)), jnp.float32)
    offsets = np.cumsum([0] + sizes)
    return [flat[:, o:o + n].reshape(batch_size, *s) for o, n, s in zip(offsets, sizes, shapes)]


def per_example_terms(logits, images, posteriors, priors, config, variate_masks=None):
    """recon (B,), KL (B,) in nats and KL per layer (B, N_lat) in bits per latent element."""
    m = config.model
    objective = vae_objective(logits, images, posteriors, priors, config, beta=1.0, gamma_on=False,
                              batch_size=images.shape[0], variate_masks=variate_masks)
    per_layer = []
    for layer, (post, prior) in enumerate(zip(posteriors, priors)):
        kl = gaussian_kl(post, prior, distribution_base=m.distribution_base, beta=m.gradient_smoothing_beta)
        mask = None if variate_masks is None else variate_masks[layer]
        if mask is not None:
            kl = kl * jnp.asarray(mask, kl.dtype).reshape(1, 1, 1, -1)
        per_layer.append(jnp.sum(kl, axis=(1, 2, 3)) / (kl[0].size * LN2))
    return objective.recon_per_example_nats, objective.kl_per_example_nats, jnp.stack(per_layer, axis=1)


def evaluate_batch_fn(graphdef, rest, config, arch):
    """A jitted fn(params, images, key, variate_masks) -> dict of per-example metrics, samples and logits.

    `key` drives the posterior samples; the output samples use fold_in(key, 1), the prior samples of
    masked variates fold_in(key, 2).
    """
    binarized = is_binarized(config.data)

    def evaluate(params, images, key, variate_masks=None):
        model = merge_model(graphdef, params, rest)
        noise = latent_noise(key, arch, images.shape[0])
        logits, posteriors, priors = model(images, variate_masks, noise, key=jax.random.fold_in(key, 2))
        recon, kl, kl_layers = per_example_terms(logits, images, posteriors, priors, config, variate_masks)
        samples = output_samples(logits, config, jax.random.fold_in(key, 1))
        ssim = jnp.zeros(images.shape[0]) if binarized else ssim_per_example(samples, images)
        return {"recon": recon, "kl": kl, "kl_layers": kl_layers, "ssim": ssim, "samples": samples,
                "logits": logits}

    return jax.jit(evaluate)


def prior_sample_fn(graphdef, rest, config, arch, batch_size, mesh):
    """A jitted fn(params, temperatures (N_lat,), key) -> (output samples, logits) of `batch_size` prior samples.

    The latent noise comes from `key`, the output samples from fold_in(key, 1). The batch is sharded over
    the mesh when it divides among its devices. Training-time prior samples and the 'generation' mode
    share this function (and so its compiled program).
    """
    n_layers = arch.n_latent_layers

    def sample(params, temperatures, key):
        model = merge_model(graphdef, params, rest)
        logits, _ = model.sample(batch_size, [temperatures[i] for i in range(n_layers)], key=key)
        return output_samples(logits, config, jax.random.fold_in(key, 1)), logits

    sharding = batch_sharding(mesh) if batch_size % mesh.devices.size == 0 else replicated(mesh)
    return jax.jit(sample, out_shardings=sharding)


@dataclass
class MetricAccumulator:
    """Sums per-example metrics of the real rows over batches; `result()` gives means in reported units."""
    binarized: bool
    effective_pixels: int
    n_layers: int
    sums: dict = field(default_factory=dict)

    def add(self, result, n_valid):
        """Add the first `n_valid` rows of a batch result (host or device arrays)."""
        values = {"recon": to_host(result["recon"])[:n_valid].sum(dtype=np.float64),
                  "kl": to_host(result["kl"])[:n_valid].sum(dtype=np.float64),
                  "ssim": to_host(result["ssim"])[:n_valid].sum(dtype=np.float64),
                  "kl_layers": to_host(result["kl_layers"])[:n_valid].astype(np.float64).sum(axis=0),
                  "count": float(n_valid)}
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0) + v

    def result(self, latent_active_threshold):
        """Means over every real example, in bits/dim (nats/image for binarized data)."""
        count = self.sums["count"]
        layers = self.sums["kl_layers"] / max(count, 1.0)
        scale = 1.0 if self.binarized else 1.0 / (self.effective_pixels * LN2)
        recon, kl = self.sums["recon"] / count * scale, self.sums["kl"] / count * scale
        return {"reconstruction_loss": float(recon), "kl_div": float(kl), "nelbo": float(recon + kl),
                "ssim": float(self.sums["ssim"] / count), "kl_per_layer_bits": layers.tolist(),
                "n_examples": int(count), "active_groups": int((layers >= latent_active_threshold).sum())}


def images_to_uint8(images, config):
    """(B, H, W, C) images -> uint8 NumPy; binarized 32x32 targets cropped to 28x28."""
    arr = np.asarray(to_host(images), dtype=np.float32)
    if is_binarized(config.data) and arr.shape[1] == 32:
        arr = arr[:, 2:30, 2:30]
    return to_uint8(arr, binarized=is_binarized(config.data))
