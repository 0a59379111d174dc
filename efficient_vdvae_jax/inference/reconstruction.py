"""'reconstruction' mode: encode and decode the test split, report NELBO and SSIM, write the images.

The metrics come from the code of training-time evaluation (`evaluate_batch_fn` + `MetricAccumulator`),
over every image of the split (the last partial batch is padded, its padding ignored). With
`mask_reconstruction`, the variates masked by div_stats take prior samples and their KL is not counted.
Outputs are those of the PyTorch side: reconstructed/image-<NNNN>.png (target-<NNNN>.png) and
reconstruction_metrics.json.
"""
import json

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.runs import atomic_write_text
from efficient_vdvae_jax.evaluation import MetricAccumulator, evaluate_batch_fn, images_to_uint8
from efficient_vdvae_jax.inference import common
from efficient_vdvae_jax.inference.data import eval_batches
from efficient_vdvae_jax.model.losses import LN2, effective_pixels
from efficient_vdvae_jax.utils import distributed as D

METRICS_FILE = "reconstruction_metrics.json"


def report_unit_name(binarized):
    return "nats/image" if binarized else "bits/dim"


def run_reconstruction(loaded, paths, options, log=print):
    """Reconstruct the test split; returns the metrics dict also written to reconstruction_metrics.json."""
    cfg, syn = loaded.config, loaded.config.synthesis
    masks = mask_list = None
    if syn.mask_reconstruction:
        masks = common.load_variate_masks(paths.latents, loaded.arch, syn.variate_masks_quantile,
                                          "masked reconstruction (synthesis.mask_reconstruction = True)")
        mask_list = common.mask_arrays(masks)
        log("Masked reconstruction with " + common.describe_masks(masks, syn.variate_masks_quantile))
    batches = eval_batches(loaded, "test", syn.batch_size, options.max_images)
    log(f"Reconstructing {batches.n_images} images of the test split")
    binarized = is_binarized(cfg.data)
    acc = MetricAccumulator(binarized=binarized, effective_pixels=effective_pixels(cfg.data),
                            n_layers=loaded.arch.n_latent_layers)
    evaluate = evaluate_batch_fn(loaded.graphdef, loaded.rest, cfg, loaded.arch)
    out_dir = paths.synthesis_images / "reconstructed"
    written, targets = [], []
    bar = common.progress(batches, len(batches), "reconstruction")
    for index, batch in enumerate(bar):
        images = D.global_batch(loaded.mesh, batch.images)
        result = evaluate(loaded.params, images, common.batch_key(cfg.run.seed, common.SALT_POSTERIOR, index),
                          mask_list)
        acc.add(result, batch.n_valid)
        n = batch.n_valid
        written += common.save_pngs(out_dir, "image-{:04d}.png", images_to_uint8(result["samples"], cfg)[:n],
                                    batch.start)
        if syn.save_target_in_reconstruction:
            targets += common.save_pngs(out_dir, "target-{:04d}.png", images_to_uint8(images, cfg)[:n], batch.start)
        nelbo = (D.to_host(result["recon"])[:n] + D.to_host(result["kl"])[:n]).mean()
        nelbo = nelbo if binarized else nelbo / (acc.effective_pixels * LN2)
        bar.set_postfix_str(f"batch NELBO {nelbo:.4f} {report_unit_name(binarized)}")
    bar.close()
    metrics = acc.result(cfg.metrics.latent_active_threshold)
    units = report_unit_name(binarized)
    report = {"mode": "reconstruction", "split": "test", "n_images": metrics["n_examples"], "units": units,
              "nelbo": metrics["nelbo"], "reconstruction_loss": metrics["reconstruction_loss"],
              "kl_div": metrics["kl_div"], "ssim": metrics["ssim"],
              "kl_per_layer_bits_per_latent": metrics["kl_per_layer_bits"],
              "checkpoint": str(loaded.checkpoint), "checkpoint_step": loaded.step, "weights": loaded.weights,
              "seed": cfg.run.seed, "output_temperature": syn.output_temperature, "masked": None,
              "framework": "jax"}
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
