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
import os
from pathlib import Path

import numpy as np

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.npz_weights import load_jax_params, save_jax_params
from efficient_vdvae_core.params import flatten_tree, import_original_jax_params, jax_params_to_torch_state_dict, torch_state_dict_to_jax


def read_original_jax_checkpoint(path):
    """(params, ema_params or None, step) of the original's flax msgpack checkpoint file, in our layout."""
    from flax import serialization
    try:
        state = serialization.msgpack_restore(Path(path).read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise UserError(f"{path}: not a flax msgpack checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "params" not in state:
        raise UserError(f"{path}: not an Efficient-VDVAE JAX checkpoint (no 'params')")
    ema = state.get("ema_params")
    return (import_original_jax_params(state["params"]), None if ema is None else import_original_jax_params(ema),
            int(np.asarray(state.get("step", 0))))


# ----------------------------------------------------------------------------- JAX checkpoint files

# ----------------------------------------------------------------------------- checks and CLI

def param_shapes(config):
    """{path tuple: shape} of the JAX model of a Config, by abstract evaluation (nothing allocated)."""
    from efficient_vdvae_core.architecture import build_architecture
    from efficient_vdvae_jax.summary import abstract_params
    return dict(abstract_params(build_architecture(config.model, config.data), config.model))


def check_params(params, config, source):
    """UserError naming the first mismatches when `params` does not fit the JAX model of `config`."""
    expected = param_shapes(config)
    got = {p: tuple(np.shape(v)) for p, v in flatten_tree(params).items()}
    name = lambda p: "/".join(map(str, p))
    problems = [f"{name(p)} {got[p]} vs {s}" for p, s in expected.items() if p in got and got[p] != s][:3]
    problems += ["missing " + name(p) for p in expected if p not in got][:3]
    problems += ["unexpected " + name(p) for p in got if p not in expected][:3]
    if problems:
        raise UserError(f"{source}: does not match the model of the config: " + "; ".join(problems))


def _read_torch(path):
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise UserError(f"{path}: unreadable torch checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "model_state_dict" not in state:
        raise UserError(f"{path}: not an Efficient-VDVAE checkpoint (no 'model_state_dict')")

    def numpy_tree(sd):
        return None if sd is None else torch_state_dict_to_jax({k: v.detach().cpu().numpy() for k, v in sd.items()})
    step = int(state["step"]) if "step" in state else int(state.get("global_step", -1)) + 1
    return (numpy_tree(state["model_state_dict"]), numpy_tree(state.get("ema_model_state_dict")), step,
            state.get("config"))


def _write_torch(path, params, ema, step, config):
    import torch

    def tensors(tree):
        return {k: torch.from_numpy(np.require(v, requirements=["C", "W"]))
                for k, v in jax_params_to_torch_state_dict(tree).items()}
    payload = {"model_state_dict": tensors(params), "step": int(step), "format_version": 1}
    if ema is not None:
        payload["ema_model_state_dict"] = tensors(ema)
    if config is not None:
        payload["config"] = config
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def main(args):
    """Convert model and EMA weights of a checkpoint between PyTorch, this JAX code and the original JAX."""
    from efficient_vdvae_core.config import config_from_dict, load_config
    if args.from_original_jax:
        params, ema, step = read_original_jax_checkpoint(args.input)
        stored = None
    elif Path(args.input).is_dir():  # a checkpoint_<step>/ folder of our JAX training (Orbax)
        import jax

        from efficient_vdvae_jax.utils.checkpoint import read_orbax_state
        state, meta = read_orbax_state(args.input)
        params, ema = (jax.tree.map(np.asarray, state[k]) for k in ("params", "ema"))
        step, stored = int(meta["step"]), meta["config"]
    elif args.to == "jax":
        params, ema, step, stored = _read_torch(args.input)
    else:
        params, ema, step, stored = load_jax_params(args.input)
    if args.config is not None:
        config = load_config(args.config, args.overrides)[0]
    elif stored is not None:
        config = config_from_dict(stored, source=f"{args.input} (stored config)")
    else:
        config = None
    if config is not None:
        check_params(params, config, args.input)
        if ema is not None:
            check_params(ema, config, f"{args.input} (EMA)")
    config_dict = None if config is None else config.to_dict()
    if args.to == "jax":
        out = save_jax_params(args.output, params, ema, step, config_dict)
    else:
        out = _write_torch(args.output, params, ema, step, config_dict)
    n = sum(np.size(v) for v in flatten_tree(params).values())
    print(f"wrote {out}: {n} parameters{' + EMA' if ema is not None else ''}, step {step}"
          f"{'' if config is not None else ', no config (pass --config to store one)'}")
    return out


def parser():
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--to", choices=("jax", "torch"), required=True, help="format of OUTPUT")
    p.add_argument("--from-original-jax", action="store_true",
                   help="INPUT is a flax msgpack checkpoint of the original JAX implementation")
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
