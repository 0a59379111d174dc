"""'iw_nll' mode: the importance-weighted negative log-likelihood of the test split, next to its ELBO.

For each test image, log p(x) >= log (1/K) sum_k w_k with K = [synthesis] iw_samples posterior samples
z_k ~ q(z|x) and log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) (Burda et al. 2016); K = 1 is the
ELBO, and the bound tightens as K grows. Samples go through the model `iw_batch` at a time (a pass holds
batch_size x iw_batch images); sample k of image i draws its own noise (IW_NLL, counter k). Reported in
the ELBO's units (bits/dim, nats/image for binarized digits) with standard errors over images, the
negative ELBO of the same samples and the gap; `iw_nll.json` goes into this setting's folder.
"""
import json

import numpy as np

from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.data import dataset_label
from efficient_vdvae_core.iw_nll import ImportanceSampledBounds, sample_chunks, summarize
from efficient_vdvae_core.metrics import effective_pixels
from efficient_vdvae_core.runs import atomic_write_text
from efficient_vdvae_core.synthesis import common

REPORT_FILE = "iw_nll.json"


def run_iw_nll(ctx):
    """The IW-NLL report of the test split (a dict, also written as iw_nll.json)."""
    cfg, syn = ctx.config, ctx.config.synthesis
    dataset = common.open_split(cfg, "test", ctx.options.max_images)
    plan = common.plan_for(ctx, len(dataset))
    chunks = sample_chunks(syn.iw_samples, syn.iw_batch)
    ctx.log(f"Importance-weighted NLL of {len(dataset)} test images with K = {syn.iw_samples} posterior samples "
            f"({len(chunks)} passes of at most {syn.iw_batch} per batch)")
    bounds, elbos = np.zeros(len(dataset)), np.zeros(len(dataset))
    bar = common.progress(zip(plan, ctx.backend.eval_batches(dataset, plan)), len(plan), "iw_nll", ctx.dist.is_main)
    for rows, batch in bar:
        acc, first = ImportanceSampledBounds(), 0
        for size in chunks:
            acc.add(*ctx.backend.iw_terms(batch, rows, first, size))
            first += size
        bounds[rows.images[rows.valid]] = acc.log_likelihood_bound()[rows.valid]
        elbos[rows.images[rows.valid]] = acc.elbo()[rows.valid]
    bar.close()
    summary = summarize(bounds, elbos, n_samples=syn.iw_samples, binarized=is_binarized(cfg.data),
                        effective_pixels=effective_pixels(cfg.data))
    folder = common.output_folder(ctx, "iw_nll", K=syn.iw_samples)
    report = {"mode": "iw_nll", "split": "test", "dataset": dataset_label(cfg.data, "test"), **summary.to_dict(),
              "checkpoint": str(ctx.loaded.checkpoint), "checkpoint_step": ctx.loaded.step,
              "weights": ctx.loaded.weights, "seed": cfg.run.seed, "framework": ctx.framework,
              "per_image_nll_nats": (-bounds).tolist()}
    path = folder / REPORT_FILE
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    u = summary.units
    stderr = (lambda v: "" if v is None else f" +- {v:.6f}")
    ctx.log("=" * 80)
    ctx.log(f"IW-NLL (K = {syn.iw_samples}) of {summary.n_images} test images: {summary.iw_nll:.6f}"
            f"{stderr(summary.iw_nll_stderr)} {u} | NELBO {summary.nelbo:.6f}{stderr(summary.nelbo_stderr)} {u} | "
            f"gap {summary.gap:.6f}{stderr(summary.gap_stderr)} {u} ({report['dataset']})")
    ctx.log(f"Wrote {path}")
    return report
