"""'reconstruction' mode: encode and decode the test split, report NELBO and SSIM, write the images.

The metrics come from the code of training-time evaluation (`evaluate_batch` + `MetricAccumulator`) at
the inference step (beta = 1, gamma off), over every image of the split (the last partial batch is
kept; the originals dropped it). With `mask_reconstruction`, the variates masked by div_stats take prior
samples and their KL is not counted (as the JAX original; the PyTorch original still counted it).
"""
import json

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.runs import atomic_write_text
from efficient_vdvae_core.schedules import inference_step
from efficient_vdvae_torch.evaluation import MetricAccumulator, evaluate_batch, images_to_uint8
from efficient_vdvae_torch.inference import common
from efficient_vdvae_torch.inference.data import eval_loader
from efficient_vdvae_torch.model.losses import effective_pixels, nats_per_dim_to_report, report_unit_name

METRICS_FILE = "reconstruction_metrics.json"


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
    report = {"mode": "reconstruction", "split": "test", "n_images": metrics["n_examples"], "units": units,
              "nelbo": metrics["nelbo"], "reconstruction_loss": metrics["reconstruction_loss"],
              "kl_div": metrics["kl_div"], "ssim": metrics["ssim"],
              "kl_per_layer_bits_per_latent": metrics["kl_per_layer_bits"],
              "checkpoint": str(loaded.checkpoint), "checkpoint_step": loaded.step, "weights": loaded.weights,
              "seed": cfg.run.seed, "output_temperature": syn.output_temperature, "masked": None}
    if masks is not None:
        report["masked"] = {"variate_masks_quantile": syn.variate_masks_quantile,
                            "kept_variates": int(masks.sum()), "total_variates": int(masks.size),
                            "kept_per_layer": [int(k) for k in masks.sum(axis=1)],
                            "note": "masked variates use prior samples; their KL is not counted"}
    log("=" * 80)
    what = "Masked reconstruction" if masks is not None else "Reconstruction"
    log(f"{what} of {report['n_images']} test images ({loaded.weights} weights, checkpoint step {loaded.step})")
    if masks is not None:
        log(f"Kept {report['masked']['kept_variates']} of {report['masked']['total_variates']} variates "
            f"(quantile {syn.variate_masks_quantile})")
    log(f"NELBO: {report['nelbo']:.6f} {units} | Reconstruction: {report['reconstruction_loss']:.6f} | "
        f"KL: {report['kl_div']:.6f} | SSIM: {report['ssim']:.6f}")
    metrics_path = paths.synthesis_images / METRICS_FILE
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(metrics_path, json.dumps(report, indent=2) + "\n")
    common.report_files(log, "reconstructions", written)
    common.report_files(log, "targets", targets)
    log(f"Wrote metrics: {metrics_path}")
    return report
