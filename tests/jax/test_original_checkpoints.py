"""The original code's checkpoints (both frameworks) resumed in JAX: parameter trees and the stored Adamax state.

Each test writes a small checkpoint in the original's on-disk layout from known arrays, converts it to
our TrainState pieces, takes one Adamax update with a known gradient and compares with the update the
stored moments imply.
"""
import functools

import jax
import numpy as np
import pytest
import torch

from efficient_vdvae_core import flax_msgpack
from efficient_vdvae_core.original_checkpoints import OriginalCheckpointError
from efficient_vdvae_core.params import jax_params_to_torch_state_dict, torch_state_dict_to_jax
from efficient_vdvae_jax.model.autoencoder import build_model
from efficient_vdvae_jax.utils.optim import apply_update, build_direction, decay_mask
from efficient_vdvae_jax.utils.original import adamax_state, param_trees, read_original_checkpoint
from efficient_vdvae_jax.utils.state import split_model
from tests.conftest import egs_config
from tests.original_files import adamax_update, random_arrays, write_original_jax, write_original_torch

LR = 3e-3


@pytest.fixture(scope="module")
def tiny():
    config = egs_config("tiny")
    abstract = jax.eval_shape(lambda: split_model(build_model(config))[1])
    shapes = {name: tuple(a.shape) for name, a in jax_params_to_torch_state_dict(
        jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract)).items()}
    rng = np.random.default_rng(9)
    arrays = {"params": random_arrays(shapes, rng), "ema": random_arrays(shapes, rng),
              "m": random_arrays(shapes, rng, -0.1, 0.1), "u": random_arrays(shapes, rng, 1e-3, 0.2),
              "g": random_arrays(shapes, rng)}
    return config, abstract, arrays


@functools.cache
def train_update(opt_cfg):
    """jit of one Adamax update as training applies it (no weight decay), compiled once for all tests."""
    tx = build_direction(opt_cfg)

    def update(params, grads, state):
        direction, new_state = tx.update(grads, state)
        return apply_update(params, direction, LR, decay_mask(params), 0.0), new_state
    return jax.jit(update)


def assert_one_update_matches(config, abstract, checkpoint, arrays, count):
    params, ema = param_trees(checkpoint)
    assert jax.tree.structure(params) == jax.tree.structure(abstract) == jax.tree.structure(ema)
    state = adamax_state(checkpoint, params)
    assert int(state.count) == count
    updated, new_state = train_update(config.optimizer)(params, torch_state_dict_to_jax(arrays["g"]), state)
    got = {key: jax_params_to_torch_state_dict(jax.tree.map(np.asarray, tree))
           for key, tree in (("theta", updated), ("m", new_state.mu), ("u", new_state.nu))}
    opt = config.optimizer
    for name in arrays["params"]:
        theta, m, u = adamax_update(arrays["params"][name], arrays["m"][name], arrays["u"][name], arrays["g"][name],
                                    lr=LR, count=count, beta1=opt.beta1, beta2=opt.beta2, eps=opt.epsilon)
        np.testing.assert_allclose(got["theta"][name], theta, rtol=2e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(got["m"][name], m, rtol=2e-6, atol=5e-8, err_msg=name)
        np.testing.assert_allclose(got["u"][name], u, rtol=2e-6, atol=5e-8, err_msg=name)
    assert int(new_state.count) == count + 1


def test_jax_original_resumes_with_its_optax_adamax_state(tiny, tmp_path):
    config, abstract, arrays = tiny
    path = tmp_path / "checkpoint_40"
    write_original_jax(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=40, step=40,
                       num_mixtures=config.model.num_output_mixtures, channels=config.data.channels)
    checkpoint = read_original_checkpoint(path)
    assert (checkpoint.framework, checkpoint.iteration_step, checkpoint.optimizer_count) == ("jax", 40, 40)
    assert_one_update_matches(config, abstract, checkpoint, arrays, count=40)


def test_pytorch_original_resumes_in_jax_with_its_stacked_adamax_state(tiny, tmp_path):
    config, abstract, arrays = tiny
    path = tmp_path / "checkpoints-tiny"
    write_original_torch(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=4, global_step=5,
                         lr=LR)
    checkpoint = read_original_checkpoint(path)
    assert (checkpoint.framework, checkpoint.iteration_step, checkpoint.optimizer_count) == ("pytorch", 6, 4)
    assert_one_update_matches(config, abstract, checkpoint, arrays, count=4)


def test_moments_that_do_not_fit_the_model_are_refused(tiny, tmp_path):
    config, abstract, arrays = tiny
    path = tmp_path / "checkpoint_2"
    write_original_jax(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=2, step=2,
                       num_mixtures=config.model.num_output_mixtures, channels=config.data.channels)
    checkpoint = read_original_checkpoint(path)
    params = param_trees(checkpoint)[0]
    smaller = dict(params, top_down={k: v for k, v in params["top_down"].items() if k != "trainable_h"})
    with pytest.raises(OriginalCheckpointError, match="Adamax mu does not match"):
        adamax_state(checkpoint, smaller)
    fresh = adamax_state(checkpoint.__class__(**{**checkpoint.__dict__, "exp_avg": None, "exp_inf": None}), params)
    assert int(fresh.count) == 0 and not any(np.any(np.asarray(v)) for v in jax.tree.leaves(fresh.mu))


def test_msgpack_reader_matches_flax(tmp_path, monkeypatch):
    """The NumPy-only reader restores what flax wrote: arrays, NumPy scalars, empty states, chunked arrays."""
    from flax import serialization
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 64)  # chunk arrays over 64 bytes, as flax does above 1 GiB
    tree = {"a": np.arange(40, dtype=np.float32).reshape(2, 4, 5), "n": {"count": np.int32(7), "e": {}},
            "f": np.float32(0.5), "i": 3, "s": "x", "c": complex(1, 2), "h": np.asarray(2, np.int64)}
    data = serialization.msgpack_serialize(tree)
    ours, theirs = flax_msgpack.restore(data), serialization.msgpack_restore(data)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert type(a) is type(b) and np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype
    assert ours["a"].shape == (2, 4, 5) and ours["n"]["e"] == {}
    with pytest.raises(flax_msgpack.FlaxMsgpackError, match="not msgpack data"):
        flax_msgpack.restore(b"\x81\xa1a")
    with pytest.raises(flax_msgpack.FlaxMsgpackError, match="not a state tree"):
        flax_msgpack.restore(serialization.msgpack_serialize([1, 2]))
    torch.save({"x": 1}, tmp_path / "t.pt")
    with pytest.raises(flax_msgpack.FlaxMsgpackError):
        flax_msgpack.restore((tmp_path / "t.pt").read_bytes())
