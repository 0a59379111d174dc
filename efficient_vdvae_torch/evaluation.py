"""Per-batch NELBO/SSIM evaluation shared by training-time validation and synthesis reconstruction."""
from dataclasses import dataclass, field

import torch

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.images import to_uint8
from efficient_vdvae_torch.utils.distributed import all_reduce_sum
from efficient_vdvae_torch.model.losses import LN2, vae_objective
from efficient_vdvae_torch.model.sampling import sample_bernoulli, sample_mol
from efficient_vdvae_torch.utils.ssim import ssim_per_example


def step_seed(seed, step, salt=0):
    """A 63-bit seed that depends on (seed, step, salt) only."""
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2 ** 63 - 1)


def latent_noise(arch, global_batch, rank, world_size, seed, step, device):
    """Posterior noise eps for every latent layer of this rank's slice of the global batch.

    The global batch's noise is drawn from a generator seeded by (seed, step) and rank r keeps the
    examples r, r+W, ... (the data sharding), so 1 and W processes, and resumed runs, see the same eps.
    """
    g = torch.Generator(device=device).manual_seed(step_seed(seed, step))
    return [torch.randn((global_batch, b.latent_variates, b.resolution, b.resolution), generator=g,
                        device=device)[rank::world_size] for b in arch.latent_layers]


def output_samples(logits, config, temperature=None, generator=None):
    """Images sampled from the output head: MoL in [-1, 1] (B, C, R, R), Bernoulli {0, 1} (B, 1, 28, 28)."""
    t = config.synthesis.output_temperature if temperature is None else temperature
    if is_binarized(config.data):
        return sample_bernoulli(logits, temperature=t, generator=generator)
    m = config.model
    return sample_mol(logits, num_bits=config.data.num_bits, num_mixtures=m.num_output_mixtures,
                      distribution_base=m.output_distribution_base, beta=m.output_gradient_smoothing_beta,
                      min_log_scale=config.loss.min_mol_logscale, temperature=t, generator=generator)


@dataclass
class BatchResult:
    objective: object  # losses.VAEObjective
    samples: torch.Tensor
    ssim: torch.Tensor  # (B,)
    logits: torch.Tensor


@torch.no_grad()
def evaluate_batch(model, images, config, *, step, noise=None, variate_masks=None, generator=None):
    """Forward one batch; NELBO terms (divided by this batch's size), sampled outputs and SSIM per example."""
    logits, posteriors, priors = model(images, variate_masks, noise)
    objective = vae_objective(logits.float(), images, posteriors, priors, config, step=step,
                              batch_size=images.shape[0], variate_masks=variate_masks)
    samples = output_samples(logits.float(), config, generator=generator)
    if is_binarized(config.data):
        ssim = torch.zeros(images.shape[0], device=images.device)
    else:
        ssim = ssim_per_example(samples, images)
    return BatchResult(objective=objective, samples=samples, ssim=ssim, logits=logits)


@dataclass
class MetricAccumulator:
    """Sums per-example metrics over batches and ranks; `result()` gives global means in reported units."""
    binarized: bool
    effective_pixels: int
    n_layers: int
    sums: dict = field(default_factory=dict)

    def add(self, result):
        obj = result.objective
        b = obj.recon_per_example_nats.shape[0]
        per_layer_bits = obj.kl_per_layer_bits_per_latent * b  # undo the batch mean
        values = {"count": torch.tensor(float(b), device=per_layer_bits.device),
                  "recon": obj.recon_per_example_nats.sum(), "kl": obj.kl_per_example_nats.sum(),
                  "ssim": result.ssim.sum(), "kl_layers": per_layer_bits}
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0) + v.double()

    def result(self, latent_active_threshold):
        """Means over every example seen on every rank, in bits/dim (nats/image for binarized data)."""
        flat = torch.cat([self.sums[k].reshape(-1) for k in ("count", "recon", "kl", "ssim", "kl_layers")])
        flat = all_reduce_sum(flat)
        count, recon, kl, ssim = flat[:4].tolist()
        layers = flat[4:] / max(count, 1.0)
        scale = 1.0 if self.binarized else 1.0 / (self.effective_pixels * LN2)
        recon, kl = recon / count * scale, kl / count * scale
        return {"reconstruction_loss": recon, "kl_div": kl, "nelbo": recon + kl, "ssim": ssim / count,
                "kl_per_layer_bits": layers.tolist(), "n_examples": int(count),
                "active_groups": int((layers >= latent_active_threshold).sum().item())}


def images_to_uint8(images, config):
    """(B, C, H, W) torch images -> uint8 (B, H, W, C) NumPy; binarized 32x32 targets cropped to 28x28."""
    arr = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if is_binarized(config.data) and arr.shape[1] == 32:
        arr = arr[:, 2:30, 2:30]
    return to_uint8(arr, binarized=is_binarized(config.data))
