"""The original code's checkpoints (both frameworks) resumed here: weights, EMA, the stored Adamax moments and counters.

Each test writes a small checkpoint in the original's on-disk layout from known arrays, converts it,
takes one Adamax update with a known gradient and compares with the update the stored moments imply.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from efficient_vdvae_core.original_checkpoints import OriginalCheckpointError, check_adamax
from efficient_vdvae_torch.model.autoencoder import build_model
from efficient_vdvae_torch.utils.optim import build_optimizer, set_learning_rate
from efficient_vdvae_torch.utils.original import adamax_state_dict, model_state_dicts, read_original_checkpoint
from tests.conftest import REPO, egs_config
from tests.original_files import (adamax_update, random_arrays, registration_order, write_original_jax,
                                  write_original_torch)

LR = 3e-3


@pytest.fixture(scope="module")
def tiny():
    config = egs_config("tiny")
    torch.manual_seed(0)
    model = build_model(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    rng = np.random.default_rng(5)
    arrays = {"params": random_arrays(shapes, rng), "ema": random_arrays(shapes, rng),
              "m": random_arrays(shapes, rng, -0.1, 0.1), "u": random_arrays(shapes, rng, 1e-3, 0.2),
              "g": random_arrays(shapes, rng)}
    return config, model, arrays


def resume(config, model, checkpoint):
    """Model weights and Adamax state of `checkpoint` loaded as a resumed run loads them."""
    params, ema = model_state_dicts(checkpoint)
    model.load_state_dict(params, strict=True)
    build_model(config).load_state_dict(ema, strict=True)
    optimizer = build_optimizer(model, config.optimizer)
    optimizer.load_state_dict(adamax_state_dict(optimizer, model, checkpoint))
    return optimizer


def assert_one_update_matches(config, model, optimizer, arrays, count):
    opt = config.optimizer
    for name, p in model.named_parameters():
        p.grad = torch.from_numpy(arrays["g"][name]).clone()
    set_learning_rate(optimizer, LR)
    optimizer.step()
    for name, p in model.named_parameters():
        theta, m, u = adamax_update(arrays["params"][name], arrays["m"][name], arrays["u"][name], arrays["g"][name],
                                    lr=LR, count=count, beta1=opt.beta1, beta2=opt.beta2, eps=opt.epsilon)
        np.testing.assert_allclose(p.detach().numpy(), theta, rtol=2e-6, atol=1e-7, err_msg=name)
        state = optimizer.state[p]
        np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=2e-6, atol=5e-8, err_msg=name)
        np.testing.assert_allclose(state["exp_inf"].numpy(), u, rtol=2e-6, atol=5e-8, err_msg=name)
        assert float(state["step"]) == count + 1


def test_pytorch_original_resumes_with_its_stacked_adamax_state(tiny, tmp_path):
    config, model, arrays = tiny
    path = tmp_path / "checkpoints-tiny"
    write_original_torch(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=7, global_step=9,
                         lr=LR, betas=(config.optimizer.beta1, config.optimizer.beta2), eps=config.optimizer.epsilon)
    stored = torch.load(path, weights_only=True)["optimizer_state_dict"]["state"]
    names = sorted(arrays["params"], key=registration_order)
    same_shape = [i for i, n in enumerate(names) if arrays["params"][n].shape == arrays["params"][names[1]].shape]
    assert len(same_shape) > 2  # rows of one stacked storage, as the original leaves them
    assert len({stored[i]["exp_avg"].untyped_storage().data_ptr() for i in same_shape}) == 1

    checkpoint = read_original_checkpoint(path)
    assert (checkpoint.framework, checkpoint.iteration_step, checkpoint.optimizer_count) == ("pytorch", 10, 7)
    assert checkpoint.adamax_settings == {"beta1": config.optimizer.beta1, "beta2": config.optimizer.beta2,
                                          "epsilon": config.optimizer.epsilon}
    for name in names:
        np.testing.assert_array_equal(checkpoint.exp_inf[name], arrays["u"][name])
        np.testing.assert_array_equal(checkpoint.ema[name], arrays["ema"][name])
    assert_one_update_matches(config, model, resume(config, model, checkpoint), arrays, count=7)


def test_jax_original_resumes_in_pytorch_with_its_optax_state(tiny, tmp_path):
    config, model, arrays = tiny
    path = tmp_path / "checkpoint_12"
    write_original_jax(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=12, step=12,
                       num_mixtures=config.model.num_output_mixtures, channels=config.data.channels)
    checkpoint = read_original_checkpoint(path)
    assert (checkpoint.framework, checkpoint.iteration_step, checkpoint.optimizer_count) == ("jax", 12, 12)
    assert checkpoint.ema_decay == pytest.approx(0.9999)
    for name in arrays["params"]:  # names, layouts and the MoL channel order are ours again
        np.testing.assert_array_equal(checkpoint.params[name], arrays["params"][name])
        np.testing.assert_array_equal(checkpoint.exp_avg[name], arrays["m"][name])
    assert_one_update_matches(config, model, resume(config, model, checkpoint), arrays, count=12)


def test_original_without_optimizer_state_gives_a_fresh_adamax(tiny, tmp_path):
    config, model, arrays = tiny
    path = tmp_path / "checkpoints-tiny"
    write_original_torch(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=1, global_step=0,
                         lr=0.0)
    state = torch.load(path, weights_only=True)
    state["optimizer_state_dict"]["state"] = {}  # the first update was skipped
    torch.save(state, path)
    checkpoint = read_original_checkpoint(path)
    assert (checkpoint.iteration_step, checkpoint.optimizer_count, checkpoint.exp_avg) == (1, 0, None)
    optimizer = build_optimizer(model, config.optimizer)
    assert adamax_state_dict(optimizer, model, checkpoint)["state"] == {}


def test_unconvertible_optimizer_states_are_refused_in_one_line(tiny, tmp_path):
    config, model, arrays = tiny
    path = tmp_path / "checkpoints-tiny"
    write_original_torch(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=3, global_step=2,
                         lr=LR)
    state = torch.load(path, weights_only=True)
    for entry in state["optimizer_state_dict"]["state"].values():
        entry["exp_avg_sq"] = entry.pop("exp_inf")  # an Adam state
    torch.save(state, path)
    with pytest.raises(OriginalCheckpointError, match="not the Adamax moments") as info:
        read_original_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)

    write_original_torch(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=3, global_step=2,
                         lr=LR)
    checkpoint = read_original_checkpoint(path)
    with pytest.raises(OriginalCheckpointError, match="type = 'Adamax'"):
        check_adamax(checkpoint, egs_config("tiny", "optimizer.type='Adam'").optimizer)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(OriginalCheckpointError, match="Adamax"):
        adamax_state_dict(adam, model, checkpoint)


def test_a_checkpoint_of_this_code_is_not_taken_for_an_original(tmp_path):
    path = tmp_path / "checkpoint_3.pt"
    torch.save({"model_state_dict": {}, "step": 3, "format_version": 1}, path)
    with pytest.raises(OriginalCheckpointError, match="not of the original code"):
        read_original_checkpoint(path)
    (tmp_path / "junk").write_bytes(b"\x81\xa4step\xc1")  # msgpack with an invalid byte
    with pytest.raises(OriginalCheckpointError, match="not a checkpoint of the original JAX code"):
        read_original_checkpoint(tmp_path / "junk")


def test_a_pytorch_only_install_reads_the_jax_original(tiny, tmp_path):
    """No JAX or flax needed to read a JAX original (the published CIFAR-10 model exists only as one)."""
    config, _, arrays = tiny
    path = tmp_path / "checkpoint_5"
    write_original_jax(path, arrays["params"], arrays["ema"], arrays["m"], arrays["u"], count=5, step=5,
                       num_mixtures=config.model.num_output_mixtures, channels=config.data.channels)
    script = textwrap.dedent("""
        import sys
        sys.modules["jax"] = sys.modules["flax"] = None  # importing either now fails
        from efficient_vdvae_torch.utils.original import read_original_checkpoint
        c = read_original_checkpoint(sys.argv[1])
        print(c.framework, c.iteration_step, c.optimizer_count, len(c.exp_avg))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["jax", "5", "5", str(len(arrays["params"]))]
