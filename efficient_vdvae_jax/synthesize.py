"""Run a trained Efficient-VDVAE with JAX: reconstruction, generation, div_stats, encoding or decoding."""
from efficient_vdvae_core.cli import build_synthesis_parser, run_main
from efficient_vdvae_core.synthesis.entry import synthesize_main


def main(args):
    """Run a trained model in its synthesis_mode: reconstruction, generation, div_stats, encoding or decoding.

    The run must exist (its saved config is used, with --set overrides on top); one process, every local device.
    """
    from efficient_vdvae_jax import backend
    return synthesize_main(args, backend)


def parser():
    return build_synthesis_parser(
        main.__doc__.splitlines()[0],
        checkpoint_help="use this checkpoint instead of the run's newest: one of ours (a checkpoint_<step> folder), "
                        "a converted .npz, or a PyTorch .pt file (ours or the original's; needs torch)")


if __name__ == "__main__":
    from efficient_vdvae_jax.utils import cpu
    cpu.prepare()
    run_main(main, parser=parser())
