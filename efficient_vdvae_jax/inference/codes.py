"""'encoding' and 'decoding' modes: posterior statistics of the kept variates to disk, and back to images.

The format is `efficient_vdvae_core.encodings` (NHWC NumPy files), shared with the PyTorch side: an
encoding written by either framework decodes in the other. Encoding runs the posterior pass with
z = posterior mean for the kept variates (eps = 0) and a prior sample for the masked ones, and stores
the posterior mean and standard deviation of the kept variates. Decoding runs the prior pass with z =
the stored mean (or mean + T * std * eps) for the kept variates and prior samples (temperature 1) for
all others, then samples the output head.
"""
import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.encodings import (EncodingsError, EncodingWriter, kept_layer_specs, read_encodings,
                                            safe_file_stems)
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import save_png
from efficient_vdvae_jax.evaluation import images_to_uint8
from efficient_vdvae_jax.inference import common
from efficient_vdvae_jax.inference.data import eval_batches
from efficient_vdvae_jax.model.sampling import output_samples
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.state import merge_model

ENCODE_SPLIT = {"train": "encode", "val": "val", "test": "test"}  # --split -> dataset split


def encodings_folder(paths, seed, split="train"):
    """latents/encodings_seed_<seed> for the train split, latents/encodings_seed_<seed>_<split> otherwise."""
    return paths.latents / (f"encodings_seed_{seed}" if split == "train" else f"encodings_seed_{seed}_{split}")


def posterior_statistics_fn(loaded):
    """A jitted fn(params, images, masks, key) -> (logits, [(mean, std) per layer]) with z = posterior means."""
    m = loaded.config.model
    zero_noise = [(b.resolution, b.resolution, b.latent_variates) for b in loaded.arch.latent_layers]

    def statistics(params, images, masks, key):
        model = merge_model(loaded.graphdef, params, loaded.rest)
        noise = [jnp.zeros((images.shape[0], *shape), images.dtype) for shape in zero_noise]
        logits, posteriors, _ = model(images, masks, noise, key=key)
        std = (lambda s: s if m.distribution_base == "std" else jnp.exp(m.gradient_smoothing_beta * s))
        return logits, [(mean, std(scale)) for mean, scale in posteriors]

    return jax.jit(statistics)


def run_encoding(loaded, paths, options, log=print):
    """Encode every image of the chosen split into latents/encodings_seed_<seed>[_<split>]/; returns the folder."""
    cfg, syn, arch = loaded.config, loaded.config.synthesis, loaded.arch
    masks = common.load_variate_masks(paths.latents, arch, syn.variate_masks_quantile, "encoding")
    log("Encoding with " + common.describe_masks(masks, syn.variate_masks_quantile))
    specs = kept_layer_specs(masks, [b.resolution for b in arch.latent_layers])
    if not specs:
        raise UserError(f"no variate is kept with variate_masks_quantile = {syn.variate_masks_quantile}; raise it")
    batches = eval_batches(loaded, ENCODE_SPLIT[options.split], syn.batch_size, options.max_images)
    folder = encodings_folder(paths, cfg.run.seed, options.split)
    base = cfg.model.distribution_base
    metadata = {
        "run_name": cfg.run.name, "dataset_source": cfg.data.dataset_source, "split": options.split,
        "seed": cfg.run.seed, "framework": "jax", "checkpoint": str(loaded.checkpoint),
        "checkpoint_step": loaded.step, "weights": loaded.weights,
        "variate_masks_quantile": syn.variate_masks_quantile, "distribution_base": base,
        "std_note": ("posterior standard deviation, converted from the model's log-std: std = exp(beta * logstd), "
                     f"beta = {cfg.model.gradient_smoothing_beta}") if base == "logstd"
                    else "posterior standard deviation, as the model outputs it",
        "encoder_pass": "each layer's posterior is computed given z = posterior mean for the kept variates of the "
                        "layers above and prior samples for their masked variates",
        "image_resolution": cfg.data.target_res, "channels": cfg.data.channels}
    fn = posterior_statistics_fn(loaded)
    mask_list = common.mask_arrays(masks)
    log(f"Encoding {batches.n_images} images of the {options.split} split into {folder}")
    with EncodingWriter(folder, specs, batches.n_images, [b.latent_variates for b in arch.latent_layers],
                        metadata) as writer:
        for index, batch in enumerate(common.progress(batches, len(batches), "encoding")):
            _, stats = fn(loaded.params, D.global_batch(loaded.mesh, batch.images), mask_list,
                          common.batch_key(cfg.run.seed, common.SALT_ENCODING, index))
            n, kept = batch.n_valid, {s.layer: list(s.kept_variates) for s in specs}
            means = {l: D.to_host(stats[l][0])[:n][..., k] for l, k in kept.items()}
            stds = {l: D.to_host(stats[l][1])[:n][..., k] for l, k in kept.items()}
            writer.write(batch.start, means, stds, batch.names)
        writer.close()
    log(f"Wrote encodings of {batches.n_images} images ({len(specs)} kept layers): {folder}")
    return folder


def check_fits(encodings, arch):
    """EncodingsError unless the encodings were written for a model with this architecture."""
    n_variates = [b.latent_variates for b in arch.latent_layers]
    meta = encodings.metadata
    if meta.get("n_latent_layers") != len(n_variates) or list(meta.get("n_variates", [])) != n_variates:
        raise EncodingsError(f"{encodings.folder}: written for a model with {meta.get('n_latent_layers')} latent "
                             f"layers of {meta.get('n_variates')} variates, this model has {len(n_variates)} of "
                             f"{n_variates}; encode again with this model")
    for spec in encodings.layers:
        block = arch.latent_layers[spec.layer]
        if (spec.height, spec.width) != (block.resolution, block.resolution) or not all(
                0 <= v < block.latent_variates for v in spec.kept_variates) or len(set(spec.kept_variates)) != len(
                spec.kept_variates):
            raise EncodingsError(f"{encodings.folder}: layer {spec.layer} is {spec.height}x{spec.width} with variates "
                                 f"{list(spec.kept_variates)}, which does not fit this model's "
                                 f"{block.resolution}x{block.resolution} layer of {block.latent_variates} variates")


def decode_fn(loaded, batch_size):
    """A jitted fn(params, latents, key) -> (output samples, logits); latents: per layer None or (z, mask)."""
    n_layers = loaded.arch.n_latent_layers

    def decode(params, latents, key):
        model = merge_model(loaded.graphdef, params, loaded.rest)
        logits, _ = model.sample(batch_size, [1.0] * n_layers, latents, key=key)
        return output_samples(logits, loaded.config, jax.random.fold_in(key, 1)), logits

    return jax.jit(decode)


def decode_latents(loaded, encodings, start, stop, batch_size, index, seed, temperature=0.0):
    """Per layer None or (z (batch_size, H, W, V), mask (V,)) of encoded rows start..stop-1 (rows past stop: zeros)."""
    by_layer = {spec.layer: spec for spec in encodings.layers}
    rng = np.random.default_rng([seed, common.SALT_DECODING, index])
    latents = []
    for layer, block in enumerate(loaded.arch.latent_layers):
        spec = by_layer.get(layer)
        if spec is None:
            latents.append(None)
            continue
        z_kept = np.array(encodings.means[layer][start:stop], dtype=np.float32)
        if temperature > 0:
            eps = rng.standard_normal(z_kept.shape, dtype=np.float32)
            z_kept = z_kept + temperature * np.asarray(encodings.stds[layer][start:stop], np.float32) * eps
        z = np.zeros((batch_size, block.resolution, block.resolution, block.latent_variates), np.float32)
        z[:stop - start, :, :, list(spec.kept_variates)] = z_kept
        mask = np.zeros(block.latent_variates, np.float32)
        mask[list(spec.kept_variates)] = 1.0
        latents.append((z, mask))
    return latents


def decode_logits(loaded, encodings, start, stop, index, seed, temperature=0.0, fn=None):
    """Output logits (B, R, R, K) of encoded rows start..stop-1 (kept variates from the encodings)."""
    fn = decode_fn(loaded, stop - start) if fn is None else fn
    latents = decode_latents(loaded, encodings, start, stop, stop - start, index, seed, temperature)
    return fn(loaded.params, latents, common.batch_key(seed, common.SALT_DECODING, index))[1]


def run_decoding(loaded, paths, options, log=print):
    """Decode every image of an encodings folder into synthesis-images/decoded/<name>.png; returns the paths."""
    cfg, syn = loaded.config, loaded.config.synthesis
    folder = options.encodings or encodings_folder(paths, cfg.run.seed)
    encodings = read_encodings(folder)
    check_fits(encodings, loaded.arch)
    if options.sample_temperature < 0:
        raise UserError(f"--sample-temperature must be >= 0 (got {options.sample_temperature})")
    n = len(encodings) if options.max_images is None else min(options.max_images, len(encodings))
    how = ("posterior means" if options.sample_temperature == 0
           else f"posterior samples at temperature {options.sample_temperature}")
    log(f"Decoding {n} of {len(encodings)} encoded images from {folder} with {how} for the kept variates")
    stems = safe_file_stems(encodings.names[:n])
    out_dir = paths.synthesis_images / "decoded"
    batch_size = -(-syn.batch_size // D.n_devices(loaded.mesh)) * D.n_devices(loaded.mesh)
    fn = decode_fn(loaded, batch_size)
    written = []
    starts = range(0, n, batch_size)
    for index, start in enumerate(common.progress(starts, len(starts), "decoding")):
        stop = min(start + batch_size, n)
        latents = decode_latents(loaded, encodings, start, stop, batch_size, index, cfg.run.seed,
                                 options.sample_temperature)
        samples, _ = fn(loaded.params, latents, common.batch_key(cfg.run.seed, common.SALT_DECODING, index))
        for stem, image in zip(stems[start:stop], images_to_uint8(samples, cfg)[:stop - start]):
            written.append(save_png(out_dir / f"{stem}.png", image))
    common.report_files(log, "decoded images", written)
    return written
