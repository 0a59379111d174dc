"""The core's FLOP count equals what torch counts in the PyTorch model's forward pass and training step."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.flops import forward_flops_per_image
from efficient_vdvae_torch.model.autoencoder import build_model
from efficient_vdvae_torch.trainer import train_noise
from tests.conftest import EGS


# the posterior's first product adds its second input's half in place (baddbmm_), which torch's table lacks
def _in_place_baddbmm(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs):
    batch, rows, inner = a_shape
    return 2 * batch * rows * inner * b_shape[-1]


IN_PLACE = {torch.ops.aten.baddbmm_: _in_place_baddbmm}


@pytest.mark.parametrize("name", ["tiny", "tiny_binarized"])
def test_counted_flops_equal_torch_flop_counter(name):
    config, _ = load_config(EGS / f"{name}.cfg")
    arch = build_architecture(config.model, config.data)
    model = build_model(config)
    batch = 2
    images = torch.rand(batch, config.data.channels, config.data.target_res, config.data.target_res) * 2 - 1
    noise = train_noise(arch, batch, 0, 1, 0, 0, torch.device("cpu"))
    with FlopCounterMode(display=False, custom_mapping=IN_PLACE) as counter:
        logits, posteriors, priors = model(images, None, noise)
    forward = counter.get_total_flops()
    assert forward == forward_flops_per_image(arch, config.model.use_1x1_conv) * batch
    with FlopCounterMode(display=False, custom_mapping=IN_PLACE) as counter:
        sum(t.sum() for t in torch.utils._pytree.tree_leaves((logits, posteriors, priors))).backward()
    # twice the forward, less the input convolution's input gradient and the unread last bottom-up pool
    assert 1.99 * forward < counter.get_total_flops() <= 2 * forward
