"""Inference with a trained model (pipeline.md 6): one module per synthesis mode, dispatched by `run`.

Modes (`synthesis.synthesis_mode`): reconstruction, generation, div_stats, encoding, decoding. Outputs go
under the run's logs folder: synthesis-images/{reconstructed,generated,decoded}/, latents/.
"""
from dataclasses import dataclass
from pathlib import Path

from efficient_vdvae_core.synthesis import ENCODING_SPLITS
from efficient_vdvae_torch.inference.codes import run_decoding, run_encoding
from efficient_vdvae_torch.inference.div_stats import run_div_stats
from efficient_vdvae_torch.inference.generation import run_generation
from efficient_vdvae_torch.inference.loading import load_model
from efficient_vdvae_torch.inference.reconstruction import run_reconstruction

MODES = {"reconstruction": run_reconstruction, "generation": run_generation, "div_stats": run_div_stats,
         "encoding": run_encoding, "decoding": run_decoding}


@dataclass(frozen=True)
class InferenceOptions:
    """Command-line choices that are not config keys."""
    checkpoint: Path | None = None  # a checkpoint file instead of the run's newest
    split: str = "train"  # encoding: which split to encode
    encodings: Path | None = None  # decoding: the encodings folder (default: the run's train encodings)
    sample_temperature: float = 0.0  # decoding: z = mean + T * std * eps for the kept variates
    max_images: int | None = None  # reconstruction/div_stats/encoding/decoding: only the first N images


def run(config, paths, options=InferenceOptions(), log=print):
    """Load the run's model and run the mode of config.synthesis.synthesis_mode; returns the mode's result."""
    if options.split not in ENCODING_SPLITS:
        raise ValueError(f"split must be one of {ENCODING_SPLITS}, got {options.split!r}")
    loaded = load_model(config, paths, checkpoint=options.checkpoint, log=log)
    mode = loaded.config.synthesis.synthesis_mode
    log(f"Synthesis mode: {mode}")
    return MODES[mode](loaded, paths, options, log=log)
