"""Print the model layout and trainable parameter count of a config, without allocating weights.

    python -m efficient_vdvae_jax.summary --config egs/cifar10_baseline.cfg [--keys]
"""
import math

import jax
from flax import nnx

from efficient_vdvae_core.architecture import build_architecture, describe_architecture
from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.config import load_config
from efficient_vdvae_jax.model.autoencoder import Autoencoder


def abstract_params(arch, model_cfg):
    """[(path tuple, shape)] of every parameter, by abstract evaluation (nothing allocated)."""
    paths = []

    def params():
        flat = nnx.to_flat_state(nnx.state(Autoencoder(arch, model_cfg, rngs=nnx.Rngs(0)), nnx.Param))
        paths.extend(path for path, _ in flat)
        return [v[...] for _, v in flat]
    return [(path, tuple(v.shape)) for path, v in zip(paths, jax.eval_shape(params))]


def param_listing(params):
    """`path (shape)` lines, path '/'-joined (kernels HWIO), in the format of the reference listings."""
    def shape(s):
        dims = ", ".join(str(d) for d in s)
        return f"({dims},)" if len(s) == 1 else f"({dims})"
    return [f"{'/'.join(str(p) for p in path)} {shape(s)}" for path, s in params]


def main(args):
    config, _ = load_config(args.config, args.overrides)
    arch = build_architecture(config.model, config.data)
    params = abstract_params(arch, config.model)
    lines = param_listing(params) if args.keys else describe_architecture(arch)
    print("\n".join(lines))
    print(f"trainable parameters: {sum(math.prod(s) for _, s in params)}")


def parser():
    p = build_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--keys", action="store_true", help="list the parameters as 'path (shape)'")
    return p


if __name__ == "__main__":
    run_main(main, parser=parser())
