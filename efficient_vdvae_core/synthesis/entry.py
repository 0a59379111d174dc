"""`synthesize.py` of both frameworks: the run's saved config (with --set on top), then one synthesis mode."""
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import resolve_run_config
from efficient_vdvae_core.synthesis import InferenceOptions, check_options, run_synthesis


def options_from_args(args):
    """InferenceOptions of synthesize.py's arguments, checked."""
    options = InferenceOptions(checkpoint=args.checkpoint, split=args.split, encodings=args.encodings,
                               sample_temperature=args.sample_temperature, max_images=args.max_images,
                               allow_other_model=getattr(args, "allow_other_model", False))
    check_options(options)
    return options


def synthesize_main(args, framework):
    """Run a trained model in its synthesis_mode (one process)."""
    options = options_from_args(args)
    config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="inference",
                                       verbose=getattr(args, "verbose", False))
    dist = framework.init_distributed(config)
    if dist.n_processes > 1:
        raise UserError("synthesize.py runs in one process: start it with python, not torchrun")
    return run_synthesis(config, paths, framework, dist, options)
