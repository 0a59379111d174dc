"""`synthesize.py` of both frameworks: the run's saved config (with --set on top), then one synthesis mode.

Several processes (torchrun, `python launch.py --standalone --nproc_per_node=N synthesize.py ...`) share the
modes that go through the images of a split, MULTI_PROCESS_MODES: each process takes its rows of every
batch, the metrics are sums of per-image values reduced over the processes, each image file is written by
the process that computed it and the reports by process 0 alone; the results are those of one process.
"""
import os
import sys

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import resolve_run_config
from efficient_vdvae_core.synthesis import InferenceOptions, check_options, run_synthesis
from efficient_vdvae_core.training.entry import wait_for_the_main_process

MULTI_PROCESS_MODES = ("reconstruction", "div_stats", "encoding")


def options_from_args(args):
    """InferenceOptions of synthesize.py's arguments, checked."""
    options = InferenceOptions(checkpoint=args.checkpoint, split=args.split, encodings=args.encodings,
                               sample_temperature=args.sample_temperature, max_images=args.max_images,
                               allow_other_model=getattr(args, "allow_other_model", False))
    check_options(options)
    return options


def synthesize_main(args, framework):
    """Run a trained model in its synthesis_mode (one process, or several for MULTI_PROCESS_MODES)."""
    options = options_from_args(args)
    held = []  # the messages of resolving the config, printed by process 0 once the processes are known
    config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="inference",
                                       verbose=getattr(args, "verbose", False), log=lambda *a, **k: held.append(a))
    dist = framework.init_distributed(config)
    for message in held if dist.is_main else ():
        print(*message)
    if dist.n_processes == 1:
        return run_synthesis(config, paths, framework, dist, options)
    mode = config.synthesis.synthesis_mode
    if mode not in MULTI_PROCESS_MODES and dist.is_main:  # the others end at the barrier, quietly
        raise UserError(f"[synthesis] synthesis_mode = '{mode}' runs in one process (several share only "
                        f"{', '.join(MULTI_PROCESS_MODES)}): start synthesize.py with python, not torchrun")
    wait_for_the_main_process(framework, dist.is_main)
    run_synthesis(config, paths, framework, dist, options, log=print if dist.is_main else _silent)
    framework.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo can abort in its destructors at interpreter exit once the work is done


def _silent(*args, **kwargs):
    """The log function of processes other than 0."""
