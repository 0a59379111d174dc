"""Run a trained Efficient-VDVAE with PyTorch: reconstruction, generation, div_stats, encoding or decoding."""
from efficient_vdvae_core.allocator import retain_freed_memory
from efficient_vdvae_core.cli import build_synthesis_parser, run_main
from efficient_vdvae_core.synthesis.entry import synthesize_main


def main(args):
    """Run a trained model in its synthesis_mode: reconstruction, generation, div_stats, encoding or decoding.

    The run must exist (its saved config is used, with --set overrides on top).
    """
    from efficient_vdvae_torch import backend
    return synthesize_main(args, backend)


def parser():
    return build_synthesis_parser(
        main.__doc__.splitlines()[0],
        checkpoint_help="use this checkpoint instead of the run's newest: a .pt file (ours or the original's), "
                        "one of our JAX checkpoint_<step> folders or a converted .npz")


if __name__ == "__main__":
    retain_freed_memory()
    run_main(main, parser=parser())
