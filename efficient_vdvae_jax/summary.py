"""Print the model layout and trainable parameter count of a config, without allocating weights.

    python -m efficient_vdvae_jax.summary --config egs/cifar10_baseline.cfg [--keys]
"""
import jax
from flax import nnx

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.summary import summary_main, summary_parser
from efficient_vdvae_jax.model.autoencoder import Autoencoder


def abstract_params(arch, model_cfg):
    """[(path tuple, shape)] of every parameter, by abstract evaluation (nothing allocated)."""
    paths = []

    def params():
        flat = nnx.to_flat_state(nnx.state(Autoencoder(arch, model_cfg, rngs=nnx.Rngs(0)), nnx.Param))
        paths.extend(path for path, _ in flat)
        return [v[...] for _, v in flat]
    return [(path, tuple(v.shape)) for path, v in zip(paths, jax.eval_shape(params))]


def named_shapes(config, arch):
    """[('/'-joined parameter path, shape)] of the model (kernels HWIO), by abstract evaluation."""
    return [("/".join(str(p) for p in path), shape) for path, shape in abstract_params(arch, config.model)]


def main(args):
    summary_main(args, named_shapes)


def parser():
    return summary_parser(__doc__.strip().splitlines()[0], "list the parameters as 'path (shape)'")


if __name__ == "__main__":
    run_main(main, parser=parser())
