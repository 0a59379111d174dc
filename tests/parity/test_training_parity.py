"""PyTorch vs JAX training: the same optimizer maths, decay mask and schedules, and three full steps.

The full-step test starts both frameworks from the same weights (converted), feeds the same batches and
the same posterior noise (the eps torch draws for (seed, step), transposed) and compares the parameters
after three optimizer steps: all parameters together agree to RTOL (norm of the difference over the
norm). A single tensor can differ more (TENSOR_RTOL): the two frameworks' gradients agree to float32
rounding (~3e-5 of a tensor's largest gradient), and Adamax turns a gradient g at that noise floor,
|g| ~ eps = 1e-8, into an O(1) step g / (|g| + eps), e.g. for the per-position unpool biases.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental.compilation_cache import compilation_cache as xla_cache

from efficient_vdvae_core.schedules import gamma_active, kl_beta, learning_rate
from efficient_vdvae_core.params import torch_state_dict_to_jax
from efficient_vdvae_jax.utils import optim as jax_optim
from efficient_vdvae_torch.utils import optim as torch_optim
from tests.conftest import egs_config

START_STEP = 20  # warm-up over (lr 1e-3), linear beta ramping, gamma balancing active
RTOL = 1e-4  # all parameters together
TENSOR_RTOL = 1e-3  # any single tensor


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache for this module (both full-step cases compile the same program)."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    for name, value in zip(names, (str(tmp_path_factory.getbasetemp() / "jax_cache_in_process"), 0, 0)):
        jax.config.update(name, value)
    xla_cache.reset_cache()  # the cache is set up at the first compilation: again, with this folder
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    xla_cache.reset_cache()


@pytest.mark.parametrize("kind", ["Adamax", "Adam", "RAdam"])
def test_optimizer_steps_match_torch(kind):
    """40 steps with gradients from 1e-9 to 10 and a changing lr, decay on one tensor: torch's update exactly."""
    rng = np.random.default_rng(0)
    shapes = {"kernel": (3, 4), "bias": (5,)}
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    torch_params = [torch.nn.Parameter(torch.from_numpy(start[k].copy())) for k in shapes]
    opt_cls = {"Adamax": torch.optim.Adamax, "Adam": torch.optim.Adam, "RAdam": torch.optim.RAdam}[kind]
    torch_opt = opt_cls(torch_params, lr=0.0, betas=(0.9, 0.999), eps=1e-8)
    cfg = dataclasses.replace(egs_config("tiny").optimizer, type=kind)
    tx = jax_optim.build_direction(cfg)
    params = {k: jnp.asarray(v) for k, v in start.items()}
    state = tx.init(params)
    mask = {"kernel": True, "bias": False}
    for i in range(40):
        grads = {k: (rng.standard_normal(s) * 10.0 ** rng.uniform(-9, 1)).astype(np.float32) for k, s in shapes.items()}
        lr = 1e-2 * (i + 1) / 40
        for p, k in zip(torch_params, shapes):
            p.grad = torch.from_numpy(grads[k].copy())
        torch_optim.set_learning_rate(torch_opt, lr)
        torch_optim.apply_weight_decay([torch_params[0]], lr, 0.1)
        torch_opt.step()
        direction, state = tx.update({k: jnp.asarray(v) for k, v in grads.items()}, state)
        params = jax_optim.apply_update(params, direction, np.float32(lr), mask, 0.1)
    for p, k in zip(torch_params, shapes):
        np.testing.assert_allclose(np.asarray(params[k]), p.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=k)


def test_weight_decay_mask_matches_torch():
    from efficient_vdvae_torch.model.autoencoder import build_model
    assert jax_optim.NO_DECAY_SUBSTRINGS == torch_optim.NO_DECAY_SUBSTRINGS
    model = build_model(egs_config("tiny"))
    decayed_torch = {n for n, p in model.named_parameters() if torch_optim.decays(n)}
    params = torch_state_dict_to_jax({k: v.detach().numpy() for k, v in model.state_dict().items()})
    flat = jax.tree_util.tree_flatten_with_path(jax_optim.decay_mask(params))[0]
    decayed_jax = {jax_optim.path_name(p).replace(".kernel", ".weight") for p, decayed in flat if decayed}
    assert decayed_jax == decayed_torch and 0 < len(decayed_torch) < len(list(model.parameters()))


def _relative_error(a, b):
    """||a - b|| / ||b||."""
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


CASES = {"adamax_weight_decay": ["loss.use_weight_decay=True", "loss.l2_weight=0.01"],
         "adamax_clipping": ["optimizer.clip_gradient_norm=True", "optimizer.gradient_clip_norm_value=0.1"]}


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_match_torch(case, compilation_cache):
    from efficient_vdvae_core.schedules import step_values
    from efficient_vdvae_core.training.backend import Dist
    from efficient_vdvae_jax.data.loaders import TrainStream
    from efficient_vdvae_jax.trainer import JaxTrainer, traced_values
    from efficient_vdvae_jax.utils.distributed import make_mesh
    from efficient_vdvae_torch.backend import TorchDist
    from efficient_vdvae_torch.trainer import TorchTrainer, train_noise

    config = egs_config("tiny", "train.batch_size=8", *CASES[case])
    cpu = torch.device("cpu")
    quiet = (lambda *a, **k: None)
    torch_trainer = TorchTrainer(config, TorchDist(process_index=0, n_processes=1, n_shards=1, description="cpu",
                                                   device=cpu), log=quiet)
    jax_trainer = JaxTrainer(config, Dist(process_index=0, n_processes=1, n_shards=1, description="cpu"), log=quiet,
                             mesh=make_mesh(jax.devices()[:1]))

    def jax_tree(state_dict):
        return torch_state_dict_to_jax({k: v.detach().numpy() for k, v in state_dict.items()})

    weights = jax_tree(torch_trainer.model.state_dict())
    jax_trainer._set_weights(weights, weights)
    stream = TrainStream(config, start_step=START_STEP)
    for step in range(START_STEP, START_STEP + 3):
        images = stream.load(step)
        values = step_values(step, config)
        noise = train_noise(torch_trainer.arch, 8, 0, 1, config.run.seed, step, cpu)
        torch_out = torch_trainer.train_step(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), values)
        jax_out = jax_trainer.train_step(images, values,
                                         noise=[jnp.asarray(n.numpy().transpose(0, 2, 3, 1)) for n in noise])
        # the schedules are the core's functions of the step, evaluated on the host and used by both steps
        traced = traced_values(values)
        assert traced["lr"] == pytest.approx(learning_rate(step, config.optimizer), rel=1e-7)
        assert values.learning_rate == learning_rate(step, config.optimizer)
        assert traced["beta"] == pytest.approx(kl_beta(step, config.loss), rel=1e-7)
        assert values.kl_beta == kl_beta(step, config.loss)
        assert bool(traced["gamma_on"]) == values.gamma_on == gamma_active(step, config.loss) is True
        nelbo = (lambda out: out.recon_nats_per_dim + out.kl_nats_per_dim)
        assert nelbo(jax_out) == pytest.approx(nelbo(torch_out), rel=1e-5), "nelbo"
        assert jax_out.kl_nats_per_dim == pytest.approx(torch_out.kl_nats_per_dim, rel=1e-5), "kl"
        assert jax_out.grad_norm == pytest.approx(torch_out.grad_norm, rel=1e-5), "grad_norm"
        np.testing.assert_allclose(jax_out.kl_per_layer_bits, torch_out.kl_per_layer_bits, rtol=1e-5, atol=1e-9)
        assert jax_out.skipped is torch_out.skipped is False
    if config.optimizer.clip_gradient_norm:
        assert torch_out.grad_norm > 2 * config.optimizer.gradient_clip_norm_value
    expected = {"params": jax_tree(torch_trainer.model.state_dict()),
                "ema": jax_tree(torch_trainer.ema.state_dict(torch_trainer.model))}
    for what in ("params", "ema"):
        got = jax.tree.map(np.asarray, jax_trainer.train_state[what])
        flat = jax.tree_util.tree_flatten_with_path(expected[what])[0]
        assert len(flat) == len(jax.tree.leaves(got))
        for (path, want), have in zip(flat, jax.tree.leaves(got)):
            error = _relative_error(have, want)
            assert error <= TENSOR_RTOL, f"{what} {jax_optim.path_name(path)}: relative error {error:.2e}"
        overall = _relative_error(np.concatenate([x.ravel() for x in jax.tree.leaves(got)]),
                                  np.concatenate([x.ravel() for _, x in flat]))
        assert overall <= RTOL, f"{what}: relative error {overall:.2e}"
    moved = [_relative_error(a, b) for a, b in zip(jax.tree.leaves(expected["params"]), jax.tree.leaves(weights))]
    assert max(moved) > 100 * RTOL  # the three updates changed the weights well beyond the tolerance
    jax_trainer.close()
