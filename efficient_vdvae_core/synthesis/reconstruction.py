"""'reconstruction' mode: encode and decode the test split, report NELBO and SSIM, write the images.

The metrics are those of training-time validation (per-image posterior noise, beta = 1, gamma off),
summed over every image of the split (the last partial batch included; the originals dropped it).
With `mask_reconstruction`, the variates masked by div_stats take prior samples and their KL is not
counted. Writes `image-<NNNN>.png` (and `target-<NNNN>.png` with `save_target_in_reconstruction`) and
`reconstruction_metrics.json` into this setting's folder. With several processes each writes the images of
its rows and process 0 the metrics, reduced over all.
"""
import json

import numpy as np

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.data import dataset_label
from efficient_vdvae_core.evaluation import EvalAccumulator, report_scale
from efficient_vdvae_core.metrics import effective_pixels, report_unit_name
from efficient_vdvae_core.runs import atomic_write_text
from efficient_vdvae_core.synthesis import common
from efficient_vdvae_core.training.images import images_to_uint8

METRICS_FILE = "reconstruction_metrics.json"


def run_reconstruction(ctx):
    """Reconstruct the test split; returns the report also written to reconstruction_metrics.json."""
    cfg, syn, arch = ctx.config, ctx.config.synthesis, ctx.loaded.arch
    masks = None
    if syn.mask_reconstruction:
        masks = common.load_variate_masks(ctx.paths.latents, arch, syn.variate_masks_quantile,
                                          "masked reconstruction (synthesis.mask_reconstruction = True)")
        ctx.log("Masked reconstruction with " + common.describe_masks(masks, syn.variate_masks_quantile))
    dataset = common.open_split(cfg, "test", ctx.options.max_images)
    plan = common.plan_for(ctx, len(dataset))
    ctx.log(f"Reconstructing {len(dataset)} images of the test split")
    binarized = is_binarized(cfg.data)
    acc = EvalAccumulator(arch.n_latent_layers, binarized, effective_pixels(cfg.data))
    folder = common.output_folder(ctx, "reconstructed",
                                  **({"masked-q": syn.variate_masks_quantile} if masks is not None else {}),
                                  out=syn.output_temperature)
    written, targets = [], []
    scale, unit = report_scale(binarized, effective_pixels(cfg.data)), report_unit_name(binarized)
    bar = common.progress(zip(plan, ctx.backend.eval_batches(dataset, plan)), len(plan), "reconstruction",
                          ctx.dist.is_main)
    for rows, batch in bar:
        out = ctx.backend.reconstruct(batch, rows, masks)
        acc.add(out, rows.valid)
        valid, first = rows.valid, int(rows.images[0])
        written += common.save_pngs(folder, "image-{:04d}.png", images_to_uint8(out.samples[valid], cfg), first)
        if syn.save_target_in_reconstruction:
            targets += common.save_pngs(folder, "target-{:04d}.png", images_to_uint8(out.inputs[valid], cfg), first)
        if valid.any():
            nelbo = float(np.mean((out.recon_nats + out.kl_nats)[valid])) * scale
            bar.set_postfix_str(f"batch NELBO {nelbo:.4f} {unit}")
    bar.close()
    metrics = acc.result(ctx.backend.all_reduce_sum, cfg.metrics.latent_active_threshold)
    if ctx.dist.n_processes > 1:  # each process wrote its own images: say how many all wrote, not process 0's
        ctx.log(f"Wrote {metrics['n_examples']} reconstructions (by {ctx.dist.n_processes} processes) into {folder}")
        written, targets = [], []
    return write_report(ctx, metrics, unit, masks, folder, written, targets)


def write_report(ctx, metrics, units, masks, folder, written, targets):
    """Print the reconstruction summary and write it as JSON beside the images."""
    cfg, syn, loaded = ctx.config, ctx.config.synthesis, ctx.loaded
    report = {"mode": "reconstruction", "split": "test", "dataset": dataset_label(cfg.data, "test"),
              "n_images": metrics["n_examples"], "units": units,
              "nelbo": metrics["nelbo"], "reconstruction_loss": metrics["reconstruction_loss"],
              "kl_div": metrics["kl_div"], "ssim": metrics["ssim"],
              "kl_per_layer_bits_per_latent": metrics["kl_per_layer_bits"],
              "checkpoint": str(loaded.checkpoint), "checkpoint_step": loaded.step, "weights": loaded.weights,
              "seed": cfg.run.seed, "output_temperature": syn.output_temperature, "masked": None,
              "framework": ctx.framework}
    if masks is not None:
        report["masked"] = {"variate_masks_quantile": syn.variate_masks_quantile,
                            "kept_variates": int(masks.sum()), "total_variates": int(masks.size),
                            "kept_per_layer": [int(k) for k in masks.sum(axis=1)],
                            "note": "masked variates use prior samples; their KL is not counted"}
    log = ctx.log
    log("=" * 80)
    what = "Masked reconstruction" if masks is not None else "Reconstruction"
    log(f"{what} of {report['n_images']} test images of {report['dataset']} ({loaded.weights} weights, checkpoint "
        f"step {loaded.step})")
    if masks is not None:
        log(f"Kept {report['masked']['kept_variates']} of {report['masked']['total_variates']} variates "
            f"(quantile {syn.variate_masks_quantile})")
    log(f"NELBO: {report['nelbo']:.6f} {units} | Reconstruction: {report['reconstruction_loss']:.6f} | "
        f"KL: {report['kl_div']:.6f} | SSIM: {report['ssim']:.6f}")
    path = folder / METRICS_FILE
    if ctx.dist.is_main:
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    common.report_files(log, "reconstructions", written)
    common.report_files(log, "targets", targets)
    log(f"Wrote metrics: {path}")
    return report
