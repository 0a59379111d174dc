"""Train Efficient-VDVAE with JAX: one process per host, data-parallel over every device of every process."""
from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.training.entry import train_main


def main(args):
    """Check the config and data, lock the run, save its config and train it (resuming where it stopped)."""
    from efficient_vdvae_jax import backend
    return train_main(args, backend)


def parser():
    p = build_parser(main.__doc__.splitlines()[0])
    p.add_argument("--from-checkpoint", metavar="PATH", default=None,
                   help="start a NEW run from the weights of this checkpoint: ours (a checkpoint_<step> folder, "
                        "a converted .npz) or a PyTorch .pt file (ours or the original's; needs torch); ignored "
                        "when the run already has checkpoints")
    return p


if __name__ == "__main__":
    from efficient_vdvae_jax.utils import cpu
    cpu.prepare()
    run_main(main, parser=parser())
