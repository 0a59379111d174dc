"""Weight conversion between the PyTorch model, this JAX model and the original JAX implementation.

This module reads and writes the checkpoint files; the parameter names and layouts are the tables of
`efficient_vdvae_core.params`.

JAX checkpoint file (`save_jax_params` / `load_jax_params`), an uncompressed NumPy `.npz`, readable
with `numpy.load(path)` (no pickle):
  `model/<path>`  the parameters, <path> = the tree path joined by '/' (e.g.
                  `model/top_down/levels_down_upsample/3/unpool/ops/0/kernel`), float32, HWIO kernels
  `ema/<path>`    the EMA parameters, same paths (absent when the source had none)
  `step`          int64 scalar: completed training iterations (the PyTorch checkpoints' `step`)
  `config_json`   str scalar: JSON of `Config.to_dict()` (absent when unknown)
The training code's Orbax checkpoints hold `model` / `ema` trees of the same structure.

Command line (model AND EMA weights, step and config):

    python -m efficient_vdvae_jax.convert --to jax   checkpoint_500.pt  checkpoint_500.npz
    python -m efficient_vdvae_jax.convert --to torch checkpoint_500.npz checkpoint_500.pt
    python -m efficient_vdvae_jax.convert --to torch checkpoints-tiny/checkpoint_500 checkpoint_500.pt
    python -m efficient_vdvae_jax.convert --to torch --from-original-jax checkpoint_1000000 out.pt --config egs/X.cfg

`--to jax` reads our PyTorch checkpoints (`checkpoint_<step>.pt`) and the original's single file
(`model_state_dict`, `ema_model_state_dict`, `global_step`); `--to torch` reads the `.npz` above;
either reads a `checkpoint_<step>/` Orbax folder of our JAX training. `--to torch` writes a `.pt` with
`model_state_dict`, `ema_model_state_dict`, `step`, `config` and `format_version` (1) that
`synthesize.py --checkpoint` and `train.py --from-checkpoint` load (no optimizer state).
`--from-original-jax` reads the original's flax msgpack checkpoint (`params`, `ema_params`, `step`).
`--config` supplies the config where the input has none (the originals) and checks shapes.
"""
import argparse
import io
from pathlib import Path

import numpy as np

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.npz_weights import load_jax_params, save_jax_params  # noqa: F401  (the .npz format)
from efficient_vdvae_core.params import torch_state_dict_to_jax
from efficient_vdvae_core.runs import atomic_write_bytes

SUFFIX = {"jax": ".npz", "torch": ".pt"}


def check_output(input_path, output, to):
    """The output path, or UserError when writing it would be wrong (suffix, the input itself, a run's checkpoints)."""
    output, suffix = Path(output), SUFFIX[to]
    if output.suffix != suffix:
        raise UserError(f"OUTPUT {output}: --to {to} writes a {suffix} file; name it {output.with_suffix(suffix).name}")
    source = Path(input_path).expanduser().resolve()
    target = output.expanduser().resolve()
    if target == source or source in target.parents:
        raise UserError(f"OUTPUT {output} is the INPUT {input_path}; write the converted file elsewhere")
    if any(p.name.startswith("checkpoints-") for p in target.parents):
        raise UserError(f"OUTPUT {output} is inside a run's checkpoint folder ({target.parent}), where it could replace "
                        "a checkpoint; write the converted file elsewhere")
    if not target.parent.is_dir():
        raise UserError(f"OUTPUT {output}: folder {output.parent} does not exist; create it or choose another path")
    if target.is_dir():
        raise UserError(f"OUTPUT {output} is a folder; give a file name ending in {suffix}")
    return output


def write_torch(path, params, ema, step, config):
    """Write a .pt of PyTorch-layout NumPy weights (no optimizer state) via a temporary file and a rename."""
    import torch

    def tensors(arrays):
        return {k: torch.from_numpy(np.require(v, requirements=["C", "W"])) for k, v in arrays.items()}
    payload = {"model_state_dict": tensors(params), "step": int(step), "format_version": 1}
    if ema is not None:
        payload["ema_model_state_dict"] = tensors(ema)
    if config is not None:
        payload["config"] = config
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def main(args):
    """Convert model and EMA weights of a checkpoint between PyTorch, this JAX code and the original JAX."""
    from efficient_vdvae_core.config import config_from_dict, load_config
    from efficient_vdvae_core.weights import check_fits
    from efficient_vdvae_jax.utils.checkpoint import read_weights
    from efficient_vdvae_jax.utils.state import param_shapes
    output = check_output(args.input, args.output, args.to)
    weights = read_weights(args.input)  # any format, recognised by its content (--from-original-jax is implied)
    if args.config is not None:
        config = load_config(args.config, args.overrides)[0]
    elif weights.config_dict is not None:
        config = config_from_dict(weights.config_dict, source=f"{args.input} (stored config)")
    else:
        config = None
    if config is not None:
        check_fits(weights, param_shapes(config), what="does not match the model of the config")
    config_dict = None if config is None else config.to_dict()
    if args.to == "jax":
        to_jax = (lambda arrays: None if arrays is None else torch_state_dict_to_jax(arrays))
        out = save_jax_params(output, to_jax(weights.params), to_jax(weights.ema), weights.step, config_dict)
    else:
        out = write_torch(output, weights.params, weights.ema, weights.step, config_dict)
    n = sum(np.size(v) for v in weights.params.values())
    print(f"wrote {out}: {n} parameters{' + EMA' if weights.ema is not None else ''}, step {weights.step}"
          f"{'' if config is not None else ', no config (pass --config to store one)'}")
    return out


def parser():
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--to", choices=("jax", "torch"), required=True, help="format of OUTPUT")
    p.add_argument("--from-original-jax", action="store_true",
                   help="INPUT is a flax msgpack checkpoint of the original JAX implementation (optional: every "
                        "format is recognised by its content)")
    p.add_argument("--config", metavar="PATH", default=None,
                   help="config of the model: stored in OUTPUT and used to check the shapes (default: the config "
                        "stored in INPUT, if any)")
    p.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override one value of --config; repeatable")
    p.add_argument("input", metavar="INPUT", help="checkpoint file (.pt, .npz, original msgpack) or Orbax folder")
    p.add_argument("output", metavar="OUTPUT", help="file to write (.npz for --to jax, .pt for --to torch)")
    return p


if __name__ == "__main__":
    from efficient_vdvae_core.cli import run_main
    run_main(main, parser=parser())
