"""The original code's checkpoints (either framework) as this side's state: parameter trees and Adamax state.

`read_original_checkpoint` reads a JAX original's `checkpoint_<N>` file or the PyTorch original's
`checkpoints-<name>` file into an `OriginalCheckpoint` (efficient_vdvae_core.original_checkpoints, which
also says which step a resumed run starts at). `adamax_state` turns its moments into the
`TorchAdamState` of `build_direction`, so that the next update is the one the original would have made
from the same checkpoint.
"""
import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.original_checkpoints import OriginalCheckpointError, read_original
from efficient_vdvae_core.params import torch_state_dict_to_jax
from efficient_vdvae_jax.utils.optim import TorchAdamState
from efficient_vdvae_jax.utils.torch_files import load_torch_file


def read_original_checkpoint(path):
    """OriginalCheckpoint of an original checkpoint file of either framework."""
    return read_original(path, load_torch_file)


def jax_tree(arrays):
    """Our nested JAX parameter tree (HWIO kernels, NHWC scale_bias/trainable_h) of {state_dict name: array}."""
    return jax.tree.map(jnp.asarray, torch_state_dict_to_jax(arrays))


def param_trees(checkpoint):
    """(params, EMA params or None) of the checkpoint as JAX parameter trees."""
    return jax_tree(checkpoint.params), None if checkpoint.ema is None else jax_tree(checkpoint.ema)


def adamax_state(checkpoint, params):
    """The TorchAdamState (count, mu, nu) holding the checkpoint's Adamax state, shaped like `params`.

    count = `checkpoint.optimizer_count`, the applied updates (the next bias correction uses count + 1);
    mu, nu = the stored moments. Without stored moments: zeros and count 0, a fresh Adamax.
    """
    if checkpoint.exp_avg is None:
        return TorchAdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                              nu=jax.tree.map(jnp.zeros_like, params))
    expected = jax.tree.structure(params), jax.tree.map(np.shape, params)
    moments = {}
    for what, arrays in (("mu", checkpoint.exp_avg), ("nu", checkpoint.exp_inf)):
        tree = torch_state_dict_to_jax(arrays)
        if (jax.tree.structure(tree), jax.tree.map(np.shape, tree)) != expected:
            raise OriginalCheckpointError(f"{checkpoint.source}: its Adamax {what} does not match the model of "
                                          "this config")
        moments[what] = jax.tree.map(lambda m, p: jnp.asarray(m, dtype=p.dtype), tree, params)
    return TorchAdamState(count=jnp.asarray(checkpoint.optimizer_count, jnp.int32), **moments)
