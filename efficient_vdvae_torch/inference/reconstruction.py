"""'reconstruction' mode: encode and decode the test split, report NELBO and SSIM, write the images.

The metrics come from the code of training-time evaluation (`evaluate_batch` + `MetricAccumulator`) at
the inference step (beta = 1, gamma off), over every image of the split (the last partial batch is
kept; the originals dropped it). With `mask_reconstruction`, the variates masked by div_stats take prior
samples and their KL is not counted (as the JAX original; the PyTorch original still counted it).
"""

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.schedules import inference_step
from efficient_vdvae_core.synthesis import write_reconstruction_report
from efficient_vdvae_torch.evaluation import MetricAccumulator, evaluate_batch, images_to_uint8
from efficient_vdvae_torch.inference import common
from efficient_vdvae_torch.inference.data import eval_loader
from efficient_vdvae_torch.model.losses import effective_pixels, nats_per_dim_to_report, report_unit_name

def reconstruct_batch(loaded, images, index, seed, masks=None):
    """BatchResult of batch `index`: posterior samples with that batch's noise, outputs with its generator."""
    arch, device = loaded.arch, loaded.device
    noise = common.posterior_noise(arch, images.shape[0], seed, index, device)
    with common.seeded_global_rng(seed, index, device):  # prior samples of masked variates
        return evaluate_batch(loaded.model, images, loaded.config, step=inference_step(loaded.config.loss),
                              noise=noise, variate_masks=masks, generator=common.output_generator(seed, index, device))


def run_reconstruction(loaded, paths, options, log=print):
    """Reconstruct the test split; returns the metrics dict also written to reconstruction_metrics.json."""
    cfg, syn, device = loaded.config, loaded.config.synthesis, loaded.device
    masks = masks_t = None
    if syn.mask_reconstruction:
        masks = common.load_variate_masks(paths.latents, loaded.arch, syn.variate_masks_quantile,
                                          "masked reconstruction (synthesis.mask_reconstruction = True)")
        masks_t = common.mask_tensors(masks, device)
        log("Masked reconstruction with " + common.describe_masks(masks, syn.variate_masks_quantile))
    loader = eval_loader(cfg, "test", syn.batch_size, options.max_images)
    log(f"Reconstructing {len(loader.dataset)} images of the test split")
    binarized = is_binarized(cfg.data)
    acc = MetricAccumulator(binarized=binarized, effective_pixels=effective_pixels(cfg.data),
                            n_layers=loaded.arch.n_latent_layers)
    out_dir = paths.synthesis_images / "reconstructed"
    written, targets, start = [], [], 0
    bar = common.progress(loader, len(loader), "reconstruction")
    for index, images in enumerate(bar):
        images = images.to(device)
        result = reconstruct_batch(loaded, images, index, cfg.run.seed, masks_t)
        acc.add(result)
        written += common.save_pngs(out_dir, "image-{:04d}.png", images_to_uint8(result.samples, cfg), start)
        if syn.save_target_in_reconstruction:
            targets += common.save_pngs(out_dir, "target-{:04d}.png", images_to_uint8(images, cfg), start)
        start += images.shape[0]
        nelbo = nats_per_dim_to_report(float(result.objective.recon_nats_per_dim + result.objective.kl_nats_per_dim),
                                       binarized=binarized, effective_pixels=acc.effective_pixels)
        bar.set_postfix_str(f"batch NELBO {nelbo:.4f} {report_unit_name(binarized)}")
    bar.close()
    metrics = acc.result(cfg.metrics.latent_active_threshold)
    units = report_unit_name(binarized)
    return write_reconstruction_report(metrics, units, masks, loaded, paths, written, targets, "torch", log)
