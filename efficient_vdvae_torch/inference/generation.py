"""'generation' mode: prior samples for every entry of synthesis.temperature_settings."""
import numpy as np

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import make_grid, save_png
from efficient_vdvae_core.temperatures import layer_temperatures
from efficient_vdvae_torch.evaluation import images_to_uint8, output_samples
from efficient_vdvae_torch.inference import common

GRID_MAX_IMAGES = 64  # images of a setting shown in its grid (the first ones)
SALT_SETTING = 1000  # seeds of setting i use salts SALT_SETTING * (i + 1) + purpose


def generate_batch(loaded, temperatures, batch_size, index, seed, setting=0):
    """Output samples (B, C, H, W) and logits of prior batch `index` with per-layer `temperatures`."""
    device = loaded.device
    salt = SALT_SETTING * (setting + 1)
    with common.seeded_global_rng(seed, index, device, salt=salt + common.SALT_GLOBAL):
        logits, _ = loaded.model.sample(batch_size, temperatures)
    gen = common.output_generator(seed, index, device, salt=salt + common.SALT_OUTPUT)
    return output_samples(logits.float(), loaded.config, generator=gen), logits


def run_generation(loaded, paths, options, log=print):
    """For each temperature setting i: n_generation_batches batches -> generated/setup-<i>-image-<NNNN>.png."""
    cfg, syn = loaded.config, loaded.config.synthesis
    out_dir = paths.synthesis_images / "generated"
    written = {}
    for i, setting in enumerate(syn.temperature_settings):
        try:
            temperatures = layer_temperatures(setting, loaded.arch)
        except ValueError as exc:
            raise UserError(f"[synthesis] temperature_settings entry {i}: {exc}") from None
        log(f"Generating for temperature setting {i}: {setting!r} (per layer: "
            + ", ".join(f"{t:.3g}" for t in temperatures) + f"; output temperature {syn.output_temperature})")
        paths_i, grid_images, start = [], [], 0
        for index in common.progress(range(syn.n_generation_batches), syn.n_generation_batches, f"setting {i}"):
            samples, _ = generate_batch(loaded, temperatures, syn.batch_size, index, cfg.run.seed, setting=i)
            images = images_to_uint8(samples, cfg)
            paths_i += common.save_pngs(out_dir, f"setup-{i}-image-{{:04d}}.png", images, start)
            grid_images += list(images[:GRID_MAX_IMAGES - len(grid_images)])
            start += len(images)
        grid = save_png(out_dir / f"setup-{i}-grid.png", make_grid(np.stack(grid_images)))
        common.report_files(log, f"images of setting {i}", paths_i)
        log(f"Wrote the grid of setting {i}: {grid}")
        written[i] = paths_i + [grid]
    return written
