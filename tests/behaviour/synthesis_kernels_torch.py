"""The PyTorch model and inference backend run by hand on a run's weights, for the synthesis tests.

Every function takes plain arguments and returns a dict of plain values and NumPy arrays (NHWC), so that
`synthesis_kernels_jax` can mirror it in a subprocess; the tests compare these with what synthesize.py
wrote.
"""
import numpy as np
import torch

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.encodings import read_encodings
from efficient_vdvae_core.randomness import DECODING, EVALUATION, PRIOR_STREAM
from efficient_vdvae_core.synthesis.codes import DATASET_SPLIT, decoding_latents
from efficient_vdvae_core.synthesis.common import open_split
from efficient_vdvae_core.training.images import images_to_uint8
from efficient_vdvae_torch import backend
from efficient_vdvae_torch.evaluation import (evaluate_batch, image_noise, latent_shapes, nhwc, output_noise,
                                              output_samples)
from efficient_vdvae_torch.inference import nchw
from efficient_vdvae_torch.model.autoencoder import Autoencoder
from tests.behaviour.synthesis_worker import all_rows, newest_checkpoint, open_run, quiet, split_images

DEVICE = torch.device("cpu")


def ema_params(paths, checkpoint=None):
    """EMA weights (NumPy, PyTorch layout) of `checkpoint`, or of the run's newest checkpoint."""
    return backend.read_weights(checkpoint or newest_checkpoint(paths, backend.checkpoint_suffix)).ema


def eval_model(config, params):
    """The Autoencoder of `config` with `params`, in eval mode."""
    model = Autoencoder(build_architecture(config.model, config.data), config.model)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    return model.eval()


def inference(config, params):
    """The framework's inference backend (what synthesize.py runs) over `params`."""
    return backend.inference(config, backend.init_distributed(config), params, log=quiet)


def posterior_std(config, stats):
    """The standard deviation of [mean, std or log-std] posterior stats."""
    m = config.model
    return stats[1] if m.distribution_base == "std" else torch.exp(m.gradient_smoothing_beta * stats[1])


@torch.no_grad()
def evaluate(config_file, workdir, n, batch, purpose=EVALUATION):
    """Per-image NELBO terms (nats), SSIM and uint8 output samples of the first n test images by
    evaluate_batch (`purpose`, counter 0, EMA weights), in batches of `batch` (the last partial)."""
    config, paths = open_run(config_file, workdir)
    arch = build_architecture(config.model, config.data)
    model = eval_model(config, ema_params(paths))
    images, _ = split_images(config, "test", n)
    outs = []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        outs.append(evaluate_batch(model, nchw(images[idx], DEVICE), config, arch, purpose=purpose, counter=0,
                                   indices=idx, details=True))
    return {"recon_nats": np.concatenate([o.recon_nats for o in outs]),
            "kl_nats": np.concatenate([o.kl_nats for o in outs]), "ssim": np.concatenate([o.ssim for o in outs]),
            "pngs": np.concatenate([images_to_uint8(o.samples, config) for o in outs])}


@torch.no_grad()
def posterior_decode(config_file, workdir, encodings, checkpoint=None):
    """For the images of an encodings folder: the posterior stats with z = posterior means, by the model
    (eps = 0) and by the backend's posterior_means; the logits of that pass and of the prior pass given the
    encoded means (the decode); the posterior-mean reconstruction sampled with the decoding mode's output
    noise, and the backend's decode of the encoded latents."""
    config, paths = open_run(config_file, workdir)
    arch = build_architecture(config.model, config.data)
    params = ema_params(paths, checkpoint)
    model, kernels, enc = eval_model(config, params), inference(config, params), read_encodings(encodings)
    idx = np.arange(len(enc))
    images = nchw(split_images(config, DATASET_SPLIT[enc.metadata["split"]], len(enc))[0], DEVICE)
    zeros = [torch.zeros((len(idx), *s)) for s in latent_shapes(arch)]
    logits, posteriors, _ = model(images, None, zeros)
    latents = decoding_latents(enc, arch, idx, config.run.seed)
    given = [None if e is None else (nchw(e[0], DEVICE), torch.as_tensor(e[1])) for e in latents]
    decode_logits, _ = model.sample(len(idx), [1.0] * arch.n_latent_layers, given,
                                    noise=image_noise(config, arch, DECODING, 0, idx, DEVICE, stream=PRIOR_STREAM))
    result = {"forward_logits": nhwc(logits), "decode_logits": nhwc(decode_logits),
              "reconstruction": nhwc(output_samples(logits.float(), config,
                                                    noise=output_noise(config, DECODING, 0, idx, DEVICE))),
              "decoded": kernels.decode(latents, idx)}
    stats = kernels.posterior_means(images, all_rows(idx), None)
    for layer, (post, (mean, std)) in enumerate(zip(posteriors, stats)):
        result.update({f"mean_{layer}": nhwc(post[0]), f"std_{layer}": nhwc(posterior_std(config, post)),
                       f"kernel_mean_{layer}": mean, f"kernel_std_{layer}": std})
    return result


@torch.no_grad()
def decode_logits(config_file, workdir, encodings, checkpoint):
    """Logits of the prior pass given the encoded means (all other variates: decoding's prior eps)."""
    return {"logits": posterior_decode(config_file, workdir, encodings, checkpoint)["decode_logits"]}


@torch.no_grad()
def samples(config_file, workdir):
    """The backend's prior samples at temperature 1: images 0-3 twice, images 4-7, images 0-3 of counter 1."""
    config, paths = open_run(config_file, workdir)
    kernels = inference(config, ema_params(paths))
    ones = [1.0] * kernels.arch.n_latent_layers
    return {"first": kernels.sample(np.arange(4), ones, 0), "again": kernels.sample(np.arange(4), ones, 0),
            "next": kernels.sample(np.arange(4, 8), ones, 0), "counter_1": kernels.sample(np.arange(4), ones, 1)}


@torch.no_grad()
def kl_per_variate(config_file, workdir, n, subset_ratio):
    """The backend's KL per variate (nats, mean over positions) of the first n div_stats images, one batch."""
    config, paths = open_run(config_file, workdir)
    images = np.stack([open_split(config, "div_stats", n, subset_ratio=subset_ratio).load(i) for i in range(n)])
    kernels = inference(config, ema_params(paths))
    return {"kl": kernels.kl_per_variate(nchw(images, DEVICE), all_rows(np.arange(n)))}


@torch.no_grad()
def logstd_posteriors(config_file, sets):
    """A model with freshly initialised weights: the backend's posterior_means of two random images, and
    the posterior mean and exp(beta * log-std) of the model's own pass (eps = 0)."""
    config = load_config(config_file, list(sets))[0]
    arch = build_architecture(config.model, config.data)
    torch.manual_seed(0)
    model = Autoencoder(arch, config.model).eval()
    kernels = inference(config, {k: v.numpy() for k, v in model.state_dict().items()})
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    _, posteriors, _ = model(nchw(images, DEVICE), None, [torch.zeros((2, *s)) for s in latent_shapes(arch)])
    result = {}
    for layer, (post, (mean, std)) in enumerate(zip(posteriors, kernels.posterior_means(nchw(images, DEVICE),
                                                                                         all_rows([0, 1]), None))):
        beta = config.model.gradient_smoothing_beta
        result.update({f"mean_{layer}": nhwc(post[0]), f"std_{layer}": nhwc(torch.exp(beta * post[1])),
                       f"kernel_mean_{layer}": mean, f"kernel_std_{layer}": std})
    return result

