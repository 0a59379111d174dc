"""Per-image noise and the evaluation kernel that validation and the synthesis modes share (PyTorch, NCHW).

Every random tensor of image i in a pass (`purpose`, `counter`) comes from its own generator seeded by
`efficient_vdvae_core.randomness.image_seeds(seed, purpose, counter, [i], stream)`, so an image's result
does not depend on its batch, its process, or what ran before.
"""
import math

import torch

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.metrics import MNIST_SIZE
from efficient_vdvae_core.randomness import LATENT_STREAM, OUTPUT_STREAM, PRIOR_STREAM, image_seeds
from efficient_vdvae_core.training.backend import EvalOutput
from efficient_vdvae_torch.model.losses import split_mol_logits, vae_objective
from efficient_vdvae_torch.model.sampling import bernoulli_probs, sample_bernoulli, sample_mol
from efficient_vdvae_torch.utils.ssim import ssim_per_example


def latent_shapes(arch):
    """(V, H, W) of every latent layer."""
    return [(b.latent_variates, b.resolution, b.resolution) for b in arch.latent_layers]


def output_noise_shapes(config):
    """Shapes of one image's output-head uniforms: MoL (M, R, R) and (C, R, R), Bernoulli (1, 28, 28)."""
    if is_binarized(config.data):
        return [(1, MNIST_SIZE, MNIST_SIZE)]
    r = config.data.target_res
    return [(config.model.num_output_mixtures, r, r), (config.data.channels, r, r)]


def per_image_draw(seeds, shapes, device, kind="normal"):
    """For each seed one generator, one flat draw split into `shapes`: a list of (B, *shape) tensors."""
    sizes = [math.prod(s) for s in shapes]
    rows = []
    for seed in seeds:
        g = torch.Generator(device=device).manual_seed(int(seed))
        draw = torch.randn if kind == "normal" else torch.rand
        rows.append(draw(sum(sizes), generator=g, device=device))
    flat = torch.stack(rows)
    parts, offset = [], 0
    for size, shape in zip(sizes, shapes):
        parts.append(flat[:, offset:offset + size].reshape(len(seeds), *shape))
        offset += size
    return parts


def image_noise(config, arch, purpose, counter, indices, device, stream=LATENT_STREAM):
    """Standard normal eps (B, V, H, W) per latent layer for images `indices` of a pass."""
    return per_image_draw(image_seeds(config.run.seed, purpose, counter, indices, stream), latent_shapes(arch), device)


def output_noise(config, purpose, counter, indices, device):
    """The output head's uniforms for images `indices` of a pass."""
    seeds = image_seeds(config.run.seed, purpose, counter, indices, OUTPUT_STREAM)
    return per_image_draw(seeds, output_noise_shapes(config), device, kind="uniform")


def output_samples(logits, config, noise=None, temperature=None, generator=None):
    """Images sampled from the output head: MoL in [-1, 1] (B, C, R, R), Bernoulli {0, 1} (B, 1, 28, 28)."""
    t = config.synthesis.output_temperature if temperature is None else temperature
    if is_binarized(config.data):
        return sample_bernoulli(logits, temperature=t, generator=generator, noise=None if noise is None else noise[0])
    m = config.model
    return sample_mol(logits, num_bits=config.data.num_bits, num_mixtures=m.num_output_mixtures,
                      distribution_base=m.output_distribution_base, beta=m.output_gradient_smoothing_beta,
                      min_log_scale=config.loss.min_mol_logscale, temperature=t, generator=generator, noise=noise)


def output_means(logits, config):
    """Bernoulli probabilities float32 (B, 28, 28, 1) of binarized data's output head (None for MoL outputs)."""
    if not is_binarized(config.data):
        return None
    return nhwc(bernoulli_probs(logits.float(), config.synthesis.output_temperature))


def nhwc(tensor):
    """(B, C, H, W) tensor -> float32 NumPy (B, H, W, C)."""
    return tensor.detach().float().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def evaluate_batch(model, images, config, arch, *, purpose, counter, indices, variate_masks=None, details=False):
    """EvalOutput of one batch: posterior samples, NELBO terms at beta 1, output samples and SSIM per image.

    Variates that `variate_masks` sets to 0 take prior samples and their KL is not counted.
    """
    device = images.device
    noise = image_noise(config, arch, purpose, counter, indices, device)
    prior_noise = None
    if variate_masks is not None:
        prior_noise = image_noise(config, arch, purpose, counter, indices, device, stream=PRIOR_STREAM)
    logits, posteriors, priors = model(images, variate_masks, noise, prior_noise)
    logits = logits.float()
    objective = vae_objective(logits, images, posteriors, priors, config, beta=1.0, gamma_on=False,
                              batch_size=images.shape[0], variate_masks=variate_masks)
    samples = output_samples(logits, config, noise=output_noise(config, purpose, counter, indices, device))
    if is_binarized(config.data):
        ssim = torch.zeros(images.shape[0], device=device)
    else:
        ssim = ssim_per_example(samples, images)
    extra = {}
    if details:
        extra = {"inputs": nhwc(images), "samples": nhwc(samples), "means": output_means(logits, config)}
        if not is_binarized(config.data):
            _, means, log_scales, _ = split_mol_logits(logits, config.model.num_output_mixtures)
            extra["histograms"] = {"OutputLayer/means": means.cpu().numpy(),
                                   "OutputLayer/log_scales": log_scales.cpu().numpy()}
    return EvalOutput(recon_nats=objective.recon_per_example_nats.double().cpu().numpy(),
                      kl_nats=objective.kl_per_example_nats.double().cpu().numpy(),
                      kl_per_layer_bits=objective.kl_per_example_layer_bits.double().cpu().numpy(),
                      ssim=ssim.double().cpu().numpy(), **extra)
