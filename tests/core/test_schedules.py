"""LR / beta / gamma schedules, temperatures and variate masks against hand-computed values."""
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import LossConfig, OptimizerConfig, load_config
from efficient_vdvae_core.masks import kept_count, variate_masks
from efficient_vdvae_core.schedules import gamma_active, inference_step, kl_beta, learning_rate
from efficient_vdvae_core.temperatures import layer_temperatures, level_temperatures

EGS = Path(__file__).resolve().parents[2] / "egs"


def optimizer(**values):
    base = dict(type="Adamax", learning_rate_scheme="cosine", learning_rate=1e-3, warmup_steps=10.0, decay_steps=200,
                decay_start=50, min_learning_rate=2e-4, decay_rate=0.5, beta1=0.9, beta2=0.999, epsilon=1e-8,
                clip_gradient_norm=False, gradient_clip_norm_value=300.0, gradient_skip=True,
                gradient_skip_threshold=800.0)
    return OptimizerConfig(**{**base, **values})


def loss_config(**values):
    """The cifar10_baseline loss section (defaults of the original), with replacements."""
    base = dict(min_mol_logscale=-250.0, variation_schedule="Linear", vae_beta_anneal_start=21,
                vae_beta_anneal_steps=5000, vae_beta_min=1e-4, vae_beta_activation_steps=10000,
                vae_beta_growth_rate=1e-5, use_gamma_schedule=True, gamma_max_steps=10000, scaled_gamma=True,
                use_weight_decay=True, l2_weight=1e-2)
    return LossConfig(**{**base, **values})


# ---------------------------------------------------------------- learning rate

def test_constant_lr():
    opt = optimizer(learning_rate_scheme="constant")
    assert [learning_rate(t, opt) for t in (0, 5, 10, 1000)] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3], rel=1e-12)
    no_warmup = optimizer(learning_rate_scheme="constant", warmup_steps=0.0)
    assert learning_rate(0, no_warmup) == 1e-3 and learning_rate(7, no_warmup) == 1e-3


def test_noam_lr():
    opt = optimizer(learning_rate_scheme="noam", warmup_steps=100.0)
    # lr0 * sqrt(100) * min(t^-1/2, t * 100^-3/2)
    assert learning_rate(0, opt) == 0.0
    assert learning_rate(25, opt) == pytest.approx(1e-3 * 10 * 25 / 1000, rel=1e-12)
    assert learning_rate(100, opt) == pytest.approx(1e-3, rel=1e-12)
    assert learning_rate(400, opt) == pytest.approx(1e-3 * 10 / 20, rel=1e-12)
    with pytest.raises(ValueError, match="warmup"):
        learning_rate(1, optimizer(learning_rate_scheme="noam", warmup_steps=0.0))


def test_cosine_lr_closed_form():
    # warmup 10, decay_start 50, decay_steps 200, lr0 1e-3, min 2e-4:
    # lr = 2e-4 + 8e-4 * (1 + cos(pi * min(t - 50, 200) / 200)) / 2 from t = 50 on.
    opt = optimizer()
    expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 49: 1e-3, 50: 1e-3,
                100: 2e-4 + 8e-4 * (1 + math.sqrt(0.5)) / 2,  # 8.828427e-4
                150: 6e-4,
                200: 2e-4 + 8e-4 * (1 - math.sqrt(0.5)) / 2,  # 3.171573e-4
                250: 2e-4, 300: 2e-4, 10 ** 6: 2e-4}
    for t, lr in expected.items():
        assert learning_rate(t, opt) == pytest.approx(lr, rel=1e-12, abs=1e-18), t
    assert learning_rate(100, opt) == pytest.approx(8.828427e-4, rel=1e-6)


def test_exponential_lr():
    opt = optimizer(learning_rate_scheme="exponential", decay_steps=100, min_learning_rate=1e-4)
    expected = {0: 0.0, 5: 5e-4, 30: 1e-3, 50: 1e-3, 150: 5e-4, 250: 2.5e-4, 350: 1.25e-4, 400: 1e-4, 10 ** 5: 1e-4}
    for t, lr in expected.items():
        assert learning_rate(t, opt) == pytest.approx(lr, rel=1e-12), t


def test_unknown_scheme_and_negative_step():
    with pytest.raises(ValueError):
        learning_rate(0, optimizer(learning_rate_scheme="triangular"))
    with pytest.raises(ValueError):
        learning_rate(-1, optimizer())


# ---------------------------------------------------------------- beta and gamma

def test_linear_beta_with_the_denominator_quirk():
    cfg = loss_config()
    assert kl_beta(0, cfg) == 1e-4
    assert kl_beta(21, cfg) == 1e-4
    assert kl_beta(2521, cfg) == pytest.approx(2500 / 5021, rel=1e-12)
    assert kl_beta(2521, cfg) == pytest.approx(0.4979, abs=1e-4)
    assert kl_beta(5041, cfg) < 1.0
    assert kl_beta(5042, cfg) == 1.0
    assert kl_beta(10 ** 6, cfg) == 1.0
    assert kl_beta(3, loss_config(vae_beta_anneal_start=0, vae_beta_anneal_steps=0)) == 1.0


def test_logistic_and_none_beta():
    cfg = loss_config(variation_schedule="Logistic")
    assert kl_beta(0, cfg) == pytest.approx(1 / (1 + math.exp(0.1)), rel=1e-12)  # 0.4750
    assert kl_beta(10000, cfg) == 0.5
    assert kl_beta(100000, cfg) == pytest.approx(0.7109495, rel=1e-6)
    steep = loss_config(variation_schedule="Logistic", vae_beta_growth_rate=10.0)
    assert kl_beta(0, steep) == pytest.approx(0.0, abs=1e-300) and kl_beta(10 ** 6, steep) == 1.0
    assert kl_beta(0, loss_config(variation_schedule="None")) == 1.0


def test_gamma_active_and_inference_step():
    cfg = loss_config()
    assert gamma_active(0, cfg) and gamma_active(10000, cfg) and not gamma_active(10001, cfg)
    assert not gamma_active(0, loss_config(use_gamma_schedule=False))
    assert inference_step(cfg) == 100000  # 10 * max(anneal_steps, gamma_max_steps), as the original
    for edge in (loss_config(vae_beta_anneal_steps=0, gamma_max_steps=0),
                 loss_config(vae_beta_anneal_start=10 ** 6, vae_beta_anneal_steps=10)):
        assert kl_beta(inference_step(edge), edge) == 1.0 and not gamma_active(inference_step(edge), edge)


# ---------------------------------------------------------------- temperatures

def test_level_temperatures():
    assert level_temperatures(0.8, 3) == [0.8, 0.8, 0.8]
    assert level_temperatures(1, 2) == [1.0, 1.0]  # ints are valid (the original rejected them)
    assert level_temperatures(("linear", 0.7, 0.9), 4) == pytest.approx([0.7, 0.75, 0.8, 0.85], rel=1e-12)
    assert level_temperatures(("linear", 1.0, 0.8), 4) == pytest.approx([1.0, 0.95, 0.9, 0.85], rel=1e-12)
    assert level_temperatures([0.5, 1, 0.25], 3) == [0.5, 1.0, 0.25]
    assert level_temperatures((0.5, 0.6), 2) == [0.5, 0.6]
    with pytest.raises(ValueError, match="needs 3 entries"):
        level_temperatures([0.5, 0.6], 3)
    for bad in (("cubic", 0.1, 0.2), ("linear", 0.1), True, -0.5, "0.8", [0.5, "x"]):
        with pytest.raises(ValueError):
            level_temperatures(bad, 2)


def test_layer_temperatures_follow_levels():
    cfg = load_config(EGS / "cifar10_baseline.cfg")[0]
    arch = build_architecture(cfg.model, cfg.data)
    assert arch.n_levels == 33 and arch.n_latent_layers == 47
    per_level = [0.5 + 0.01 * i for i in range(33)]
    per_layer = layer_temperatures(per_level, arch)
    assert len(per_layer) == 47
    for block in arch.latent_layers:
        assert per_layer[block.layer] == per_level[block.level]
    assert per_layer[15:20] == [per_level[15]] * 5  # level 15: upsample block + 4 extra blocks
    assert layer_temperatures(0.9, arch) == [0.9] * 47
    with pytest.raises(ValueError):
        layer_temperatures([1.0] * 47, arch)


# ---------------------------------------------------------------- variate masks

def test_variate_masks_quantile_semantics():
    stats = np.arange(10, dtype=np.float32).reshape(2, 5)
    masks = variate_masks(stats, 0.3)  # threshold = quantile 0.7 = 6.3 -> keeps 7, 8, 9
    assert masks.dtype == bool and masks.shape == (2, 5)
    assert masks.tolist() == [[False] * 5, [False, False, True, True, True]]
    assert kept_count(masks) == 3
    assert kept_count(variate_masks(stats, 0.5)) == 5  # threshold 4.5 -> 5..9
    assert not variate_masks(np.full((2, 3), 2.0), 0.5).any()  # strict: ties with the threshold are dropped


def test_variate_masks_quantile_one_keeps_everything():
    stats = np.zeros((3, 4))
    stats[0, 0] = 5.0  # everything else ties with the minimum
    assert variate_masks(stats, 1.0).all()
    assert kept_count(variate_masks(stats, 1.0)) == 12
    assert kept_count(variate_masks(stats, 0.5)) == 1


def test_variate_masks_errors():
    for stats, q in ((np.ones((2, 2)), 0.0), (np.ones((2, 2)), 1.5), (np.ones(4), 0.5),
                     (np.array([[1.0, np.nan]]), 0.5)):
        with pytest.raises(ValueError):
            variate_masks(stats, q)


def test_configs_round_trip_through_the_schedules():
    cfg = load_config(EGS / "cifar10_baseline.cfg")[0]
    opt = dataclasses.replace(cfg.optimizer, warmup_steps=100.0, decay_start=50000, decay_steps=750000,
                              learning_rate=1e-3, min_learning_rate=2e-4)
    assert learning_rate(50000 + 375000, opt) == pytest.approx(6e-4, rel=1e-12)
    assert learning_rate(800000, opt) == pytest.approx(2e-4, rel=1e-12)  # stays at min (the torch original climbs back)
    for setting in cfg.synthesis.temperature_settings:
        assert len(level_temperatures(setting, len(cfg.model.down_strides))) == 33
