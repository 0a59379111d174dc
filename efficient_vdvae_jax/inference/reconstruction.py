"""'reconstruction' mode: encode and decode the test split, report NELBO and SSIM, write the images.

The metrics come from the code of training-time evaluation (`evaluate_batch_fn` + `MetricAccumulator`),
over every image of the split (the last partial batch is padded, its padding ignored). With
`mask_reconstruction`, the variates masked by div_stats take prior samples and their KL is not counted.
Outputs are those of the PyTorch side: reconstructed/image-<NNNN>.png (target-<NNNN>.png) and
reconstruction_metrics.json.
"""

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.metrics import report_unit_name
from efficient_vdvae_core.synthesis import write_reconstruction_report
from efficient_vdvae_jax.evaluation import MetricAccumulator, evaluate_batch_fn, images_to_uint8
from efficient_vdvae_jax.inference import common
from efficient_vdvae_jax.inference.data import eval_batches
from efficient_vdvae_jax.model.losses import LN2, effective_pixels
from efficient_vdvae_jax.utils import distributed as D

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
    return write_reconstruction_report(metrics, units, masks, loaded, paths, written, targets, "jax", log)
