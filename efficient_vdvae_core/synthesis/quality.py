"""'sample_quality' mode: FID, Inception Score and precision/recall of prior samples against the test split.

Writes quality_samples prior samples (first temperature setting, GENERATION noise of setting 0) and as
many test images as PNG folders `generated/` and `real/` of this setting's folder, then scores them with
the TorchScript Inception network at [synthesis] inception_path (a local file; nothing downloads; the
scoring needs PyTorch: JAX users get the folders and the command). `sample_quality.json` records the
weights file and its SHA-256, the image counts, the split and the resizing.
"""
import json
from pathlib import Path

import numpy as np

from efficient_vdvae_core.data import dataset_label
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import atomic_write_text
from efficient_vdvae_core.synthesis import common
from efficient_vdvae_core.temperatures import layer_temperatures
from efficient_vdvae_core.training.images import images_to_uint8

REPORT_FILE = "sample_quality.json"
IS_SPLITS, PR_K = 10, 3  # the usual Inception Score splits and k of precision/recall (fewer for fewer images)


def _write_real(ctx, folder, n):
    dataset = common.open_split(ctx.config, "test", n)
    size = ctx.config.synthesis.batch_size
    for start in common.progress(range(0, len(dataset), size), -(-len(dataset) // size), "real images",
                                 ctx.dist.is_main):
        batch = np.stack([dataset.load(i) for i in range(start, min(start + size, len(dataset)))])
        common.save_pngs(folder, "image-{:05d}.png", images_to_uint8(batch, ctx.config), start)
    return len(dataset)


def _write_generated(ctx, folder, n):
    syn = ctx.config.synthesis
    temperatures = layer_temperatures(syn.temperature_settings[0], ctx.loaded.arch)
    plan = common.plan_for(ctx, n)  # batches of batch_size, the last padded: one compiled shape
    for rows in common.progress(plan, len(plan), "generated images", ctx.dist.is_main):
        images = ctx.backend.sample(rows.images, temperatures, counter=0)[rows.valid]
        common.save_pngs(folder, "image-{:05d}.png", images_to_uint8(images, ctx.config), rows.start)
    return temperatures


def run_sample_quality(ctx, scorer):
    """The sample-quality report (also sample_quality.json); `scorer`: the framework's sample_quality_scorer()."""
    syn = ctx.config.synthesis
    inception = Path(syn.inception_path).expanduser()
    if scorer is not None and not inception.is_file():
        raise UserError(f"[synthesis] inception_path = '{syn.inception_path}': file not found; download "
                        "inception-2015-12-05.pt (StyleGAN2-ADA's metrics network, https://nvlabs-fi-cdn.nvidia.com/"
                        f"stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt) to {inception} or set "
                        "the key to where it is")
    score = None if scorer is None else scorer(inception)  # reads the detector: a bad file is refused here
    folder = common.output_folder(ctx, "sample_quality", record={"split": "test"}, n=syn.quality_samples,
                                  out=syn.output_temperature)
    n_real = _write_real(ctx, folder / "real", syn.quality_samples)
    temperatures = _write_generated(ctx, folder / "generated", n_real)
    ctx.log(f"Wrote {n_real} test images and {n_real} prior samples (per-layer temperatures "
            + ", ".join(f"{t:.3g}" for t in temperatures) + f") under {folder}")
    command = (f"python -m efficient_vdvae_torch.sample_quality --real {folder / 'real'} --fake "
               f"{folder / 'generated'} --inception {inception}")
    if score is None:
        ctx.log(f"Scoring needs PyTorch (pip install -e '.[torch]'); then run: {command}")
        return None
    report = score(folder / "real", folder / "generated", splits=min(IS_SPLITS, n_real), k=min(PR_K, n_real - 1))
    report.update({"split": "test", "dataset": dataset_label(ctx.config.data, "test"),
                   "checkpoint": str(ctx.loaded.checkpoint), "checkpoint_step": ctx.loaded.step,
                   "weights": ctx.loaded.weights, "prior_temperatures": list(temperatures),
                   "output_temperature": syn.output_temperature, "framework": ctx.framework})
    path = folder / REPORT_FILE
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    ctx.log(f"FID {report['fid']:.4f} | IS {report['inception_score']:.4f} | precision {report['precision']:.4f} | "
            f"recall {report['recall']:.4f} ({n_real} generated vs {n_real} test images); wrote {path}")
    return report
