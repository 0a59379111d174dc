"""The JAX model and inference backend run by hand on a run's weights, for the synthesis tests.

The mirror of `synthesis_kernels_torch` (same functions, arguments and results, NHWC NumPy arrays).
"""
import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.encodings import read_encodings
from efficient_vdvae_core.params import jax_params_to_torch_state_dict, torch_state_dict_to_jax
from efficient_vdvae_core.randomness import DECODING, EVALUATION, PRIOR_STREAM
from efficient_vdvae_core.synthesis.codes import DATASET_SPLIT, decoding_latents
from efficient_vdvae_core.synthesis.common import open_split
from efficient_vdvae_core.training.images import images_to_uint8
from efficient_vdvae_jax import backend
from efficient_vdvae_jax.evaluation import (eval_output, evaluate_batch_fn, image_noise, latent_shapes, output_noise,
                                            seed_key)
from efficient_vdvae_jax.model.autoencoder import build_model
from efficient_vdvae_jax.model.sampling import output_samples
from efficient_vdvae_jax.utils.state import merge_model, split_model
from tests.behaviour.synthesis_worker import all_rows, newest_checkpoint, open_run, quiet, split_images


def ema_params(paths, checkpoint=None):
    """EMA weights (NumPy, PyTorch layout) of `checkpoint`, or of the run's newest checkpoint."""
    return backend.read_weights(checkpoint or newest_checkpoint(paths, backend.checkpoint_suffix)).ema


def jax_tree(params):
    """JAX parameter tree (device arrays) of PyTorch-layout NumPy weights."""
    return jax.tree.map(jnp.asarray, torch_state_dict_to_jax(params))


def inference(config, params):
    """The framework's inference backend (what synthesize.py runs) over `params`."""
    return backend.inference(config, backend.init_distributed(config), params, log=quiet)


def posterior_std(config, stats):
    """The standard deviation of [mean, std or log-std] posterior stats."""
    m = config.model
    return stats[1] if m.distribution_base == "std" else jnp.exp(m.gradient_smoothing_beta * stats[1])


def evaluate(config_file, workdir, n, batch, purpose=EVALUATION):
    """Per-image NELBO terms (nats), SSIM and uint8 output samples of the first n test images by
    evaluate_batch_fn (`purpose`, counter 0, EMA weights), in batches of `batch` (the last partial)."""
    config, paths = open_run(config_file, workdir)
    arch = build_architecture(config.model, config.data)
    graphdef, _, rest = split_model(build_model(config))
    params = jax_tree(ema_params(paths))
    fn = evaluate_batch_fn(graphdef, rest, config, arch, purpose)
    images, _ = split_images(config, "test", n)
    outs = []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        result = fn(params, jnp.asarray(images[idx]), jnp.asarray(idx, jnp.int32), np.int32(0))
        outs.append(eval_output(result, config, (0, len(idx)), images[idx], details=True))
    return {"recon_nats": np.concatenate([o.recon_nats for o in outs]),
            "kl_nats": np.concatenate([o.kl_nats for o in outs]), "ssim": np.concatenate([o.ssim for o in outs]),
            "pngs": np.concatenate([images_to_uint8(o.samples, config) for o in outs])}


def posterior_decode(config_file, workdir, encodings, checkpoint=None):
    """See synthesis_kernels_torch.posterior_decode."""
    config, paths = open_run(config_file, workdir)
    arch = build_architecture(config.model, config.data)
    params = ema_params(paths, checkpoint)
    graphdef, _, rest = split_model(build_model(config))
    kernels, enc = inference(config, params), read_encodings(encodings)
    idx = np.arange(len(enc))
    images = split_images(config, DATASET_SPLIT[enc.metadata["split"]], len(enc))[0]
    key = seed_key(config.run.seed, DECODING, 0)

    @jax.jit
    def passes(params, images, given, indices):
        model = merge_model(graphdef, params, rest)
        zeros = [jnp.zeros((images.shape[0], *s)) for s in latent_shapes(arch)]
        logits, posteriors, _ = model(images, None, zeros)
        decoded, _ = model.sample(images.shape[0], [1.0] * arch.n_latent_layers, given,
                                  noise=image_noise(key, arch, indices, PRIOR_STREAM))
        reconstruction = output_samples(logits, config, None, noise=output_noise(key, config, indices))
        return logits, decoded, reconstruction, [(p[0], posterior_std(config, p)) for p in posteriors]

    latents = decoding_latents(enc, arch, idx, config.run.seed)
    given = [None if e is None else (jnp.asarray(e[0]), jnp.asarray(e[1])) for e in latents]
    logits, decoded_logits, reconstruction, stats = passes(jax_tree(params), jnp.asarray(images), given,
                                                           jnp.asarray(idx, jnp.int32))
    result = {"forward_logits": np.asarray(logits), "decode_logits": np.asarray(decoded_logits),
              "reconstruction": np.asarray(reconstruction), "decoded": kernels.decode(latents, idx)}
    kernel_stats = kernels.posterior_means(images, all_rows(idx), None)
    for layer, ((mean, std), (k_mean, k_std)) in enumerate(zip(stats, kernel_stats)):
        result.update({f"mean_{layer}": np.asarray(mean), f"std_{layer}": np.asarray(std),
                       f"kernel_mean_{layer}": k_mean, f"kernel_std_{layer}": k_std})
    return result


def decode_logits(config_file, workdir, encodings, checkpoint):
    """Logits of the prior pass given the encoded means (all other variates: decoding's prior eps)."""
    return {"logits": posterior_decode(config_file, workdir, encodings, checkpoint)["decode_logits"]}


def samples(config_file, workdir):
    """The backend's prior samples at temperature 1: images 0-3 twice, images 4-7, images 0-3 of counter 1."""
    config, paths = open_run(config_file, workdir)
    kernels = inference(config, ema_params(paths))
    ones = [1.0] * kernels.arch.n_latent_layers
    return {"first": kernels.sample(np.arange(4), ones, 0), "again": kernels.sample(np.arange(4), ones, 0),
            "next": kernels.sample(np.arange(4, 8), ones, 0), "counter_1": kernels.sample(np.arange(4), ones, 1)}


def kl_per_variate(config_file, workdir, n, subset_ratio):
    """The backend's KL per variate (nats, mean over positions) of the first n div_stats images, one batch."""
    config, paths = open_run(config_file, workdir)
    images = np.stack([open_split(config, "div_stats", n, subset_ratio=subset_ratio).load(i) for i in range(n)])
    kernels = inference(config, ema_params(paths))
    return {"kl": kernels.kl_per_variate(images.astype(np.float32), all_rows(np.arange(n)))}


def logstd_posteriors(config_file, sets):
    """See synthesis_kernels_torch.logstd_posteriors."""
    config = load_config(config_file, list(sets))[0]
    arch = build_architecture(config.model, config.data)
    graphdef, params, rest = split_model(build_model(config, seed=0))
    kernels = inference(config, jax_params_to_torch_state_dict(jax.tree.map(np.asarray, params)))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)

    @jax.jit
    def forward(params, images):
        zeros = [jnp.zeros((2, *s)) for s in latent_shapes(arch)]
        _, posteriors, _ = merge_model(graphdef, params, rest)(images, None, zeros)
        beta = config.model.gradient_smoothing_beta
        return [(p[0], jnp.exp(beta * p[1])) for p in posteriors]

    result = {}
    pairs = zip(forward(params, jnp.asarray(images)), kernels.posterior_means(images, all_rows([0, 1]), None))
    for layer, ((mean, std), (k_mean, k_std)) in enumerate(pairs):
        result.update({f"mean_{layer}": np.asarray(mean), f"std_{layer}": np.asarray(std),
                       f"kernel_mean_{layer}": k_mean, f"kernel_std_{layer}": k_std})
    return result
