"""Per-image keys and the jitted evaluation kernel that validation and the synthesis modes share (JAX, NHWC).

Every random tensor of image i in a pass (`purpose`, `counter`) is drawn from
fold_in(fold_in(fold_in(fold_in(key(seed), purpose), counter), i), stream), the streams of
`efficient_vdvae_core.randomness`; so an image's result does not depend on its batch, the device count,
or what ran before.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.metrics import MNIST_SIZE
from efficient_vdvae_core.randomness import LATENT_STREAM, OUTPUT_STREAM, PRIOR_STREAM
from efficient_vdvae_core.training.backend import EvalOutput
from efficient_vdvae_jax.model.losses import split_mol_logits, vae_objective
from efficient_vdvae_jax.model.sampling import bernoulli_probs, output_samples
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.ssim import ssim_per_example
from efficient_vdvae_jax.utils.state import merge_model


def seed_key(seed, *path):
    """jax.random.key(seed) folded with each integer (or traced int) of `path` in turn."""
    key = jax.random.key(seed)
    for value in path:
        key = jax.random.fold_in(key, value)
    return key


def latent_shapes(arch):
    """(H, W, V) of every latent layer."""
    return [(b.resolution, b.resolution, b.latent_variates) for b in arch.latent_layers]


def output_noise_shapes(config):
    """Shapes of one image's output-head uniforms: MoL (R, R, M) and (R, R, C), Bernoulli (28, 28, 1)."""
    if is_binarized(config.data):
        return [(MNIST_SIZE, MNIST_SIZE, 1)]
    r = config.data.target_res
    return [(r, r, config.model.num_output_mixtures), (r, r, config.data.channels)]


def per_image_draw(pass_key, indices, stream, shapes, kind="normal"):
    """For each image index one key, one flat draw split into `shapes`: a list of (B, *shape) arrays."""
    sizes = [math.prod(s) for s in shapes]

    def one(index):
        key = jax.random.fold_in(jax.random.fold_in(pass_key, index), stream)
        if kind == "normal":
            return jax.random.normal(key, (sum(sizes),), jnp.float32)
        return jax.random.uniform(key, (sum(sizes),), jnp.float32)

    flat = jax.vmap(one)(indices)
    offsets = np.cumsum([0] + sizes)
    return [flat[:, o:o + n].reshape(-1, *s) for o, n, s in zip(offsets, sizes, shapes)]


def image_noise(pass_key, arch, indices, stream=LATENT_STREAM):
    """Standard normal eps (B, H, W, V) per latent layer for images `indices` of a pass."""
    return per_image_draw(pass_key, indices, stream, latent_shapes(arch))


def output_noise(pass_key, config, indices):
    """The output head's uniforms for images `indices` of a pass."""
    return per_image_draw(pass_key, indices, OUTPUT_STREAM, output_noise_shapes(config), kind="uniform")


def evaluate_batch_fn(graphdef, rest, config, arch, purpose):
    """A jitted fn(params, images, indices, counter, variate_masks=None) -> dict of per-image results.

    Posterior samples, NELBO terms at beta 1 (masked variates take prior samples and their KL is not
    counted), output samples and SSIM; `logits` for the histograms.
    """
    binarized = is_binarized(config.data)

    def evaluate(params, images, indices, counter, variate_masks=None):
        model = merge_model(graphdef, params, rest)
        key = seed_key(config.run.seed, purpose, counter)
        noise = image_noise(key, arch, indices)
        prior_noise = None if variate_masks is None else image_noise(key, arch, indices, PRIOR_STREAM)
        logits, posteriors, priors = model(images, variate_masks, noise, prior_noise)
        obj = vae_objective(logits, images, posteriors, priors, config, beta=1.0, gamma_on=False,
                            batch_size=images.shape[0], variate_masks=variate_masks)
        samples = output_samples(logits, config, None, noise=output_noise(key, config, indices))
        ssim = jnp.zeros(images.shape[0]) if binarized else ssim_per_example(samples, images)
        return {"recon": obj.recon_per_example_nats, "kl": obj.kl_per_example_nats,
                "kl_layers": obj.kl_per_example_layer_bits, "ssim": ssim, "samples": samples, "logits": logits}

    return jax.jit(evaluate)


def output_means(logits, config):
    """Bernoulli probabilities float32 (B, 28, 28, 1) of binarized data's output head (None for MoL outputs)."""
    if not is_binarized(config.data):
        return None
    return np.asarray(bernoulli_probs(jnp.asarray(logits, jnp.float32), config.synthesis.output_temperature), np.float32)


def local_block(array, process_rows):
    """This process's rows of a global result: (start, stop) of `process_rows` in the gathered array."""
    return D.to_host(array)[process_rows[0]:process_rows[1]]


def eval_output(result, config, process_rows, images=None, details=False):
    """The EvalOutput (NumPy, this process's rows) of an evaluate_batch_fn result."""
    take = (lambda k: local_block(result[k], process_rows))
    extra = {}
    if details:
        extra = {"inputs": np.asarray(images, np.float32), "samples": take("samples"),
                 "means": output_means(take("logits"), config)}
        if not is_binarized(config.data):
            _, means, log_scales, _ = split_mol_logits(jnp.asarray(take("logits")), config.model.num_output_mixtures)
            extra["histograms"] = {"OutputLayer/means": np.asarray(means),
                                   "OutputLayer/log_scales": np.asarray(log_scales)}
    return EvalOutput(recon_nats=take("recon").astype(np.float64), kl_nats=take("kl").astype(np.float64),
                      kl_per_layer_bits=take("kl_layers").astype(np.float64), ssim=take("ssim").astype(np.float64),
                      **extra)


def prior_sample_fn(graphdef, rest, config, arch, batch_size, mesh, purpose):
    """A jitted fn(params, temperatures (N_lat,), indices (B,), counter) -> (output samples, logits).

    Image i's prior eps and output uniforms are its own draws of the pass (purpose, counter). The batch
    is sharded over the mesh when it divides among its devices.
    """
    n_layers = arch.n_latent_layers

    def sample(params, temperatures, indices, counter):
        model = merge_model(graphdef, params, rest)
        key = seed_key(config.run.seed, purpose, counter)
        logits, _ = model.sample(batch_size, [temperatures[i] for i in range(n_layers)],
                                 noise=image_noise(key, arch, indices))
        return output_samples(logits, config, None, noise=output_noise(key, config, indices)), logits

    sharding = D.batch_sharding(mesh) if batch_size % mesh.devices.size == 0 else D.replicated(mesh)
    return jax.jit(sample, out_shardings=sharding)
