"""Convolutions, residual bottleneck cells and the pooling/unpooling layers (model.md section 3)."""
import torch
from torch import nn
from torch.nn import functional as F


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class Conv2d(nn.Conv2d):
    """Conv with 'same' padding and xavier-uniform weights, zero bias (scaled by `init_scale`).

    With `default_init=True` it keeps PyTorch's default initialisation instead, as the original does
    for the first conv of every residual cell. 'same' padding is `(k - s)` in total per axis; an odd
    total puts the extra pixel on the left/top, as the original.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, init_scale=1.0, default_init=False):
        self._init_scale = init_scale
        self._default_init = default_init
        super().__init__(in_channels, out_channels, _pair(kernel_size), stride=_pair(stride), padding=0)
        pads = [k - s for k, s in zip(self.kernel_size, self.stride)]
        if all(p % 2 == 0 for p in pads):
            self.padding = tuple(p // 2 for p in pads)
            self._explicit_pad = None
        else:  # F.pad order: (left, right, top, bottom)
            ph, pw = pads
            self._explicit_pad = ((pw + 1) // 2, pw // 2, (ph + 1) // 2, ph // 2)

    def reset_parameters(self):
        if self._default_init:
            super().reset_parameters()
            return
        nn.init.xavier_uniform_(self.weight)
        with torch.no_grad():
            self.weight.mul_(self._init_scale)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        if self._explicit_pad is not None:
            x = F.pad(x, self._explicit_pad)
        return super().forward(x)


class _SiLUConv(torch.autograd.Function):
    """conv2d(silu(x)) that saves only x: silu(x) is recomputed in backward (halves cell activations)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(F.silu(x), weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_act, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, F.silu(x), weight, [weight.shape[0]], [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
            [True, True, True])
        return torch.ops.aten.silu_backward(grad_act, x), grad_w, grad_b, None


def silu_conv(x, conv):
    """conv(silu(x)); memory-efficient when gradients are needed and the padding is symmetric."""
    if torch.is_grad_enabled() and conv._explicit_pad is None and conv.stride == (1, 1):
        return _SiLUConv.apply(x, conv.weight, conv.bias, conv.padding)
    return conv(F.silu(x))


class ResidualConvCell(nn.Module):
    """Pre-activation bottleneck: SiLU-conv (1x1 or k) -> n_layers x SiLU-conv(k) -> SiLU-conv (1x1 or k).

    `convs` alternates parameter-free SiLUs (even indices) and convs (odd indices), giving the
    original's state_dict names `convs.1`, `convs.3`, ...
    """

    def __init__(self, n_layers, in_filters, bottleneck_ratio, kernel_size, init_scale, use_1x1_conv,
                 residual=True, output_ratio=1.0):
        super().__init__()
        if residual and output_ratio != 1.0:
            raise ValueError("a residual cell must keep its width (output_ratio 1)")
        mid = int(in_filters * bottleneck_ratio)
        out = int(in_filters * output_ratio)
        edge_kernel = 1 if use_1x1_conv else kernel_size
        convs = [nn.SiLU(), Conv2d(in_filters, mid, edge_kernel, default_init=True)]
        for _ in range(n_layers):
            convs += [nn.SiLU(), Conv2d(mid, mid, kernel_size)]
        convs += [nn.SiLU(), Conv2d(mid, out, edge_kernel, init_scale=init_scale)]
        self.convs = nn.Sequential(*convs)
        self.residual = residual

    def forward(self, x):
        y = x
        for i in range(1, len(self.convs), 2):  # (SiLU, conv) pairs
            y = silu_conv(y, self.convs[i])
        return x + y if self.residual else y


class PoolLayer(nn.Module):
    """Strided conv (kernel = stride) then LeakyReLU(0.1): bottom-up downsampling."""

    def __init__(self, in_filters, filters, stride):
        super().__init__()
        self.ops = nn.Sequential(Conv2d(in_filters, filters, stride, stride=stride), nn.LeakyReLU(0.1))

    def forward(self, x):
        return self.ops(x)


class UnpoolLayer(nn.Module):
    """1x1 conv, LeakyReLU(0.1), nearest upsampling by `stride`, plus a per-position trainable bias."""

    def __init__(self, in_filters, filters, stride, out_resolution):
        super().__init__()
        self.scale_bias = nn.Parameter(torch.zeros(1, filters, out_resolution, out_resolution))
        self.ops = nn.Sequential(Conv2d(in_filters, filters, 1), nn.LeakyReLU(0.1),
                                 nn.Upsample(scale_factor=stride, mode="nearest"))

    def forward(self, x):
        return self.ops(x) + self.scale_bias
