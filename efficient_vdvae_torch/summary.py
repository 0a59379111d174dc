"""Print the model layout and trainable parameter count of a config, without allocating weights.

    python -m efficient_vdvae_torch.summary --config egs/cifar10_baseline.cfg [--keys]
"""
from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.summary import summary_main, summary_parser


def named_shapes(config, arch):
    """[(state_dict name, shape)] of the model, built on the meta device."""
    import torch

    from efficient_vdvae_torch.model.autoencoder import Autoencoder
    with torch.device("meta"):
        model = Autoencoder(arch, config.model)
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def main(args):
    summary_main(args, named_shapes)


def parser():
    return summary_parser(__doc__.strip().splitlines()[0], "list the state_dict as 'name (shape)'")


if __name__ == "__main__":
    run_main(main, parser=parser())
