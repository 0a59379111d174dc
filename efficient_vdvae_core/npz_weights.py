"""The `.npz` weights format: model and EMA parameters as an uncompressed NumPy archive (no pickle).

    model/<path>   the parameters in the JAX layout (HWIO kernels, (1, H, W, C) scale_bias / trainable_h),
                   <path> = the parameter tree path joined by '/', e.g. model/top_down/output_conv/kernel
    ema/<path>     the EMA parameters, same paths (absent when the source had none)
    step           int64 scalar: completed training iterations
    config_json    str scalar: JSON of Config.to_dict() (absent when unknown)

Written by `python -m efficient_vdvae_jax.convert --to jax`, read by both frameworks and by `numpy.load`.
"""
import io
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.params import flatten_tree, parse_part, unflatten_tree
from efficient_vdvae_core.runs import atomic_write_bytes


class JaxCheckpoint(NamedTuple):
    params: dict  # nested param dict of NumPy arrays
    ema: dict | None  # same structure, or None
    step: int
    config: dict | None  # Config.to_dict(), or None


def save_jax_params(path, params, ema, step, config):
    """Write params (and EMA) as the `.npz` format of this module, atomically (a temporary file, then a rename).

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
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


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
                trees[prefix][tuple(parse_part(p) for p in rest.split("/"))] = data[name]
        if not trees["model"]:
            raise UserError(f"{path}: not a JAX .npz checkpoint (no 'model/...' arrays)")
        step = int(data["step"]) if "step" in data.files else 0
        config = json.loads(str(data["config_json"])) if "config_json" in data.files else None
    ema = unflatten_tree(trees["ema"]) if trees["ema"] else None
    return JaxCheckpoint(unflatten_tree(trees["model"]), ema, step, config)


