"""Run a trained Efficient-VDVAE with JAX: reconstruction, generation, div_stats, encoding or decoding (synthesis.synthesis_mode)."""
from efficient_vdvae_core.cli import build_synthesis_parser, run_main
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import resolve_run_config


def main(args):
    """Run a trained model in its synthesis_mode: reconstruction, generation, div_stats, encoding or decoding.

    The run must exist (its saved config is used, with --set overrides on top); one process, every local device.
    """
    from efficient_vdvae_jax.inference import InferenceOptions, run
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1 (got {args.max_images})")
    config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="inference")
    options = InferenceOptions(checkpoint=args.checkpoint, split=args.split, encodings=args.encodings,
                               sample_temperature=args.sample_temperature, max_images=args.max_images)
    return run(config, paths, options)


def parser():
    return build_synthesis_parser(
        main.__doc__.splitlines()[0],
        checkpoint_help="use this checkpoint instead of the run's newest: one of ours (a checkpoint_<step> folder) "
                        "or a PyTorch .pt file (ours or the original's; needs torch)")


if __name__ == "__main__":
    from efficient_vdvae_jax.utils import cpu
    cpu.prepare()
    run_main(main, parser=parser())
