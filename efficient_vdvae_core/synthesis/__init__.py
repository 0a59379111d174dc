"""The synthesis driver of both frameworks: load a trained run's weights and run one synthesis mode.

Modes (`[synthesis] synthesis_mode`): reconstruction, generation, div_stats, encoding, decoding, iw_nll,
interpolation, conditional, sample_quality. Each
mode is written once, here, over a framework's InferenceBackend; outputs go under the run's logs folder
(synthesis-images/<mode>/<setting>/, latents/). See `efficient_vdvae_core.synthesis.entry` for
synthesize.py.
"""
from efficient_vdvae_core.synthesis.common import ENCODING_SPLITS, Context, InferenceOptions, check_options

__all__ = ["ENCODING_SPLITS", "InferenceOptions", "MODES", "run_synthesis"]


def _modes(framework):
    from efficient_vdvae_core.synthesis.codes import run_decoding, run_encoding
    from efficient_vdvae_core.synthesis.div_stats import run_div_stats
    from efficient_vdvae_core.synthesis.generation import run_generation
    from efficient_vdvae_core.synthesis.iw_nll import run_iw_nll
    from efficient_vdvae_core.synthesis.latents import run_conditional, run_interpolation
    from efficient_vdvae_core.synthesis.quality import run_sample_quality
    from efficient_vdvae_core.synthesis.reconstruction import run_reconstruction
    return {"reconstruction": run_reconstruction, "generation": run_generation, "div_stats": run_div_stats,
            "encoding": run_encoding, "decoding": run_decoding, "iw_nll": run_iw_nll,
            "interpolation": run_interpolation, "conditional": run_conditional,
            "sample_quality": lambda ctx: run_sample_quality(ctx, framework.sample_quality_scorer())}


MODES = ("reconstruction", "generation", "div_stats", "encoding", "decoding", "iw_nll", "interpolation",
         "conditional", "sample_quality")


def run_synthesis(config, paths, framework, dist, options=InferenceOptions(), log=print):
    """Load the run's weights and run the mode of config.synthesis.synthesis_mode; returns the mode's result."""
    from efficient_vdvae_core.synthesis.loading import load_weights
    check_options(options)
    loaded, params = load_weights(config, paths, framework, checkpoint=options.checkpoint, log=log)
    backend = framework.inference(loaded.config, dist, params, log=log)
    mode = loaded.config.synthesis.synthesis_mode
    log(f"Synthesis mode: {mode}")
    ctx = Context(loaded=loaded, paths=paths, backend=backend, dist=dist, options=options, framework=framework.name,
                  log=log)
    return _modes(framework)[mode](ctx)
