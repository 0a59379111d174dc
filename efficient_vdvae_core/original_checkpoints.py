"""Checkpoints of the original code (both frameworks): weights, EMA, Adamax moments and counters in one form.

The original PyTorch code writes one file `checkpoints-<name>` (torch.save) holding `global_step`,
`model_state_dict`, `ema_model_state_dict`, `optimizer_state_dict` and `scheduler_state_dict`. Its
Adamax (NVAE's) updates all parameters of one shape as a single stacked tensor and then points each
parameter's state at its row, so in the file `state[i]['exp_avg']` and `state[i]['exp_inf']` are views
of one (n, *shape) storage per shape, rows in parameter order; `state[i]['step']` is an int. Entry `i`
belongs to the i-th parameter of the model's registration order, which is the key order of
`model_state_dict` (it holds parameters only).

The original JAX code writes `checkpoints-<name>/checkpoint_<N>` (flax msgpack) holding `step`,
`params`, `ema_params`, `ema_decay` and `opt_state`, the optax chain state: "0" = Adamax
{count, mu, nu} with mu and nu trees like `params`, then "1" = the masked weight-decay state when weight
decay was on, last = {count} of the learning-rate schedule. Its parameter paths are named differently
and its MoL output channels are ordered (3M, C); the moments of `output_conv` are reordered exactly like
its weights.

Both become an `OriginalCheckpoint` in our PyTorch layout: {state_dict name: float32 array} with OIHW
kernels, NCHW `scale_bias`/`trainable_h` and our (C, 3M) MoL channel order.

Steps. Our runs count `step` = completed training iterations, skipped updates included, and iteration
`step` uses the schedules at `step`. The Adamax bias correction uses the optimizer's own count of applied
updates instead, carried separately as `optimizer_count`:
- PyTorch original: the checkpoint is written during iteration `global_step` (0-based) after its update,
  and the original resumes at `global_step + 1`, so `iteration_step = global_step + 1`.
  `optimizer_count` = the first parameter's `step` (the one the original's bias correction reads):
  applied updates, fewer than iterations by the skipped ones.
- JAX original: `step` counts applied updates only (skipped iterations are not counted nor stored) and
  drives its KL, gamma and LR schedules; the original resumes its loop at that `step`. So
  `iteration_step = step`, which continues its schedules unchanged; `optimizer_count` = the Adamax
  `count` (equal to `step` in the original's files, as is the schedule's count).
The next update's bias correction is 1 - beta1^(optimizer_count + 1) in both. Neither original stores
its gradient-skip counter. The resumed update equals the original's when the schedules agree at that
step (our 'cosine' is the JAX original's closed form, not the PyTorch original's recursive one) and
the weight decay does: the PyTorch original never applied any whatever its config said, so its runs
continue exactly with [loss] use_weight_decay = False.
"""
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from efficient_vdvae_core import flax_msgpack
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.params import import_original_jax_params, jax_params_to_torch_state_dict
from efficient_vdvae_core.weights import Weights, check_fits

_ZIP_MAGIC = b"PK\x03\x04"
_JAX_FILE = re.compile(r"^checkpoint_(\d+)$")


class OriginalCheckpointError(UserError):
    """An original checkpoint that cannot be used, with the file named."""


@dataclass(frozen=True)
class OriginalCheckpoint:
    """An original checkpoint in our PyTorch layout ({state_dict name: float32 array}), with its counters."""
    params: dict
    ema: dict | None  # None when the file holds no EMA weights
    exp_avg: dict | None  # Adamax first moment m per parameter; None when the file holds no optimizer state
    exp_inf: dict | None  # Adamax infinity norm u per parameter
    iteration_step: int  # our `step` to resume at: completed training iterations
    optimizer_count: int  # Adamax updates applied so far (0 without optimizer state)
    ema_decay: float | None  # the JAX original stores its EMA decay (and resumed with it)
    adamax_settings: dict | None  # {"beta1", "beta2", "epsilon"} stored by the PyTorch original's optimizer
    framework: str  # "pytorch" or "jax"
    source: Path


def file_kind(path):
    """'torch' for a torch.save zip archive, 'pickle' for a Python pickle (torch's legacy format, or any pickle),
    'msgpack' for a msgpack map (flax), None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head == _ZIP_MAGIC:
        return "torch"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO 2..5; as msgpack: an empty map, then junk
        return "pickle"
    if head and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack"
    return None


def original_jax_files(directory):
    """(step, path) of the JAX original's checkpoint FILES checkpoint_<N> in `directory`, oldest first.

    Our JAX runs write checkpoint_<N> FOLDERS (Orbax), which are not listed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _JAX_FILE.match(p.name)) and p.is_file()]
    return sorted(found)


@contextlib.contextmanager
def _malformed(source, what):
    """Turn the KeyError/TypeError/ValueError of a malformed tree into one OriginalCheckpointError line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OriginalCheckpointError(f"{source}: malformed {what} ({type(exc).__name__}: {exc})") from None


def _float32(value, source, what):
    array = np.asarray(value)  # NumPy arrays and CPU tensors alike
    if not np.issubdtype(array.dtype, np.floating):
        raise OriginalCheckpointError(f"{source}: {what} is {array.dtype}, not a floating-point array")
    return np.array(array, dtype=np.float32)  # an own, writable, contiguous copy (the file's views share storage)


def _float_dict(state_dict, source, what):
    return {name: _float32(value, source, f"{what} {name}") for name, value in state_dict.items()}


def parse_original_torch(state, source):
    """OriginalCheckpoint of the dict of the PyTorch original's file (as torch.load gives it, on the CPU)."""
    source = Path(source)
    missing = [k for k in ("global_step", "model_state_dict") if k not in state]
    if missing:
        raise OriginalCheckpointError(f"{source}: not a checkpoint of the original PyTorch code (no {missing[0]!r})")
    params = _float_dict(state["model_state_dict"], source, "parameter")
    ema = state.get("ema_model_state_dict")
    ema = None if ema is None else _float_dict(ema, source, "EMA parameter")
    with _malformed(source, "optimizer_state_dict"):
        exp_avg, exp_inf, count, settings = _torch_adamax(state.get("optimizer_state_dict"), params, source)
    with _malformed(source, "global_step"):
        iteration_step = int(np.asarray(state["global_step"])) + 1
    return OriginalCheckpoint(params=params, ema=ema, exp_avg=exp_avg, exp_inf=exp_inf, iteration_step=iteration_step,
                              optimizer_count=count, ema_decay=None, adamax_settings=settings, framework="pytorch",
                              source=source)


def _torch_adamax(optimizer_state, params, source):
    """(exp_avg, exp_inf, count, settings) from the original's optimizer state_dict, by parameter name."""
    if optimizer_state is None:
        return None, None, 0, None
    groups = optimizer_state["param_groups"]
    indices = [i for group in groups for i in group["params"]]
    names = list(params)
    if len(indices) != len(names):
        raise OriginalCheckpointError(f"{source}: its optimizer state has {len(indices)} parameters, its model "
                                      f"{len(names)}")
    beta1, beta2 = groups[0]["betas"]
    settings = {"beta1": float(beta1), "beta2": float(beta2), "epsilon": float(groups[0]["eps"])}
    per_index = optimizer_state["state"]
    if not per_index:  # written before any update was applied: Adamax starts from zero
        return None, None, 0, settings
    exp_avg, exp_inf = {}, {}
    for index, name in zip(indices, names):
        entry = per_index.get(index)
        if entry is None:
            raise OriginalCheckpointError(f"{source}: no optimizer state for parameter {name}")
        if "exp_inf" not in entry or "exp_avg" not in entry:
            raise OriginalCheckpointError(f"{source}: the optimizer state of {name} has {sorted(entry)}, not the "
                                          "Adamax moments exp_avg and exp_inf; only Adamax state can be converted")
        for store, key in ((exp_avg, "exp_avg"), (exp_inf, "exp_inf")):
            store[name] = _float32(entry[key], source, f"{key} of {name}")
            if store[name].shape != params[name].shape:
                raise OriginalCheckpointError(f"{source}: {key} of {name} has shape {store[name].shape}, the "
                                              f"parameter {params[name].shape}")
    count = int(np.asarray(per_index[indices[0]]["step"]))  # the original's bias correction reads the first one
    return exp_avg, exp_inf, count, settings


def read_original_jax(path, num_mixtures=None):
    """OriginalCheckpoint of an original JAX checkpoint file checkpoint_<N> (flax msgpack)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OriginalCheckpointError(f"{path}: checkpoint not found") from None
    except OSError as exc:
        raise OriginalCheckpointError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        state = flax_msgpack.restore(data)
    except flax_msgpack.FlaxMsgpackError as exc:
        raise OriginalCheckpointError(f"{path}: not a checkpoint of the original JAX code ({exc})") from None
    return parse_original_jax(state, path, num_mixtures=num_mixtures)


def parse_original_jax(state, source, num_mixtures=None):
    """OriginalCheckpoint of the state tree of an original JAX checkpoint (msgpack-restored dict)."""
    source = Path(source)
    for key in ("params", "opt_state", "step"):
        if key not in state or (key != "step" and not isinstance(state[key], dict)):
            raise OriginalCheckpointError(f"{source}: not a checkpoint of the original JAX code (no {key!r})")

    def ours(tree, what):
        try:
            flat = jax_params_to_torch_state_dict(import_original_jax_params(tree, num_mixtures=num_mixtures))
        except (ValueError, KeyError) as exc:
            raise OriginalCheckpointError(f"{source}: {what}: {exc}") from None
        return _float_dict(flat, source, what)

    params = ours(state["params"], "params")
    ema = None if state.get("ema_params") is None else ours(state["ema_params"], "ema_params")
    adam = state["opt_state"].get("0")
    if not isinstance(adam, dict) or "count" not in adam:
        raise OriginalCheckpointError(f"{source}: opt_state has no Adamax state {{count, mu, nu}} at '0'")
    if not {"mu", "nu"} <= set(adam):  # weights without the moments: readable, resumed from zero moments
        with _malformed(source, "step"):
            step = int(np.asarray(state["step"]))
        return OriginalCheckpoint(params=params, ema=ema, exp_avg=None, exp_inf=None, iteration_step=step,
                                  optimizer_count=0, ema_decay=None, adamax_settings=None, framework="jax",
                                  source=source)
    exp_avg, exp_inf = ours(adam["mu"], "opt_state mu"), ours(adam["nu"], "opt_state nu")
    for what, moments in (("mu", exp_avg), ("nu", exp_inf)):
        wrong = [n for n in params if n not in moments or moments[n].shape != params[n].shape]
        if wrong or len(moments) != len(params):
            raise OriginalCheckpointError(f"{source}: opt_state {what} does not match params "
                                          f"(first: {(wrong or sorted(set(moments) - set(params)))[0]})")
    with _malformed(source, "step, count or ema_decay"):
        step, count = int(np.asarray(state["step"])), int(np.asarray(adam["count"]))
        ema_decay = None if state.get("ema_decay") is None else float(np.asarray(state["ema_decay"]))
    return OriginalCheckpoint(params=params, ema=ema, exp_avg=exp_avg, exp_inf=exp_inf, iteration_step=step,
                              optimizer_count=count, ema_decay=ema_decay, adamax_settings=None, framework="jax",
                              source=source)


def read_original(path, load_torch_file):
    """OriginalCheckpoint of an original checkpoint file: JAX (`checkpoint_<N>`, flax msgpack) or PyTorch
    (`checkpoints-<name>`), the latter read by the framework's `load_torch_file(path)` (weights only)."""
    if file_kind(path) == "msgpack":
        return read_original_jax(path)
    state = load_torch_file(path)
    if "format_version" in state:
        raise OriginalCheckpointError(f"{path}: a checkpoint of this code, not of the original code")
    return parse_original_torch(state, path)


def check_original_resumable(checkpoint, param_shapes, opt_cfg):
    """UserError unless `checkpoint` (an OriginalCheckpoint) fits a model of `param_shapes` and its moments
    can drive the optimizer of `opt_cfg`."""
    check_fits(Weights(params=checkpoint.params, ema=checkpoint.ema, step=checkpoint.iteration_step,
                       config_dict=None, source=checkpoint.source, kind="original"), param_shapes)
    check_adamax(checkpoint, opt_cfg)


def check_adamax(checkpoint, opt_cfg):
    """OriginalCheckpointError unless the moments of `checkpoint` can drive the optimizer of `opt_cfg`."""
    if checkpoint.exp_avg is not None and opt_cfg.type != "Adamax":
        raise OriginalCheckpointError(f"{checkpoint.source}: holds Adamax moments but [optimizer] type is "
                                      f"{opt_cfg.type!r}; set type = 'Adamax' to resume it")

