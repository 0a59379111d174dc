"""The PyTorch inference backend: one model in eval mode on one device, the kernels of the synthesis modes.

Inputs and outputs are NumPy NHWC (`efficient_vdvae_core.synthesis.backend`); every random draw of image i
is its own (`efficient_vdvae_torch.evaluation.per_image_draw`).
"""
import numpy as np
import torch

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.randomness import (DECODING, DIV_STATS, ENCODING, EVALUATION, GENERATION, IW_NLL,
                                             PRIOR_STREAM)
from efficient_vdvae_torch.data.loaders import plan_loader
from efficient_vdvae_torch.evaluation import evaluate_batch, image_noise, nhwc, output_noise, output_samples
from efficient_vdvae_torch.model.autoencoder import Autoencoder
from efficient_vdvae_torch.model.likelihood import importance_terms
from efficient_vdvae_torch.model.losses import gaussian_kl
from efficient_vdvae_torch.utils import distributed


def mask_tensors(masks, device):
    """Per-layer float (V,) tensors (1 = posterior, 0 = prior) of boolean masks (N_lat, V), or None."""
    if masks is None:
        return None
    return [torch.as_tensor(np.asarray(row, dtype=np.float32), device=device) for row in masks]


def nchw(array, device):
    """NumPy (B, H, W, C) -> float32 (B, C, H, W) tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array, np.float32).transpose(0, 3, 1, 2))).to(device)


class TorchInference:
    """The model of a synthesis, with the synthesis modes' kernels (the core's InferenceBackend)."""

    def __init__(self, config, dist, params, log=print):
        self.config, self.dist, self.device = config, dist, dist.device
        self.arch = build_architecture(config.model, config.data)
        self.model = Autoencoder(self.arch, config.model)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()}, strict=True)
        self.model = self.model.to(self.device).eval()
        log(f"Running on {dist.description}")

    def eval_batches(self, dataset, plan):
        for images in plan_loader(self.config, dataset, plan):
            yield images.to(self.device, non_blocking=True)

    @torch.no_grad()
    def reconstruct(self, images, rows, masks):
        return evaluate_batch(self.model, images, self.config, self.arch, purpose=EVALUATION, counter=0,
                              indices=rows.images, variate_masks=mask_tensors(masks, self.device), details=True)

    @torch.no_grad()
    def kl_per_variate(self, images, rows):
        noise = image_noise(self.config, self.arch, DIV_STATS, 0, rows.images, self.device)
        _, posteriors, priors = self.model(images, None, noise)
        m = self.config.model
        layers = [gaussian_kl(post, prior, distribution_base=m.distribution_base, beta=m.gradient_smoothing_beta)
                  .double().mean(dim=(2, 3)) for post, prior in zip(posteriors, priors)]  # each (B, V)
        return torch.stack(layers, dim=1).cpu().numpy()

    @torch.no_grad()
    def posterior_means(self, images, rows, masks):
        zeros = [torch.zeros((images.shape[0], *s), device=self.device) for s in
                 [(b.latent_variates, b.resolution, b.resolution) for b in self.arch.latent_layers]]
        prior_noise = image_noise(self.config, self.arch, ENCODING, 0, rows.images, self.device, stream=PRIOR_STREAM)
        _, posteriors, _ = self.model(images, mask_tensors(masks, self.device), zeros, prior_noise)
        blocks = [block for _, block in self.model.top_down.blocks()]
        return [(nhwc(post[0]), nhwc(block.posterior_layer.std(post))) for post, block in zip(posteriors, blocks)]

    @torch.no_grad()
    def decode(self, latents, indices, temperatures=None, purpose=DECODING, counter=0):
        given = [None if entry is None else (nchw(entry[0], self.device), torch.as_tensor(entry[1], device=self.device))
                 for entry in latents]
        noise = image_noise(self.config, self.arch, purpose, counter, indices, self.device, stream=PRIOR_STREAM)
        temperatures = [1.0] * self.arch.n_latent_layers if temperatures is None else list(temperatures)
        logits, _ = self.model.sample(len(indices), temperatures, given, noise=noise)
        return nhwc(output_samples(logits.float(), self.config,
                                   noise=output_noise(self.config, purpose, counter, indices, self.device)))

    @torch.no_grad()
    def iw_terms(self, images, rows, first_sample, n_samples):
        """Importance-sampling terms (NumPy, sample-major) of samples first_sample.. of every image."""
        noise = [image_noise(self.config, self.arch, IW_NLL, s, rows.images, self.device)
                 for s in range(first_sample, first_sample + n_samples)]
        noise = [torch.stack(layer) for layer in zip(*noise)]  # per layer (k, B, V, H, W)
        terms = importance_terms(self.model, images, noise, self.config)
        return tuple(t.cpu().numpy() for t in terms)

    @torch.no_grad()
    def sample(self, indices, temperatures, counter):
        noise = image_noise(self.config, self.arch, GENERATION, counter, indices, self.device)
        logits, _ = self.model.sample(len(indices), list(temperatures), noise=noise)
        return nhwc(output_samples(logits.float(), self.config,
                                   noise=output_noise(self.config, GENERATION, counter, indices, self.device)))

    def all_reduce_sum(self, array):
        """Sum over the processes (float64), the array itself in one process."""
        tensor = torch.as_tensor(np.asarray(array, np.float64), device=self.device)
        return distributed.all_reduce_sum(tensor).cpu().numpy()

    def barrier(self):
        distributed.barrier()
