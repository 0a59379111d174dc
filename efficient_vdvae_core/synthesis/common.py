"""Pieces every synthesis mode shares: the run context, output folders, div_stats masks, progress, PNG sets.

Output folders: each mode writes under `logs-<name>/synthesis-images/<mode folder>/<setting>/`, one folder
per setting that changes the outputs (weights raw/EMA and their step, plus the mode's own settings and
the output temperature, e.g. `ema-step200-out1`, `raw-step200-masked-q0.03-out1`, `ema-step200-out0.8`),
with `settings.json` beside the images. So successive invocations with different settings never
overwrite or mix each other's images, and the same settings reproduce the same folder.
"""
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import save_png
from efficient_vdvae_core.masks import kept_count, variate_masks
from efficient_vdvae_core.runs import atomic_write_text

ENCODING_SPLITS = ("train", "val", "test")  # what the encoding mode can encode (--split)
DIV_STATS_FILE = "div_stats.npy"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class InferenceOptions:
    """Command-line choices that are not config keys."""
    checkpoint: Path | None = None  # a checkpoint instead of the run's newest
    split: str = "train"  # encoding: which split to encode
    encodings: Path | None = None  # decoding: the encodings folder (default: the run's train encodings)
    sample_temperature: float = 0.0  # decoding: z = mean + T * std * eps for the kept variates
    max_images: int | None = None  # every mode but generation: only the first N images
    allow_other_model: bool = False  # decoding: accept encodings written by another model


def check_options(options):
    """UserError for command-line values that cannot work."""
    if options.split not in ENCODING_SPLITS:
        raise UserError(f"--split {options.split}: must be one of {', '.join(ENCODING_SPLITS)}")
    if options.max_images is not None and options.max_images < 1:
        raise UserError(f"--max-images must be >= 1 (got {options.max_images})")
    t = options.sample_temperature
    if not (math.isfinite(t) and t >= 0):
        raise UserError(f"--sample-temperature must be a finite number >= 0 (got {t})")


@dataclass(frozen=True)
class Loaded:
    """Which weights a synthesis runs with."""
    config: object  # the run's Config, with [model] and [loss] of the checkpoint
    arch: object
    checkpoint: Path
    step: int  # training iterations completed when the checkpoint was written
    weights: str  # 'ema' or 'raw'
    fingerprint: dict  # efficient_vdvae_core.encodings.model_fingerprint of the config and these weights


@dataclass(frozen=True)
class Context:
    """Everything a mode needs."""
    loaded: Loaded
    paths: object  # RunPaths
    backend: object  # InferenceBackend
    dist: object  # efficient_vdvae_core.training.backend.Dist
    options: InferenceOptions
    framework: str
    log: object

    @property
    def config(self):
        return self.loaded.config


def output_folder(ctx, mode_folder, record=None, **settings):
    """synthesis-images/<mode_folder>/<weights>-step<step>[-<key><value>...]/ (created), settings.json written.

    `settings` name the folder and are recorded; `record` holds further values recorded only. Process 0
    writes settings.json.
    """
    loaded = ctx.loaded
    parts = [f"{loaded.weights}-step{loaded.step}"] + [f"{key}{_compact(value)}" for key, value in settings.items()
                                                       if value is not None]
    folder = ctx.paths.synthesis_images / mode_folder / "-".join(parts)
    folder.mkdir(parents=True, exist_ok=True)
    if not ctx.dist.is_main:
        return folder
    record = {"mode": ctx.config.synthesis.synthesis_mode, "framework": ctx.framework,
              "checkpoint": str(loaded.checkpoint), "checkpoint_step": loaded.step, "weights": loaded.weights,
              "seed": ctx.config.run.seed, "output_temperature": ctx.config.synthesis.output_temperature,
              **{k: v for k, v in settings.items() if v is not None}, **(record or {})}
    atomic_write_text(folder / SETTINGS_FILE, json.dumps(record, indent=2) + "\n")
    return folder


def temperatures_tag(temperatures):
    """The folder tag of per-layer temperatures: the temperature when all are equal, else a hash of the list."""
    values = [float(t) for t in temperatures]
    if len(set(values)) == 1:
        return values[0]
    return "h" + hashlib.sha256(json.dumps(values).encode()).hexdigest()[:8]


def _compact(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def open_split(config, split, max_images=None, **kwargs):
    """The split of the run's dataset, limited to its first `max_images` images (--max-images)."""
    from efficient_vdvae_core.data import make_dataset
    dataset = make_dataset(config.data, split, seed=config.run.seed, **kwargs)
    if max_images is not None and max_images < len(dataset):
        dataset = make_dataset(config.data, split, seed=config.run.seed, n_samples=max_images, **kwargs)
    return dataset


def plan_for(ctx, n_images):
    """The EvalPlan of n_images (a split, or images to generate or decode) for this process, in batches of
    [synthesis] batch_size rounded up to the replicas; the last batch is padded to the same size."""
    from efficient_vdvae_core.evaluation import EvalPlan
    d = ctx.dist
    return EvalPlan(n_images, ctx.config.synthesis.batch_size, n_shards=d.n_shards, n_processes=d.n_processes,
                    process_index=d.process_index)


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
    try:
        stats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable div_stats ({exc}); run the div_stats mode again") from None
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


def progress(iterable, total, desc, enabled=True, unit="batch"):
    """A tqdm bar over batches (or other units of work)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled)


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
