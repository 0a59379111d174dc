"""The model as pytrees: an nnx model split into (graphdef, params, rest) and the TrainState dict.

Parameters travel as a pure nested dict of arrays whose paths are the torch state_dict names split at
'.' (list indices as ints, `weight` -> `kernel`): the form that jit, Orbax and the converter share.
"""
import jax
import jax.numpy as jnp
from flax import nnx


def split_model(model):
    """(graphdef, params as a pure dict of arrays, the rest of the nnx state)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def merge_model(graphdef, params, rest):
    """The nnx model of `graphdef` with `params` (a pure dict of arrays) and its other state `rest`."""
    return nnx.merge(graphdef, nnx.State(params), rest)


def init_state(params, tx):
    """A fresh TrainState: a dict of params, EMA params (a copy) and optimizer state (the counters are the core's)."""
    return {"params": params, "ema": jax.tree.map(jnp.array, params), "opt_state": tx.init(params)}


def param_shapes(config):
    """{torch state_dict name: PyTorch-layout shape} of a Config's model in state_dict order (nothing allocated)."""
    from efficient_vdvae_core.architecture import build_architecture
    from efficient_vdvae_core.params import jax_to_torch_key, torch_key_order
    from efficient_vdvae_jax.summary import abstract_params
    shapes = abstract_params(build_architecture(config.model, config.data), config.model)
    names = dict(jax_to_torch_key(path, shape) for path, shape in shapes)
    return {name: names[name] for name in sorted(names, key=torch_key_order)}
