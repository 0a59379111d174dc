"""Checkpoint files in the original code's on-disk layouts, written from known arrays in our PyTorch layout.

PyTorch original: one torch.save'd dict; its Adamax keeps the moments of all parameters of one shape as
rows of one stacked tensor, in registration order, and each parameter's state (and the parameter
itself) is a view of its row; `step` is an int. JAX original: a flax msgpack TrainState with the
original's parameter paths, HWIO kernels, NHWC scale_bias/trainable_h, MoL output channels in (3M, C)
order, and the optax chain state of Adamax, masked weight decay and the LR schedule.
"""
from collections import OrderedDict

import numpy as np
import torch

from efficient_vdvae_core.params import ours_to_original_jax_path, torch_to_jax_key, unflatten_tree

# Registration order of the original PyTorch modules: bottom_up before top_down; in a down block the
# unpool layer (scale_bias before its conv), the cells, posterior, prior, both projections, z_projection.
_MODULE_ORDER = ["bottom_up", "top_down", "levels_up", "levels_up_downsample", "input_conv", "trainable_h",
                 "levels_down", "levels_down_upsample", "output_conv", "unpool", "scale_bias", "ops",
                 "residual_block", "skip_projection", "pool", "posterior_net", "prior_net", "prior_layer",
                 "posterior_layer", "z_projection", "convs", "projection", "weight", "bias"]


def registration_order(name):
    return [(0, int(p)) if p.isdigit() else (1, _MODULE_ORDER.index(p)) for p in name.split(".")]


def random_arrays(shapes, rng, low=None, high=None):
    """{name: float32 array} of normal values, or uniform in [low, high) when given."""
    draw = (lambda s: rng.normal(size=s)) if low is None else (lambda s: rng.uniform(low, high, size=s))
    return {name: draw(shape).astype(np.float32) for name, shape in shapes.items()}


def _stacked_views(names, arrays):
    """One (n, *shape) tensor per shape, rows in `names` order; returns each name's row (a view)."""
    rows = {}
    by_shape = OrderedDict()
    for name in names:
        by_shape.setdefault(arrays[name].shape, []).append(name)
    for group in by_shape.values():
        stack = torch.stack([torch.from_numpy(np.array(arrays[n])) for n in group])
        rows.update({n: stack[i] for i, n in enumerate(group)})
    return rows


def write_original_torch(path, params, ema, exp_avg, exp_inf, *, count, global_step, lr, betas=(0.9, 0.999),
                         eps=1e-8):
    """The PyTorch original's `checkpoints-<name>` file, written after iteration `global_step`."""
    names = sorted(params, key=registration_order)
    weights, m, u = (_stacked_views(names, a) for a in (params, exp_avg, exp_inf))
    state = {i: {"step": count, "exp_avg": m[n], "exp_inf": u[n]} for i, n in enumerate(names)}
    groups = [{"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0, "initial_lr": lr,
               "params": list(range(len(names)))}]
    torch.save({"global_step": global_step,
                "model_state_dict": OrderedDict((n, weights[n]) for n in names),
                "ema_model_state_dict": OrderedDict((n, torch.from_numpy(np.array(ema[n]))) for n in names),
                "optimizer_state_dict": {"state": state, "param_groups": groups},
                "scheduler_state_dict": {"last_epoch": torch.tensor(global_step + 1), "base_lrs": [lr],
                                         "_step_count": global_step + 2, "verbose": False, "_last_lr": [lr]}},
               path)


def original_output_channels(array, num_mixtures, channels):
    """Our (C, 3M) MoL channel order -> the original JAX (3M, C): slot k of colour c moves from M + c*3M + k
    to M + k*C + c; the M mixture logits stay first."""
    m = num_mixtures
    out = np.empty_like(array)
    out[..., :m] = array[..., :m]
    for c in range(channels):
        for k in range(3 * m):
            out[..., m + k * channels + c] = array[..., m + c * 3 * m + k]
    return out


def original_jax_tree(arrays, num_mixtures, channels):
    """{state_dict name: array} in our PyTorch layout -> the original JAX parameter tree."""
    flat = {}
    for name, value in arrays.items():
        if name.endswith(".weight"):
            value = value.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
        elif name.endswith(("scale_bias", "trainable_h")):
            value = value.transpose(0, 2, 3, 1)  # (1, C, H, W) -> (1, H, W, C)
        if name.startswith("top_down.output_conv."):
            value = original_output_channels(value, num_mixtures, channels)
        path = ours_to_original_jax_path(torch_to_jax_key(name, arrays[name].shape)[0])
        flat[tuple(path.split("/"))] = np.ascontiguousarray(value)
    return unflatten_tree(flat)


def write_original_jax(path, params, ema, mu, nu, *, count, step, num_mixtures, channels, ema_decay=0.9999,
                       weight_decay=True):
    """The JAX original's `checkpoint_<step>` file (flax msgpack of its EMATrainState)."""
    from flax import serialization

    def tree(arrays):
        return original_jax_tree(arrays, num_mixtures, channels)
    chain = [{"count": np.asarray(count, np.int32), "mu": tree(mu), "nu": tree(nu)}]
    if weight_decay:
        chain.append({"inner_state": {}})
    chain.append({"count": np.asarray(count, np.int32)})
    state = {"step": np.asarray(step, np.int32), "params": tree(params),
             "opt_state": {str(i): s for i, s in enumerate(chain)}, "ema_decay": np.asarray(ema_decay, np.float32),
             "ema_params": tree(ema)}
    path.write_bytes(serialization.msgpack_serialize(state))


def adamax_update(theta, m, u, g, *, lr, count, beta1, beta2, eps):
    """(theta', m', u') of one Adamax update from moments after `count` updates, in float64."""
    theta, m, u, g = (np.asarray(x, np.float64) for x in (theta, m, u, g))
    m = beta1 * m + (1 - beta1) * g
    u = np.maximum(beta2 * u, np.abs(g) + eps)
    return theta - lr * m / ((1 - beta1 ** (count + 1)) * u), m, u
