"""'encoding' and 'decoding' modes: posterior statistics of the kept variates to disk, and back to images.

Encoding runs the posterior pass with z = posterior mean for the kept variates (eps = 0) and a prior
sample for the masked ones, and stores, for every image of the split, the posterior mean and standard
deviation of the kept variates (format: `efficient_vdvae_core.encodings`; NHWC NumPy files, so an
encoding written by either framework decodes in the other). Decoding runs the prior pass with z = the
stored mean (or mean + T * std * eps) for the kept variates and prior samples (temperature 1) for all
others, then samples the output head. With every variate kept and T = 0, decoding reproduces the
posterior-mean reconstruction.
"""
from pathlib import Path

import numpy as np

from efficient_vdvae_core.encodings import (EncodingsError, EncodingWriter, check_same_model, kept_layer_specs,
                                            read_encodings, safe_file_stems)
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.evaluation import EvalPlan
from efficient_vdvae_core.images import save_png
from efficient_vdvae_core.randomness import DECODING, LATENT_STREAM, derived_seed
from efficient_vdvae_core.synthesis import common
from efficient_vdvae_core.training.images import images_to_uint8

DATASET_SPLIT = {"train": "encode", "val": "val", "test": "test"}  # --split -> dataset split


def encodings_folder(paths, seed, split="train"):
    """latents/encodings_seed_<seed> for the train split, latents/encodings_seed_<seed>_<split> otherwise."""
    return paths.latents / (f"encodings_seed_{seed}" if split == "train" else f"encodings_seed_{seed}_{split}")


def run_encoding(ctx):
    """Encode every image of the chosen split into latents/encodings_seed_<seed>[_<split>]/; returns the folder."""
    cfg, syn, arch, options = ctx.config, ctx.config.synthesis, ctx.loaded.arch, ctx.options
    masks = common.load_variate_masks(ctx.paths.latents, arch, syn.variate_masks_quantile, "encoding")
    ctx.log("Encoding with " + common.describe_masks(masks, syn.variate_masks_quantile))
    specs = kept_layer_specs(masks, [b.resolution for b in arch.latent_layers])
    if not specs:
        raise UserError(f"no variate is kept with variate_masks_quantile = {syn.variate_masks_quantile}; raise it")
    dataset = common.open_split(cfg, DATASET_SPLIT[options.split], options.max_images)
    plan = common.plan_for(ctx, len(dataset))
    folder = encodings_folder(ctx.paths, cfg.run.seed, options.split)
    base = cfg.model.distribution_base
    metadata = {
        "run_name": cfg.run.name, "dataset_source": cfg.data.dataset_source, "split": options.split,
        "seed": cfg.run.seed, "framework": ctx.framework, "checkpoint": str(ctx.loaded.checkpoint),
        "checkpoint_step": ctx.loaded.step, "weights": ctx.loaded.weights,
        "variate_masks_quantile": syn.variate_masks_quantile, "distribution_base": base,
        "std_note": ("posterior standard deviation, converted from the model's log-std: std = exp(beta * logstd), "
                     f"beta = {cfg.model.gradient_smoothing_beta}") if base == "logstd"
                    else "posterior standard deviation, as the model outputs it",
        "encoder_pass": "each layer's posterior is computed given z = posterior mean for the kept variates of the "
                        "layers above and prior samples for their masked variates",
        "image_resolution": cfg.data.target_res, "channels": cfg.data.channels}
    ctx.log(f"Encoding {len(dataset)} images of the {options.split} split into {folder}")
    kept = {s.layer: list(s.kept_variates) for s in specs}
    processes = _Processes(ctx) if ctx.dist.n_processes > 1 else None
    with EncodingWriter(folder, specs, len(dataset), [b.latent_variates for b in arch.latent_layers],
                        metadata, fingerprint=ctx.loaded.fingerprint, processes=processes) as writer:
        for rows, batch in common.progress(zip(plan, ctx.backend.eval_batches(dataset, plan)), len(plan), "encoding",
                                           ctx.dist.is_main):
            stats = ctx.backend.posterior_means(batch, rows, masks)
            valid = rows.valid
            means = {l: np.asarray(stats[l][0])[valid][..., k] for l, k in kept.items()}
            stds = {l: np.asarray(stats[l][1])[valid][..., k] for l, k in kept.items()}
            if valid.any():  # the rows of a process are contiguous; padding rows come last
                writer.write(int(rows.images[0]), means, stds, [dataset.name(int(i)) for i in rows.images[valid]])
        writer.close([dataset.name(i) for i in range(len(dataset))] if processes is not None and ctx.dist.is_main
                     else None)
    ctx.log(f"Wrote encodings of {len(dataset)} images ({len(specs)} kept layers): {folder}")
    return folder


class _Processes:
    """What EncodingWriter needs of a multi-process synthesis."""

    def __init__(self, ctx):
        self.is_main, self.barrier = ctx.dist.is_main, ctx.backend.barrier


def check_encodings_fit(encodings, arch):
    """EncodingsError unless the encodings were written for a model with this architecture."""
    n_variates = [b.latent_variates for b in arch.latent_layers]
    meta = encodings.metadata
    if meta.get("n_latent_layers") != len(n_variates) or list(meta.get("n_variates", [])) != n_variates:
        raise EncodingsError(f"{encodings.folder}: written for a model with {meta.get('n_latent_layers')} latent "
                             f"layers of {meta.get('n_variates')} variates, this model has {len(n_variates)} of "
                             f"{n_variates}; encode again with this model")
    for spec in encodings.layers:
        block = arch.latent_layers[spec.layer]
        kept = spec.kept_variates
        if ((spec.height, spec.width) != (block.resolution, block.resolution)
                or not all(0 <= v < block.latent_variates for v in kept) or len(set(kept)) != len(kept)):
            raise EncodingsError(f"{encodings.folder}: layer {spec.layer} is {spec.height}x{spec.width} with variates "
                                 f"{list(kept)}, which does not fit this model's "
                                 f"{block.resolution}x{block.resolution} layer of {block.latent_variates} variates")


def decoding_latents(encodings, arch, indices, seed, temperature=0.0):
    """Per layer None or (z (b, H, W, V), mask (V,)) of encoded rows `indices`: kept variates from the encodings.

    With temperature T > 0 the kept variates are mean + T * std * eps, eps drawn per image (DECODING).
    """
    by_layer = {spec.layer: spec for spec in encodings.layers}
    rngs = [np.random.default_rng(derived_seed(seed, DECODING, 0, int(i), LATENT_STREAM)) for i in indices]
    latents = []
    for layer, block in enumerate(arch.latent_layers):
        spec = by_layer.get(layer)
        if spec is None:
            latents.append(None)
            continue
        z_kept = np.array(encodings.means[layer][indices], dtype=np.float32)
        if temperature > 0:
            eps = np.stack([rng.standard_normal(spec.shape, dtype=np.float32) for rng in rngs])
            z_kept = z_kept + temperature * np.asarray(encodings.stds[layer][indices], np.float32) * eps
        z = np.zeros((len(indices), block.resolution, block.resolution, block.latent_variates), np.float32)
        z[..., list(spec.kept_variates)] = z_kept
        mask = np.zeros(block.latent_variates, np.float32)
        mask[list(spec.kept_variates)] = 1.0
        latents.append((z, mask))
    return latents


def run_decoding(ctx):
    """Decode every image of an encodings folder into synthesis-images/decoded/<its name>/<setting>/<name>.png."""
    cfg, syn, arch, options = ctx.config, ctx.config.synthesis, ctx.loaded.arch, ctx.options
    folder = options.encodings or encodings_folder(ctx.paths, cfg.run.seed)
    encodings = read_encodings(folder)
    check_encodings_fit(encodings, arch)
    check_same_model(encodings.metadata, ctx.loaded.fingerprint, options.allow_other_model, folder)
    n = len(encodings) if options.max_images is None else min(options.max_images, len(encodings))
    t = options.sample_temperature
    how = "posterior means" if t == 0 else f"posterior samples at temperature {t}"
    ctx.log(f"Decoding {n} of {len(encodings)} encoded images from {folder} with {how} for the kept variates")
    stems = safe_file_stems(encodings.names[:n])
    out_dir = common.output_folder(ctx, f"decoded/{Path(folder).name}", record={"encodings": str(folder)},
                                   T=float(t), out=syn.output_temperature)
    plan = EvalPlan(n, syn.batch_size, n_shards=ctx.dist.n_shards, n_processes=ctx.dist.n_processes,
                    process_index=ctx.dist.process_index)
    written = []
    for rows in common.progress(plan, len(plan), "decoding", ctx.dist.is_main):
        latents = decoding_latents(encodings, arch, rows.images, cfg.run.seed, t)
        images = images_to_uint8(ctx.backend.decode(latents, rows.images), cfg)
        for i, image in zip(rows.images[rows.valid], images[rows.valid]):
            written.append(save_png(out_dir / f"{stems[int(i)]}.png", image))
    common.report_files(ctx.log, "decoded images", written)
    return written
