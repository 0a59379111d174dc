"""Framework-neutral pieces of the synthesis modes: div_stats masks, progress bars, PNG sets, reports."""
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import save_png
from efficient_vdvae_core.masks import kept_count, variate_masks
from efficient_vdvae_core.runs import atomic_write_text

ENCODING_SPLITS = ("train", "val", "test")  # what the encoding mode can encode (--split)

DIV_STATS_FILE = "div_stats.npy"
METRICS_FILE = "reconstruction_metrics.json"


def uniform_variates(arch):
    """The number of variates V shared by every latent layer; UserError if layers differ."""
    counts = sorted({b.latent_variates for b in arch.latent_layers})
    if len(counts) != 1:
        raise UserError(f"div_stats and variate masks need the same number of latent variates in every layer, "
                        f"but [model] down_latent_variates gives {counts}")
    return counts[0]


def load_variate_masks(latents_dir, arch, quantile, needed_by):
    """Boolean masks (N_lat, V) from latents/div_stats.npy; a missing or foreign file is a UserError."""
    path = Path(latents_dir) / DIV_STATS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: {needed_by} needs div_stats; run synthesize.py with "
                        "--set synthesis.synthesis_mode=div_stats first")
    stats = np.load(path)
    expected = (arch.n_latent_layers, uniform_variates(arch))
    if stats.shape != expected:
        raise UserError(f"{path} has shape {stats.shape} but this model has {expected[0]} latent layers of "
                        f"{expected[1]} variates; run the div_stats mode again for this model")
    try:
        return variate_masks(stats, quantile)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def describe_masks(masks, quantile):
    """One line: how many variates and layers the masks keep."""
    kept, total = kept_count(masks), int(np.asarray(masks).size)
    layers = int(np.asarray(masks).any(axis=1).sum())
    return (f"variate masks (quantile {quantile}): {kept} of {total} variates kept, in {layers} of "
            f"{len(masks)} latent layers")


def progress(iterable, total, desc):
    """A tqdm bar over batches."""
    return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True)


def save_pngs(folder, pattern, images, start=0):
    """Write uint8 (B, H, W, C) images as folder/pattern.format(start + i); returns the paths."""
    return [save_png(Path(folder) / pattern.format(start + i), image) for i, image in enumerate(images)]


def report_files(log, what, paths):
    """Print where a set of files went: the path of one file, or the first and last of many."""
    paths = list(paths)
    if not paths:
        return
    if len(paths) == 1:
        log(f"Wrote {what}: {paths[0]}")
    else:
        log(f"Wrote {len(paths)} {what}: {paths[0]} ... {paths[-1].name}")


def write_reconstruction_report(metrics, units, masks, loaded, paths, written, targets, framework, log=print):
    """Print the reconstruction summary and write it as JSON; `metrics` comes from a MetricAccumulator."""
    cfg, syn = loaded.config, loaded.config.synthesis
    report = {"mode": "reconstruction", "split": "test", "n_images": metrics["n_examples"], "units": units,
              "nelbo": metrics["nelbo"], "reconstruction_loss": metrics["reconstruction_loss"],
              "kl_div": metrics["kl_div"], "ssim": metrics["ssim"],
              "kl_per_layer_bits_per_latent": metrics["kl_per_layer_bits"],
              "checkpoint": str(loaded.checkpoint), "checkpoint_step": loaded.step, "weights": loaded.weights,
              "seed": cfg.run.seed, "output_temperature": syn.output_temperature, "masked": None,
              "framework": framework}
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
    report_files(log, "reconstructions", written)
    report_files(log, "targets", targets)
    log(f"Wrote metrics: {metrics_path}")
    return report
