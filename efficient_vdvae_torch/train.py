"""Train Efficient-VDVAE with PyTorch on one process, or many through torchrun (sh train.sh)."""
from efficient_vdvae_core.allocator import retain_freed_memory
from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.training.entry import train_main


def main(args):
    """Check the config and data, lock the run, save its config and train it (resuming where it stopped)."""
    import torch

    from efficient_vdvae_torch import backend
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return train_main(args, backend)


def parser():
    p = build_parser(main.__doc__.splitlines()[0])
    p.add_argument("--from-checkpoint", metavar="PATH", default=None,
                   help="start a NEW run from the weights of this checkpoint (ours or the original's); "
                        "ignored when the run already has checkpoints")
    return p


if __name__ == "__main__":
    retain_freed_memory()
    run_main(main, parser=parser())
