"""Train Efficient-VDVAE with PyTorch on one process, or many through torchrun (sh train.sh)."""
import os
import sys

import torch

from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.runs import resolve_run_config
from efficient_vdvae_torch.training import run_training
from efficient_vdvae_torch.utils.distributed import barrier, init_distributed, shutdown


def main(args):
    """Resolve the run's config (rank 0 writes the saved copy first), join the process group, train."""
    given, _ = load_config(args.config, args.overrides)
    dist = init_distributed(given.run.device)
    quiet = (lambda *a, **k: None)
    if dist.is_main:
        config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="train")
    barrier()
    if not dist.is_main:
        config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="train", log=quiet)
    if config.train.batch_size % dist.world_size:
        from efficient_vdvae_core.errors import UserError
        raise UserError(f"[train] batch_size = {config.train.batch_size} is not divisible by the "
                        f"{dist.world_size} processes; choose a multiple of {dist.world_size}")
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
    run_main(main, parser=parser())
