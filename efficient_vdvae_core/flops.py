"""Floating-point operations of one training step, counted from the architecture records.

The convolutions are those of `efficient_vdvae_core.memory.model_blocks` (the ones both frameworks
build, 1x1 convolutions done as matrix products included), each with the resolution it works at. A
convolution's forward pass costs 2 x in_channels x out_channels x kernel area FLOP per output pixel
(a multiply and an add per weight). The backward pass computes the input gradient and the weight
gradient, each a product of the forward's size, so a training step is counted as 3 x the forward
(the first convolution needs no input gradient: the count is high by under 0.1% for the egs configs).
Elementwise work (activations, the losses, the KL, the optimizer and the EMA) is not counted.
"""
from efficient_vdvae_core.memory import model_blocks

BACKWARD_FACTOR = 2  # backward = input gradient + weight gradient, each a forward's worth of products


def conv_flops(conv):
    """Forward FLOP of one convolution for one image."""
    kh, kw = conv.kernel
    return 2 * conv.in_channels * conv.out_channels * kh * kw * conv.out_res ** 2


def forward_flops_per_image(arch, use_1x1_conv):
    """FLOP of the model's forward pass (every convolution and product) for one image."""
    return sum(conv_flops(c) for convs, _, _ in model_blocks(arch, use_1x1_conv) for c in convs)


def training_step_flops(arch, use_1x1_conv, batch_size):
    """FLOP of one training step (forward + backward = 3 x forward) on `batch_size` images."""
    return (1 + BACKWARD_FACTOR) * forward_flops_per_image(arch, use_1x1_conv) * batch_size
