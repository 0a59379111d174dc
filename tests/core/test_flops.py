"""FLOP count of a training step from the architecture records, against a count done by hand."""
from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.flops import forward_flops_per_image, training_step_flops
from tests.conftest import EGS

ONE_LEVEL = ["data.target_res=4", "model.input_conv_filters=8", "model.up_strides=[1]", "model.down_strides=[1]",
             "model.up_n_blocks_per_res=[0]", "model.down_n_blocks_per_res=[0]", "model.up_n_blocks=[1]",
             "model.down_n_blocks=[1]", "model.up_n_layers=[1]", "model.down_n_layers=[1]",
             "model.up_filters=[8]", "model.down_filters=[8]", "model.up_mid_filters_ratio=[0.5]",
             "model.down_mid_filters_ratio=[0.5]", "model.up_kernel_size=[3]", "model.down_kernel_size=[3]",
             "model.up_skip_filters=[8]", "model.down_latent_variates=[2]", "model.num_output_mixtures=1"]


def test_one_level_model_counted_by_hand():
    config, _ = load_config(EGS / "tiny.cfg", ONE_LEVEL)
    arch = build_architecture(config.model, config.data)
    pixels = 16  # 4x4, every convolution at full resolution
    macs = {"input 3->8": 3 * 8,
            "bottom-up cell 8->4, 3x3 4->4, 4->8": 8 * 4 + 4 * 4 * 9 + 4 * 8, "skip 8->8": 8 * 8,
            "posterior cell 16->4, 3x3, 4->8": 16 * 4 + 4 * 4 * 9 + 4 * 8,
            "prior cell 8->4, 3x3, 4->16": 8 * 4 + 4 * 4 * 9 + 4 * 16,
            "prior and posterior stats 2 x 8->4": 2 * 8 * 4, "latent 2->8": 2 * 8,
            "top-down residual cell 8->4, 3x3, 4->8": 8 * 4 + 4 * 4 * 9 + 4 * 8,
            "output 8->10 (1 mixture: 3 x 3 + 1)": 8 * 10}
    forward = 2 * pixels * sum(macs.values())
    assert forward == 36608
    assert forward_flops_per_image(arch, config.model.use_1x1_conv) == forward
    assert training_step_flops(arch, config.model.use_1x1_conv, batch_size=5) == 3 * forward * 5


def test_cifar10_baseline_forward_is_28_gmac_per_image():
    config, _ = load_config(EGS / "cifar10_baseline.cfg")
    arch = build_architecture(config.model, config.data)
    assert 27e9 < forward_flops_per_image(arch, config.model.use_1x1_conv) / 2 < 29e9
