"""Weight conversion between the PyTorch model, this JAX model and the original JAX implementation.

Parameter trees. The JAX model's parameters are a nested dict (an nnx "pure dict" of the Param state)
whose paths are the PyTorch state_dict names split at '.', list indices as ints, with
`weight` -> `kernel`:
  torch `top_down.levels_down_upsample.3.unpool.ops.0.weight` (O, I, kh, kw)
  jax   ('top_down', 'levels_down_upsample', 3, 'unpool', 'ops', 0, 'kernel') (kh, kw, I, O)
`unpool.scale_bias` and `trainable_h` are (1, C, H, W) in torch and (1, H, W, C) here; biases are
unchanged. The MoL output channels have the same order in both frameworks, so the conversion is this
table plus transposes, and PyTorch -> JAX -> PyTorch is bitwise exact.

JAX checkpoint file (`save_jax_params` / `load_jax_params`), an uncompressed NumPy `.npz`, readable
with `numpy.load(path)` (no pickle):
  `model/<path>`  the parameters, <path> = the tree path joined by '/' (e.g.
                  `model/top_down/levels_down_upsample/3/unpool/ops/0/kernel`), float32, HWIO kernels
  `ema/<path>`    the EMA parameters, same paths (absent when the source had none)
  `step`          int64 scalar: completed training iterations (the PyTorch checkpoints' `step`)
  `config_json`   str scalar: JSON of `Config.to_dict()` (absent when unknown)
The training code's Orbax checkpoints hold `model` / `ema` trees of the same structure.

The ORIGINAL JAX implementation names parameters differently (model.md 11.2-11.3), e.g.
`top_down/block_down_level_3_upsample/unpooling_layer/conv/conv/kernel`, and orders the MoL output
channels as (3M, C) instead of (C, 3M); `import_original_jax_params` maps its trees to ours.

Command line (model AND EMA weights, step and config):

    python -m efficient_vdvae_jax.convert --to jax   checkpoint_500.pt  checkpoint_500.npz
    python -m efficient_vdvae_jax.convert --to torch checkpoint_500.npz checkpoint_500.pt
    python -m efficient_vdvae_jax.convert --to torch checkpoints-tiny/checkpoint_500 checkpoint_500.pt
    python -m efficient_vdvae_jax.convert --to torch --from-original-jax checkpoint_1000000 out.pt --config egs/X.cfg

`--to jax` reads our PyTorch checkpoints (`checkpoint_<step>.pt`) and the original's single file
(`model_state_dict`, `ema_model_state_dict`, `global_step`); `--to torch` reads the `.npz` above;
either reads a `checkpoint_<step>/` Orbax folder of our JAX training. `--to torch` writes a `.pt` with
`model_state_dict`, `ema_model_state_dict`, `step`, `config` and `format_version` (1) that
`synthesize.py --checkpoint` and `train.py --from-checkpoint` load (no optimizer state). `--from-original-jax` reads the original's flax msgpack checkpoint (`params`, `ema_params`,
`step`). `--config` supplies the config where the input has none (the originals) and checks shapes.
"""
import argparse
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from efficient_vdvae_core.errors import UserError

CHANNELS_LAST = ("scale_bias", "trainable_h")  # (1, C, H, W) in torch, (1, H, W, C) in JAX

# ----------------------------------------------------------------------------- nested trees


def flatten_tree(tree, prefix=()):
    """{path tuple: leaf} of a nested dict."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_tree(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten_tree(flat):
    """Nested dict from {path tuple: leaf}."""
    tree = {}
    for path, leaf in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return tree


def _parse_part(part):
    return int(part) if part.isdigit() else part


# ----------------------------------------------------------------------------- torch <-> jax

# Registration order of the PyTorch modules (model.md 11.1), to write state_dicts in torch's order.
_TORCH_ORDER = {name: i for i, name in enumerate((
    "bottom_up", "top_down", "levels_up", "levels_up_downsample", "input_conv", "trainable_h", "levels_down",
    "levels_down_upsample", "output_conv", "unpool", "scale_bias", "ops", "residual_block", "skip_projection",
    "pool", "posterior_net", "prior_net", "prior_layer", "posterior_layer", "z_projection", "convs", "projection",
    "weight", "bias"))}


def _torch_order(name):
    return [(0, int(p), "") if p.isdigit() else (1, _TORCH_ORDER.get(p, len(_TORCH_ORDER)), p)
            for p in name.split(".")]


def _torch_axes(path):
    """Transpose taking a JAX leaf at `path` to its torch layout (None: unchanged) and the torch leaf name."""
    leaf = path[-1]
    if leaf == "kernel":
        return (3, 2, 0, 1), "weight"  # (kh, kw, in, out) -> (out, in, kh, kw)
    if leaf in CHANNELS_LAST:
        return (0, 3, 1, 2), leaf  # (1, H, W, C) -> (1, C, H, W)
    if leaf == "bias":
        return None, leaf
    raise ValueError(f"{'/'.join(map(str, path))}: unknown parameter kind {leaf!r}")


def jax_to_torch_key(path, shape):
    """(torch state_dict name, torch shape) of a JAX parameter path and shape."""
    axes, leaf = _torch_axes(path)
    name = ".".join(str(p) for p in path[:-1] + (leaf,))
    return name, tuple(shape) if axes is None else tuple(shape[a] for a in axes)


def torch_to_jax_key(name, shape):
    """(JAX parameter path, JAX shape) of a torch state_dict name and shape."""
    path = tuple(_parse_part(p) for p in name.split("."))
    if path[-1] == "weight":
        path = path[:-1] + ("kernel",)
    axes, _ = _torch_axes(path)
    if axes is not None and len(shape) != 4:
        raise ValueError(f"{name}: expected a 4-d parameter, got shape {tuple(shape)}")
    return path, tuple(shape) if axes is None else tuple(shape[axes.index(i)] for i in range(4))


def torch_state_dict_to_jax(state_dict):
    """PyTorch state_dict {name: array} -> nested JAX param dict (conv kernels HWIO, NHWC biases)."""
    flat = {}
    for name, value in state_dict.items():
        value = np.asarray(value)
        path, _ = torch_to_jax_key(name, value.shape)
        axes, _ = _torch_axes(path)
        flat[path] = np.ascontiguousarray(value if axes is None else value.transpose(np.argsort(axes)))
    return unflatten_tree(flat)


def jax_params_to_torch_state_dict(params):
    """Nested JAX param dict -> PyTorch state_dict {name: NumPy array} in the torch model's key order."""
    out = {}
    for path, value in flatten_tree(params).items():
        value = np.asarray(value)
        axes, _ = _torch_axes(path)
        name, _ = jax_to_torch_key(path, value.shape)
        out[name] = np.ascontiguousarray(value if axes is None else value.transpose(axes))
    return {k: out[k] for k in sorted(out, key=_torch_order)}


# ----------------------------------------------------------------------------- the original JAX tree

def mol_channel_permutation(num_mixtures, channels):
    """Index array src with ours[..., j] = original[..., src[j]] for MoL output channels.

    Both start with the M mixture logits; then the original stores slot k of colour c at M + k*C + c
    (a (3M, C) layout), this codebase and PyTorch at M + c*3M + k ((C, 3M), model.md 5.1).
    """
    m, c = num_mixtures, channels
    src = list(range(m))
    for ch in range(c):
        src += [m + k * c + ch for k in range(3 * m)]
    return np.asarray(src)


_CONV = r"/conv/(kernel|bias)"
_ORIGINAL_BLOCK_RULES = [  # inside a block_up/block_down: original sub-path -> our sub-path
    (r"residual_block_(\d+)/conv_(\d+)" + _CONV, lambda b, k, x: ("residual_block", int(b), "convs", 2 * int(k) + 1, x)),
    (r"skip_projection" + _CONV, lambda x: ("skip_projection", x)),
    (r"pooling_layer/conv" + _CONV, lambda x: ("pool", "ops", 0, x)),
    (r"unpooling_layer/conv" + _CONV, lambda x: ("unpool", "ops", 0, x)),
    (r"unpooling_layer/scale_bias", lambda: ("unpool", "scale_bias")),
    (r"(posterior_net|prior_net)/conv_(\d+)" + _CONV, lambda net, k, x: (net, 0, "convs", 2 * int(k) + 1, x)),
    (r"(prior|posterior)_gaussian_layer/projection" + _CONV, lambda which, x: (f"{which}_layer", "projection", x)),
    (r"z_projection/z_projection" + _CONV, lambda x: ("z_projection", x)),
]
_ORIGINAL_RULES = [
    (r"bottom_up/input_conv" + _CONV, lambda x: ("bottom_up", "input_conv", x)),
    (r"top_down/output_conv" + _CONV, lambda x: ("top_down", "output_conv", x)),
    (r"top_down/trainable_h", lambda: ("top_down", "trainable_h")),
    (r"bottom_up/block_up_level_(\d+)_downsample/(.+)", lambda i, rest: ("bottom_up", "levels_up_downsample", int(i))),
    (r"bottom_up/block_up_level_(\d+)_(\d+)/(.+)", lambda i, j, rest: ("bottom_up", "levels_up", int(i), int(j))),
    (r"top_down/block_down_level_(\d+)_upsample/(.+)", lambda i, rest: ("top_down", "levels_down_upsample", int(i))),
    (r"top_down/block_down_level_(\d+)_(\d+)/(.+)", lambda i, j, rest: ("top_down", "levels_down", int(i), int(j))),
]


def original_jax_path_to_ours(path):
    """Our param path (tuple) for a '/'-joined path of the original JAX tree (model.md 11.3)."""
    for pattern, build in _ORIGINAL_RULES:
        match = re.fullmatch(pattern, path)
        if match:
            groups = match.groups()
            if pattern.endswith("(.+)"):
                rest = groups[-1]
                for sub_pattern, sub_build in _ORIGINAL_BLOCK_RULES:
                    sub = re.fullmatch(sub_pattern, rest)
                    if sub:
                        return build(*groups) + sub_build(*sub.groups())
                break
            return build(*groups)
    raise ValueError(f"unknown parameter path of the original JAX model: {path}")


def ours_to_original_jax_path(path):
    """The original JAX tree's '/'-joined path of one of our param paths (inverse of the above)."""
    def block(rest):
        match rest:
            case ("residual_block", b, "convs", n, x):
                return f"residual_block_{b}/conv_{(n - 1) // 2}/conv/{x}"
            case ("skip_projection", x):
                return f"skip_projection/conv/{x}"
            case ("pool", "ops", 0, x):
                return f"pooling_layer/conv/conv/{x}"
            case ("unpool", "ops", 0, x):
                return f"unpooling_layer/conv/conv/{x}"
            case ("unpool", "scale_bias"):
                return "unpooling_layer/scale_bias"
            case ("posterior_net" | "prior_net" as net, 0, "convs", n, x):
                return f"{net}/conv_{(n - 1) // 2}/conv/{x}"
            case ("prior_layer" | "posterior_layer" as layer, "projection", x):
                return f"{layer.split('_')[0]}_gaussian_layer/projection/conv/{x}"
            case ("z_projection", x):
                return f"z_projection/z_projection/conv/{x}"
        raise ValueError(f"unknown parameter path {'/'.join(map(str, path))}")

    match tuple(path):
        case ("bottom_up", "input_conv", x) | ("top_down", "output_conv", x):
            return f"{path[0]}/{path[1]}/conv/{x}"
        case ("top_down", "trainable_h"):
            return "top_down/trainable_h"
        case ("bottom_up", "levels_up_downsample", i, *rest):
            return f"bottom_up/block_up_level_{i}_downsample/" + block(tuple(rest))
        case ("bottom_up", "levels_up", i, j, *rest):
            return f"bottom_up/block_up_level_{i}_{j}/" + block(tuple(rest))
        case ("top_down", "levels_down_upsample", i, *rest):
            return f"top_down/block_down_level_{i}_upsample/" + block(tuple(rest))
        case ("top_down", "levels_down", i, j, *rest):
            return f"top_down/block_down_level_{i}_{j}/" + block(tuple(rest))
    raise ValueError(f"unknown parameter path {'/'.join(map(str, path))}")


def _mixtures(ours, num_mixtures):
    """M of a MoL head (None for a Bernoulli head or a tree without the input and output convs)."""
    if any(k not in ours for k in (("bottom_up", "input_conv", "kernel"), ("top_down", "output_conv", "kernel"))):
        return None
    if num_mixtures is not None:
        return num_mixtures
    channels = np.shape(ours[("bottom_up", "input_conv", "kernel")])[2]
    width = np.shape(ours[("top_down", "output_conv", "kernel")])[-1]
    return width // (3 * channels + 1) if width > 1 and width % (3 * channels + 1) == 0 else None


def _unwrap_params(tree):
    while isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    return tree


def import_original_jax_params(tree, *, num_mixtures=None):
    """Param tree of the ORIGINAL JAX implementation (optionally under 'params') -> our nested param dict.

    Renames every path (model.md 11.3) and reorders the MoL output channels of `output_conv` from the
    original's (3M, C) layout to ours (C, 3M). M is inferred from the output width and the input
    channels unless `num_mixtures` is given; a 1-channel Bernoulli head is left as it is.
    Leaves are kept as they are (arrays or shape structs) unless permuted.
    """
    flat = {"/".join(p): v for p, v in flatten_tree(_unwrap_params(tree)).items()}
    ours = {}
    for path, value in flat.items():
        target = original_jax_path_to_ours(path)
        if target in ours:
            raise ValueError(f"two parameters of the original tree map to {'/'.join(map(str, target))}")
        ours[target] = value
    _permute_output(ours, _mixtures(ours, num_mixtures), inverse=False)
    return unflatten_tree(ours)


def export_original_jax_params(params, *, num_mixtures=None):
    """Our nested param dict -> the original JAX implementation's tree (under no 'params' key).

    Inverse of `import_original_jax_params` (MoL output channels back to (3M, C)); for tests and interop.
    """
    ours = dict(flatten_tree(params))
    _permute_output(ours, _mixtures(ours, num_mixtures), inverse=True)
    return unflatten_tree({tuple(ours_to_original_jax_path(p).split("/")): v for p, v in ours.items()})


def _permute_output(flat, num_mixtures, *, inverse):
    """Reorder output_conv channels in place: original -> ours, or ours -> original when `inverse`."""
    if num_mixtures is None:
        return
    channels = np.shape(flat[("bottom_up", "input_conv", "kernel")])[2]
    src = mol_channel_permutation(num_mixtures, channels)
    index = np.argsort(src) if inverse else src
    for leaf in ("kernel", "bias"):
        key = ("top_down", "output_conv", leaf)
        flat[key] = np.asarray(flat[key])[..., index]


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

class JaxCheckpoint(NamedTuple):
    params: dict  # nested param dict of NumPy arrays
    ema: dict | None  # same structure, or None
    step: int
    config: dict | None  # Config.to_dict(), or None


def save_jax_params(path, params, ema, step, config):
    """Write params (and EMA) as the `.npz` format of this module, via a temp file + rename.

    `config`: a Config, its `to_dict()`, or None.
    """
    arrays = {}
    for prefix, tree in (("model", params), ("ema", ema)):
        if tree is not None:
            for p, v in flatten_tree(tree).items():
                arrays[prefix + "/" + "/".join(str(x) for x in p)] = np.asarray(v)
    arrays["step"] = np.asarray(int(step), np.int64)
    if config is not None:
        arrays["config_json"] = np.asarray(json.dumps(config if isinstance(config, dict) else config.to_dict()))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_jax_params(path):
    """JaxCheckpoint(params, ema, step, config dict) of a file written by `save_jax_params`."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise UserError(f"{path}: not a JAX .npz checkpoint ({str(exc).splitlines()[0][:200]})") from None
    with data:
        trees = {"model": {}, "ema": {}}
        for name in data.files:
            prefix, _, rest = name.partition("/")
            if prefix in trees and rest:
                trees[prefix][tuple(_parse_part(p) for p in rest.split("/"))] = data[name]
        if not trees["model"]:
            raise UserError(f"{path}: not a JAX .npz checkpoint (no 'model/...' arrays)")
        step = int(data["step"]) if "step" in data.files else 0
        config = json.loads(str(data["config_json"])) if "config_json" in data.files else None
    ema = unflatten_tree(trees["ema"]) if trees["ema"] else None
    return JaxCheckpoint(unflatten_tree(trees["model"]), ema, step, config)


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
