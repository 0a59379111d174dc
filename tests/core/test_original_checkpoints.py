"""Reading the original code's checkpoints without a framework: file kinds, the JAX checkpoint files, counters."""
import numpy as np
import pytest

from efficient_vdvae_core.original_checkpoints import (OriginalCheckpointError, file_kind, original_jax_files,
                                                       parse_original_jax, parse_original_torch)


def test_file_kind_tells_torch_archives_from_msgpack(tmp_path):
    (tmp_path / "a").write_bytes(b"PK\x03\x04rest")
    (tmp_path / "b").write_bytes(b"\x85\xa4step")
    (tmp_path / "c").write_bytes(b"hello")
    assert [file_kind(tmp_path / n) for n in "abc"] == ["torch", "msgpack", None]
    assert file_kind(tmp_path / "missing") is None and file_kind(tmp_path) is None


def test_original_jax_files_lists_files_not_our_folders(tmp_path):
    for name in ("checkpoint_10", "checkpoint_9", "checkpoint_tmp", "checkpoint_3.pt"):
        (tmp_path / name).write_bytes(b"\x80")
    (tmp_path / "checkpoint_20").mkdir()  # one of our Orbax checkpoints
    assert original_jax_files(tmp_path) == [(9, tmp_path / "checkpoint_9"), (10, tmp_path / "checkpoint_10")]
    assert original_jax_files(tmp_path / "absent") == []


def _torch_state(count):
    params = {"a.weight": np.ones((2, 3), np.float32), "a.bias": np.zeros(2, np.float32),
              "b.bias": np.full(2, 3.0, np.float32)}
    state = {i: {"step": count, "exp_avg": np.full(v.shape, i, np.float32), "exp_inf": np.full(v.shape, i + 1.0)}
             for i, v in enumerate(params.values())}
    groups = [{"lr": 0.1, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.0, "params": [0, 1, 2]}]
    return {"global_step": 41, "model_state_dict": params, "ema_model_state_dict": None,
            "optimizer_state_dict": {"state": state, "param_groups": groups}}


def test_pytorch_original_counters_and_moments_by_parameter_order():
    checkpoint = parse_original_torch(_torch_state(count=39), "ckpt")
    assert (checkpoint.iteration_step, checkpoint.optimizer_count, checkpoint.ema) == (42, 39, None)
    assert checkpoint.adamax_settings == {"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-7}
    assert [float(checkpoint.exp_avg[n].flat[0]) for n in ("a.weight", "a.bias", "b.bias")] == [0.0, 1.0, 2.0]
    assert checkpoint.exp_inf["b.bias"].dtype == np.float32


def test_bad_original_files_are_refused_with_the_file_named():
    state = _torch_state(count=1)
    state["optimizer_state_dict"]["param_groups"][0]["params"] = [0, 1]
    with pytest.raises(OriginalCheckpointError, match="ckpt: its optimizer state has 2 parameters, its model 3"):
        parse_original_torch(state, "ckpt")
    state = _torch_state(count=1)
    state["optimizer_state_dict"]["state"][1]["exp_avg"] = np.zeros(5, np.float32)
    with pytest.raises(OriginalCheckpointError, match="exp_avg of a.bias has shape"):
        parse_original_torch(state, "ckpt")
    state = _torch_state(count=1)
    del state["optimizer_state_dict"]["param_groups"][0]["betas"]
    with pytest.raises(OriginalCheckpointError, match="ckpt: malformed optimizer_state_dict .KeyError: 'betas'"):
        parse_original_torch(state, "ckpt")
    with pytest.raises(OriginalCheckpointError, match="no 'global_step'"):
        parse_original_torch({"model_state_dict": {}}, "ckpt")
    with pytest.raises(OriginalCheckpointError, match="no 'opt_state'"):
        parse_original_jax({"step": 1, "params": {}}, "ckpt")
    tree = {"top_down": {"trainable_h": np.zeros((1, 2, 2, 4), np.float32)}}
    with pytest.raises(OriginalCheckpointError, match="no Adamax state"):
        parse_original_jax({"step": 1, "params": tree, "opt_state": {"1": {"count": 1}}}, "ckpt")
    weights_only = parse_original_jax({"step": 1, "params": tree, "opt_state": {"0": {"count": 1}}}, "ckpt")
    assert weights_only.exp_avg is None and weights_only.optimizer_count == 0 and weights_only.iteration_step == 1
    with pytest.raises(OriginalCheckpointError, match="unknown parameter path"):
        parse_original_jax({"step": 1, "params": {"x": np.zeros(1)}, "opt_state": {}}, "ckpt")
