"""Train Efficient-VDVAE with PyTorch on one process, or many through torchrun (sh train.sh)."""
import contextlib
import os
import sys

import torch

from efficient_vdvae_core.allocator import retain_freed_memory
from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.runs import RunLock, resolve_run_config, run_paths
from efficient_vdvae_torch.training import check_training_inputs, run_training
from efficient_vdvae_torch.utils.distributed import barrier, init_distributed, shutdown


def main(args):
    """Lock the run, check its config and data before rank 0 saves the config, join the process group, train.

    Nothing is written for a config, data or argument error, nor when another process trains the same
    run in the same folder (`logs-<name>/.lock`, held by rank 0 until the end).
    """
    given, _ = load_config(args.config, args.overrides)
    if args.from_checkpoint is not None and not os.path.isfile(args.from_checkpoint):
        raise UserError(f"--from-checkpoint {args.from_checkpoint}: file not found")
    dist = init_distributed(given.run.device)

    def check(config, paths):
        if config.train.batch_size % dist.world_size:
            raise UserError(f"[train] batch_size = {config.train.batch_size} is not divisible by the "
                            f"{dist.world_size} processes; choose a multiple of {dist.world_size}")
        check_training_inputs(config, paths, init_checkpoint=args.from_checkpoint)

    lock = RunLock(run_paths(given.run.name, args.workdir).logs) if dist.is_main else contextlib.nullcontext()
    with lock:
        if dist.is_main:
            config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="train", check=check)
        barrier()  # a rank 0 that failed above exits without it, and torchrun stops the others
        if not dist.is_main:  # reads the copy rank 0 saved; never writes
            config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="inference",
                                               log=lambda *a, **k: None)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        if dist.is_main:
            print(f"Running on {dist.world_size} process(es), device {dist.device}")
        try:
            run_training(config, paths, dist, init_checkpoint=args.from_checkpoint)
        finally:
            shutdown()
    if dist.world_size > 1:
        # gloo can abort in its destructors at interpreter exit once the work is done: leave directly.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def parser():
    p = build_parser(main.__doc__.splitlines()[0])
    p.add_argument("--from-checkpoint", metavar="PATH", default=None,
                   help="start a NEW run from the weights of this checkpoint file (ours or the original's); "
                        "ignored when the run already has checkpoints")
    return p


if __name__ == "__main__":
    retain_freed_memory()
    run_main(main, parser=parser())
