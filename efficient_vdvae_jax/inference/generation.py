"""'generation' mode: prior samples for every entry of synthesis.temperature_settings."""
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import make_grid, save_png
from efficient_vdvae_core.temperatures import layer_temperatures
from efficient_vdvae_jax.evaluation import images_to_uint8, prior_sample_fn
from efficient_vdvae_jax.inference import common
from efficient_vdvae_jax.utils import distributed as D

GRID_MAX_IMAGES = 64  # images of a setting shown in its grid (the first ones)


def sample_fn(loaded, batch_size):
    """The jitted prior sampler of `batch_size` images (shared with training; the batch is global, so the
    original's multi-device generation bug 15 cannot occur)."""
    return prior_sample_fn(loaded.graphdef, loaded.rest, loaded.config, loaded.arch, batch_size, loaded.mesh)


def generate_batch(loaded, temperatures, batch_size, index, seed, setting=0, fn=None):
    """Output samples (B, H, W, C) and logits of prior batch `index` with per-layer `temperatures`."""
    fn = sample_fn(loaded, batch_size) if fn is None else fn
    key = common.batch_key(seed, common.SALT_GENERATION, setting, index)
    samples, logits = fn(loaded.params, jnp.asarray(temperatures, jnp.float32), key)
    return D.to_host(samples), logits


def run_generation(loaded, paths, options, log=print):
    """For each temperature setting i: n_generation_batches batches -> generated/setup-<i>-image-<NNNN>.png."""
    cfg, syn = loaded.config, loaded.config.synthesis
    out_dir = paths.synthesis_images / "generated"
    fn = sample_fn(loaded, syn.batch_size)
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
            samples, _ = generate_batch(loaded, temperatures, syn.batch_size, index, cfg.run.seed, setting=i, fn=fn)
            images = images_to_uint8(samples, cfg)
            paths_i += common.save_pngs(out_dir, f"setup-{i}-image-{{:04d}}.png", images, start)
            grid_images += list(images[:GRID_MAX_IMAGES - len(grid_images)])
            start += len(images)
        grid = save_png(out_dir / f"setup-{i}-grid.png", make_grid(np.stack(grid_images)))
        common.report_files(log, f"images of setting {i}", paths_i)
        log(f"Wrote the grid of setting {i}: {grid}")
        written[i] = paths_i + [grid]
    return written
