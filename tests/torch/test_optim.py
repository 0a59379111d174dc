"""Optimizer maths: Adamax formula, decoupled weight decay and its mask, clipping, skipping, EMA."""
import math

import torch

from efficient_vdvae_torch.utils.optim import (EMA, apply_weight_decay, build_optimizer, clip_gradients, decays,
                                               gradient_norm, set_learning_rate, should_skip)
from tests.conftest import egs_config


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))


def test_adamax_two_steps_match_the_formula():
    opt_cfg = egs_config("tiny").optimizer
    model = _Tiny()
    opt = build_optimizer(model, opt_cfg)
    b1, b2, eps = opt_cfg.beta1, opt_cfg.beta2, opt_cfg.epsilon
    theta, m, u = model.w.detach().clone(), torch.zeros(3), torch.zeros(3)
    for t, (lr, g) in enumerate([(0.0, [0.5, -1.0, 2.0]), (0.1, [-0.25, 0.5, 4.0])], start=1):
        g = torch.tensor(g)
        model.w.grad = g.clone()
        set_learning_rate(opt, lr)
        opt.step()
        m = b1 * m + (1 - b1) * g
        u = torch.maximum(b2 * u, g.abs() + eps)
        theta = theta - lr * m / ((1 - b1 ** t) * u)
        torch.testing.assert_close(model.w.detach(), theta, rtol=1e-6, atol=1e-7)
    state = opt.state[model.w]
    torch.testing.assert_close(state["exp_avg"], m)
    torch.testing.assert_close(state["exp_inf"], u)


def test_weight_decay_mask_and_decoupled_decay():
    assert decays("top_down.levels_down_upsample.3.residual_block.0.convs.3.weight")
    assert decays("bottom_up.levels_up_downsample.11.pool.ops.0.weight")
    for name in ["top_down.trainable_h", "bottom_up.input_conv.weight", "top_down.output_conv.weight",
                 "top_down.levels_down.15.0.z_projection.weight", "top_down.levels_down_upsample.3.unpool.scale_bias",
                 "top_down.levels_down_upsample.0.prior_layer.projection.weight",
                 "bottom_up.levels_up_downsample.0.skip_projection.weight", "x.convs.1.bias"]:
        assert not decays(name), name
    p = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
    apply_weight_decay([p], lr=0.1, l2_weight=0.5)
    torch.testing.assert_close(p.detach(), torch.tensor([2.0, -4.0]) * (1 - 0.05))


def test_clip_and_skip_rules():
    model = _Tiny()
    model.w.grad = torch.tensor([3.0, 4.0, 0.0])
    params = list(model.parameters())
    norm = gradient_norm(params)
    assert float(norm) == 5.0
    clip_gradients(params, 1.0, norm)
    torch.testing.assert_close(model.w.grad, torch.tensor([3.0, 4.0, 0.0]) / (5.0 + 1e-6))
    opt_cfg = egs_config("tiny").optimizer
    threshold = opt_cfg.gradient_skip_threshold
    assert should_skip(float("nan"), opt_cfg) and should_skip(math.inf, opt_cfg) and should_skip(threshold, opt_cfg)
    assert not should_skip(threshold * 0.99, opt_cfg)
    no_skip = egs_config("tiny", "optimizer.gradient_skip=False").optimizer
    assert should_skip(math.inf, no_skip) and not should_skip(threshold * 10, no_skip)  # non-finite: always skipped


def test_ema_update_and_state_dict():
    model = _Tiny()
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.w.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.params[0], torch.tensor([1.0, -2.0, 3.0]) * 0.9 + torch.tensor([2.0, -1.0, 4.0]) * 0.1)
    assert set(ema.state_dict(model)) == {"w"}
