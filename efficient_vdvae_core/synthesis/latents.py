"""'interpolation' and 'conditional' modes: walking between two images' latents, and sampling below their top layers.

Both start from the encoding pass: each latent layer's posterior mean, given the posterior means of the
layers above (eps = 0), for test images. Decoding with every layer given reproduces the posterior-mean
reconstruction.

* interpolation: test images 2i and 2i + 1 (i < interpolation_pairs) are a pair; their per-layer latents
  are interpolated at interpolation_points fractions from 0 to 1, linearly and spherically (per image and
  layer over the flattened latent; efficient_vdvae_core.interpolation), and decoded: one strip per pair and
  method, `pair-<i>-<method>.png` (the first and last images are the two reconstructions).
* conditional: for each test image and each k of keep_top_layers, the top k latent layers are taken
  from the image and the others sampled from the prior at the first temperature setting, conditional_samples
  times: one grid per image, `image-<NNNN>.png`, one row per k: the image, its posterior-mean
  reconstruction, then the samples. Small k changes the global structure, large k only the details.
"""
import numpy as np

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import make_grid, save_png
from efficient_vdvae_core.interpolation import METHODS, interpolate_layers, interpolation_fractions
from efficient_vdvae_core.randomness import CONDITIONAL, INTERPOLATION
from efficient_vdvae_core.synthesis import common
from efficient_vdvae_core.temperatures import layer_temperatures
from efficient_vdvae_core.training.images import images_to_uint8


def _pairs(ctx, dataset):
    """(i, start, end) for each pair of test images 2i, 2i + 1: their per-layer posterior means (1, H, W, V),
    read batch by batch (at most one image is held over to the next batch)."""
    plan = common.plan_for(ctx, len(dataset))
    held, first = [], 0
    for rows, batch in zip(plan, ctx.backend.eval_batches(dataset, plan)):
        stats = ctx.backend.posterior_means(batch, rows, None)
        means = [np.asarray(mean)[rows.valid] for mean, _ in stats]
        held += [[z[j:j + 1] for z in means] for j in range(int(rows.valid.sum()))]
        while len(held) >= 2:
            yield first // 2, held.pop(0), held.pop(0)
            first += 2


def _given(latents):
    """The decode kernel's latents: every variate of every layer given."""
    return [(z, np.ones(z.shape[-1], np.float32)) for z in latents]


def run_interpolation(ctx):
    """Strips between pairs of test images; returns the written paths."""
    cfg, syn = ctx.config, ctx.config.synthesis
    pairs, points = syn.interpolation_pairs, syn.interpolation_points
    dataset = common.open_split(cfg, "test", 2 * pairs)
    if len(dataset) < 2 * pairs:
        raise UserError(f"[synthesis] interpolation_pairs = {pairs} needs {2 * pairs} test images, the test split "
                        f"has {len(dataset)}")
    folder = common.output_folder(ctx, "interpolated", record={"pairs": pairs, "methods": list(METHODS)}, n=points,
                                  out=syn.output_temperature)
    fractions = interpolation_fractions(points)
    ctx.log(f"Interpolating {pairs} pairs of test images at {points} points ({' and '.join(METHODS)})")
    written, plan = [], common.plan_for(ctx, points)
    for i, start, end in common.progress(_pairs(ctx, dataset), pairs, "interpolation", ctx.dist.is_main,
                                         unit="pair"):
        for method in METHODS:
            steps = interpolate_layers(start, end, fractions, method)  # per fraction: per layer (1, H, W, V)
            latents = [np.concatenate(layer) for layer in zip(*steps)]  # per layer (points, H, W, V)
            images = np.concatenate([  # decoded in batches of batch_size points, the last padded
                ctx.backend.decode(_given([z[rows.images] for z in latents]), rows.images + i * points,
                                   purpose=INTERPOLATION)[rows.valid] for rows in plan])
            written.append(save_png(folder / f"pair-{i}-{method}.png",
                                    make_grid(images_to_uint8(images, cfg), ncols=points)))
    common.report_files(ctx.log, "interpolation strips", written)
    return written


def run_conditional(ctx):
    """One grid per test image: rows = keep_top_layers, columns = image, reconstruction, samples."""
    cfg, syn, arch = ctx.config, ctx.config.synthesis, ctx.loaded.arch
    n_layers = arch.n_latent_layers
    bad = [k for k in syn.keep_top_layers if k > n_layers]
    if bad:
        raise UserError(f"[synthesis] keep_top_layers = {list(syn.keep_top_layers)}: {bad[0]} is more than the "
                        f"{n_layers} latent layers of this model")
    temperatures = layer_temperatures(syn.temperature_settings[0], arch)
    dataset = common.open_split(cfg, "test", ctx.options.max_images or 4)
    folder = common.output_folder(ctx, "conditional", record={"keep_top_layers": list(syn.keep_top_layers),
                                                              "samples": syn.conditional_samples,
                                                              "prior_temperatures": temperatures},
                                  k="_".join(map(str, syn.keep_top_layers)), s=syn.conditional_samples,
                                  t=common.temperatures_tag(temperatures),
                                  out=syn.output_temperature)
    ctx.log(f"Conditional samples of {len(dataset)} test images, keeping the top {list(syn.keep_top_layers)} of "
            f"{n_layers} latent layers ({syn.conditional_samples} samples each)")
    plan = common.plan_for(ctx, len(dataset))
    written = []
    for rows, batch in common.progress(zip(plan, ctx.backend.eval_batches(dataset, plan)), len(plan), "conditional",
                                       ctx.dist.is_main):
        means = [np.asarray(mean) for mean, _ in ctx.backend.posterior_means(batch, rows, None)]
        inputs = images_to_uint8(np.stack([dataset.load(int(i)) for i in rows.images]), cfg)
        recon = images_to_uint8(ctx.backend.decode(_given(means), rows.images, purpose=CONDITIONAL), cfg)
        grids = {int(i): [] for i in rows.images[rows.valid]}
        for k_index, k in enumerate(syn.keep_top_layers):
            samples = []
            for s in range(syn.conditional_samples):
                given = [(z, np.ones(z.shape[-1], np.float32)) if layer < k else None for layer, z in enumerate(means)]
                counter = 1 + k_index * syn.conditional_samples + s
                samples.append(images_to_uint8(ctx.backend.decode(given, rows.images, temperatures, CONDITIONAL,
                                                                  counter), cfg))
            for row, i in enumerate(rows.images):
                if rows.valid[row]:
                    grids[int(i)].append(np.stack([inputs[row], recon[row]] + [s[row] for s in samples]))
        for i, grid_rows in grids.items():
            grid = make_grid(np.concatenate(grid_rows), ncols=2 + syn.conditional_samples)
            written.append(save_png(folder / f"image-{i:04d}.png", grid))
    common.report_files(ctx.log, "conditional grids (rows: keep_top_layers; columns: image, reconstruction, "
                                 "samples)", written)
    return written
