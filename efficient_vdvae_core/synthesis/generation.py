"""'generation' mode: prior samples for every entry of synthesis.temperature_settings.

Setting i writes `setup-<i>-image-<NNNN>.png` for n_generation_batches x batch_size images and
`setup-<i>-grid.png` (the first 64), into this weights' folder (named with the output temperature).
Image k of setting i draws its own noise (GENERATION, counter i, index k).
"""
import numpy as np

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import make_grid, save_png
from efficient_vdvae_core.synthesis import common
from efficient_vdvae_core.temperatures import layer_temperatures
from efficient_vdvae_core.training.images import images_to_uint8

GRID_MAX_IMAGES = 64  # images of a setting shown in its grid (the first ones)


def run_generation(ctx):
    """For each temperature setting i: its images and grid; returns {i: paths}."""
    cfg, syn, arch = ctx.config, ctx.config.synthesis, ctx.loaded.arch
    record = {"temperature_settings": [list(t) if isinstance(t, tuple) else t for t in syn.temperature_settings],
              "n_generation_batches": syn.n_generation_batches, "batch_size": syn.batch_size}
    folder = common.output_folder(ctx, "generated", record=record, out=syn.output_temperature)
    written = {}
    for i, setting in enumerate(syn.temperature_settings):
        try:
            temperatures = layer_temperatures(setting, arch)
        except ValueError as exc:
            raise UserError(f"[synthesis] temperature_settings entry {i}: {exc}") from None
        ctx.log(f"Generating for temperature setting {i}: {setting!r} (per layer: "
                + ", ".join(f"{t:.3g}" for t in temperatures) + f"; output temperature {syn.output_temperature})")
        paths_i, grid_images = [], []
        batches = range(syn.n_generation_batches)
        for index in common.progress(batches, len(batches), f"setting {i}", ctx.dist.is_main):
            indices = np.arange(index * syn.batch_size, (index + 1) * syn.batch_size)
            images = images_to_uint8(ctx.backend.sample(indices, temperatures, counter=i), cfg)
            paths_i += common.save_pngs(folder, f"setup-{i}-image-{{:04d}}.png", images, int(indices[0]))
            grid_images += list(images[:GRID_MAX_IMAGES - len(grid_images)])
        grid = save_png(folder / f"setup-{i}-grid.png", make_grid(np.stack(grid_images)))
        common.report_files(ctx.log, f"images of setting {i}", paths_i)
        ctx.log(f"Wrote the grid of setting {i}: {grid}")
        written[i] = paths_i + [grid]
    return written
