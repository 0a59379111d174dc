"""'encoding' and 'decoding' modes: posterior statistics of the kept variates to disk, and back to images.

Encoding runs the posterior pass with z = posterior mean for the kept variates (eps = 0) and a prior
sample for the masked ones, and stores, for every image, the posterior mean and standard deviation of
the kept variates (format: `efficient_vdvae_core.encodings`). Decoding runs the prior pass with z =
the stored mean (or mean + T * std * eps) for the kept variates and prior samples (temperature 1) for
all others, then samples the output head. With every variate kept and T = 0, decoding reproduces the
logits of the posterior-mean reconstruction (up to float rounding).
"""
import numpy as np
import torch

from efficient_vdvae_core.encodings import EncodingsError, EncodingWriter, kept_layer_specs, read_encodings, safe_file_stems
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import save_png
from efficient_vdvae_torch.evaluation import images_to_uint8, output_samples
from efficient_vdvae_torch.inference import common
from efficient_vdvae_torch.inference.data import eval_loader

LOADER_SPLIT = {"train": "encode", "val": "val", "test": "test"}  # --split -> loader split


def encodings_folder(paths, seed, split="train"):
    """latents/encodings_seed_<seed> for the train split, latents/encodings_seed_<seed>_<split> otherwise."""
    return paths.latents / (f"encodings_seed_{seed}" if split == "train" else f"encodings_seed_{seed}_{split}")


@torch.no_grad()
def posterior_statistics(loaded, images, masks, index, seed):
    """(logits, [(mean, std) per layer]) of the posterior pass with z = posterior mean where masks are 1."""
    device = loaded.device
    noise = common.zero_noise(loaded.arch, images.shape[0], device)
    with common.seeded_global_rng(seed, index, device):  # prior samples of masked variates
        logits, posteriors, _ = loaded.model(images, masks, noise)
    blocks = [block for _, block in loaded.model.top_down.blocks()]
    return logits, [(post[0], block.posterior_layer.std(post)) for post, block in zip(posteriors, blocks)]


def _kept_nhwc(tensor, kept):
    """(B, V, H, W) tensor -> float32 NumPy (B, H, W, K) of the kept variates."""
    return tensor[:, list(kept)].permute(0, 2, 3, 1).float().cpu().numpy()


def run_encoding(loaded, paths, options, log=print):
    """Encode every image of the chosen split into latents/encodings_seed_<seed>[_<split>]/; returns the folder."""
    cfg, syn, arch = loaded.config, loaded.config.synthesis, loaded.arch
    masks = common.load_variate_masks(paths.latents, arch, syn.variate_masks_quantile, "encoding")
    log("Encoding with " + common.describe_masks(masks, syn.variate_masks_quantile))
    specs = kept_layer_specs(masks, [b.resolution for b in arch.latent_layers])
    if not specs:
        raise UserError(f"no variate is kept with variate_masks_quantile = {syn.variate_masks_quantile}; raise it")
    masks_t = common.mask_tensors(masks, loaded.device)
    loader = eval_loader(cfg, LOADER_SPLIT[options.split], syn.batch_size, options.max_images, with_names=True)
    n_images = len(loader.dataset)
    folder = encodings_folder(paths, cfg.run.seed, options.split)
    base = cfg.model.distribution_base
    metadata = {
        "run_name": cfg.run.name, "dataset_source": cfg.data.dataset_source, "split": options.split,
        "seed": cfg.run.seed, "framework": "pytorch", "checkpoint": str(loaded.checkpoint),
        "checkpoint_step": loaded.step, "weights": loaded.weights,
        "variate_masks_quantile": syn.variate_masks_quantile, "distribution_base": base,
        "std_note": ("posterior standard deviation, converted from the model's log-std: std = exp(beta * logstd), "
                     f"beta = {cfg.model.gradient_smoothing_beta}") if base == "logstd"
                    else "posterior standard deviation, as the model outputs it",
        "encoder_pass": "each layer's posterior is computed given z = posterior mean for the kept variates of the "
                        "layers above and prior samples for their masked variates",
        "image_resolution": cfg.data.target_res, "channels": cfg.data.channels}
    log(f"Encoding {n_images} images of the {options.split} split into {folder}")
    with EncodingWriter(folder, specs, n_images, [b.latent_variates for b in arch.latent_layers], metadata) as writer:
        start = 0
        for index, (images, names) in enumerate(common.progress(loader, len(loader), "encoding")):
            _, stats = posterior_statistics(loaded, images.to(loaded.device), masks_t, index, cfg.run.seed)
            means = {s.layer: _kept_nhwc(stats[s.layer][0], s.kept_variates) for s in specs}
            stds = {s.layer: _kept_nhwc(stats[s.layer][1], s.kept_variates) for s in specs}
            writer.write(start, means, stds, names)
            start += len(names)
        writer.close()
    log(f"Wrote encodings of {n_images} images ({len(specs)} kept layers): {folder}")
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


def _rows_nchw(array, start, stop, device):
    """Rows start..stop-1 of a (N, H, W, K) array as a (B, K, H, W) float32 tensor on `device`."""
    return torch.from_numpy(np.array(array[start:stop], dtype=np.float32)).to(device).permute(0, 3, 1, 2)


@torch.no_grad()
def decode_logits(loaded, encodings, start, stop, index, seed, temperature=0.0):
    """Output logits of encoded rows start..stop-1: kept variates from the encodings, the rest from the prior."""
    arch, device = loaded.arch, loaded.device
    batch = stop - start
    by_layer = {spec.layer: spec for spec in encodings.layers}
    gen = torch.Generator(device=device).manual_seed(common.batch_seed(seed, index, common.SALT_POSTERIOR))
    latents = []
    for layer, block in enumerate(arch.latent_layers):
        spec = by_layer.get(layer)
        if spec is None:
            latents.append(None)
            continue
        z_kept = _rows_nchw(encodings.means[layer], start, stop, device)
        if temperature > 0:
            eps = torch.randn(z_kept.shape, generator=gen, device=device)
            z_kept = z_kept + temperature * _rows_nchw(encodings.stds[layer], start, stop, device) * eps
        kept = torch.tensor(spec.kept_variates, device=device)
        z = torch.zeros((batch, block.latent_variates, block.resolution, block.resolution), device=device)
        z[:, kept] = z_kept
        mask = torch.zeros(block.latent_variates, device=device)
        mask[kept] = 1.0
        latents.append((z, mask))
    with common.seeded_global_rng(seed, index, device):
        logits, _ = loaded.model.sample(batch, [1.0] * arch.n_latent_layers, latents)
    return logits


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
    written = []
    starts = range(0, n, syn.batch_size)
    for index, start in enumerate(common.progress(starts, len(starts), "decoding")):
        stop = min(start + syn.batch_size, n)
        logits = decode_logits(loaded, encodings, start, stop, index, cfg.run.seed, options.sample_temperature)
        samples = output_samples(logits.float(), cfg, generator=common.output_generator(cfg.run.seed, index, loaded.device))
        for stem, image in zip(stems[start:stop], images_to_uint8(samples, cfg)):
            written.append(save_png(out_dir / f"{stem}.png", image))
    common.report_files(log, "decoded images", written)
    return written
