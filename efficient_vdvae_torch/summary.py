"""Print the model layout and trainable parameter count of a config, without allocating weights.

    python -m efficient_vdvae_torch.summary --config egs/cifar10_baseline.cfg [--keys]
"""
import torch

from efficient_vdvae_core.architecture import build_architecture, describe_architecture
from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.config import load_config
from efficient_vdvae_torch.model.autoencoder import Autoencoder


def state_dict_listing(model):
    """`name (shape)` lines in the format of the reference listings."""
    def shape(t):
        dims = ", ".join(str(d) for d in t.shape)
        return f"({dims},)" if t.dim() == 1 else f"({dims})"
    return [f"{name} {shape(t)}" for name, t in model.state_dict().items()]


def main(args):
    config, _ = load_config(args.config, args.overrides)
    arch = build_architecture(config.model, config.data)
    with torch.device("meta"):
        model = Autoencoder(arch, config.model)
    lines = state_dict_listing(model) if args.keys else describe_architecture(arch)
    print("\n".join(lines))
    print(f"trainable parameters: {sum(p.numel() for p in model.parameters() if p.requires_grad)}")


def parser():
    p = build_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--keys", action="store_true", help="list the state_dict as 'name (shape)'")
    return p


if __name__ == "__main__":
    run_main(main, parser=parser())
