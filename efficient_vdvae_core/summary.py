"""What `summary.py` prints in both frameworks: the model layout, or its parameters, and their count."""
import math

from efficient_vdvae_core.architecture import build_architecture, describe_architecture
from efficient_vdvae_core.cli import build_parser
from efficient_vdvae_core.config import load_config


def shape_text(shape):
    """'(16,)' or '(16, 3, 1, 1)', the format of the reference listings."""
    dims = ", ".join(str(d) for d in shape)
    return f"({dims},)" if len(shape) == 1 else f"({dims})"


def summary_main(args, named_shapes):
    """Print the layout (or with --keys `name (shape)` lines) and the parameter count of --config's model.

    `named_shapes(config, arch)` gives the framework's [(parameter name, shape)], nothing allocated.
    """
    config, _ = load_config(args.config, args.overrides)
    arch = build_architecture(config.model, config.data)
    params = named_shapes(config, arch)
    print("\n".join([f"{name} {shape_text(s)}" for name, s in params] if args.keys else describe_architecture(arch)))
    print(f"trainable parameters: {sum(math.prod(s) for _, s in params)}")


def summary_parser(description, keys_help):
    """build_parser plus --keys."""
    p = build_parser(description)
    p.add_argument("--keys", action="store_true", help=keys_help)
    return p
