"""Convolutions, residual bottleneck cells and the pooling/unpooling layers."""
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
        if _is_gemm_1x1(self, x):
            return _Conv1x1.apply(*_cast(x, self.weight, self.bias), False, _layout(x), *_cast(x, x))
        return super().forward(x)


def _cast(x, *tensors):
    """`tensors` in the dtype convolutions of `x` run in: autocast's (bf16 mixed precision) or unchanged.

    The custom autograd functions below see one dtype throughout; the casts are autograd operations, so
    the float32 master weights receive float32 gradients.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(x.device.type)
    return tuple(t.to(dtype) for t in tensors)


# Below this many pixels per image the per-image products are too small to beat oneDNN's conv, and
# the weight gradient's per-image partial sums (B, O, C) outgrow the activations.
MIN_GEMM_PIXELS = 256
# Run a cell's inner k x k convs channels-last when its edge convs are GEMMs (see ResidualConvCell).
INNER_CHANNELS_LAST = True


def _is_gemm_1x1(conv, x):
    """Whether conv(x) is a 1x1, stride-1 conv on a CPU tensor contiguous in NCHW or channels-last.

    On the CPU such a conv is a matrix product (per image in NCHW, one for the batch in channels-last);
    doing it with BLAS directly avoids oneDNN's reorders of the (large) activations to its blocked
    layout, which cost more than the product itself for the wide 1x1 convs of these models
    (bench/train_step.py: cifar10_baseline).
    """
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and x.device.type == "cpu" and x.dim() == 4
            and x.shape[2] * x.shape[3] >= MIN_GEMM_PIXELS
            and (conv.weight.dtype == x.dtype or torch.is_autocast_enabled("cpu"))
            and _layout(x) is not None)


def _layout(x):
    if x.is_contiguous():
        return "nchw"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    return None


def _columns(x, layout):
    """x (B, C, H, W), contiguous in `layout`, as the batch of (C, H*W) matrices it holds (a view)."""
    if layout == "nchw":
        return x.view(x.shape[0], x.shape[1], -1)
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]).transpose(1, 2)


def _as_layout(x, layout):
    return x.contiguous(memory_format=torch.contiguous_format if layout == "nchw" else torch.channels_last)


def _from_columns(cols, layout, height, width):
    """The (B, C, H, W) tensor of a batch of (C, H*W) matrices contiguous in `layout`."""
    batch, channels = cols.shape[:2]
    if layout == "nchw":
        return cols.view(batch, channels, height, width)
    return cols.transpose(1, 2).view(batch, height, width, channels).permute(0, 3, 1, 2)


def _product(a, b, layout, bias=None, out=None):
    """The batch of matrix products a @ b, computed into a result contiguous in `layout`.

    For "nhwc" the transposed product b^T @ a^T is formed, so that the (B, H*W, O) result holds the
    channels-last pixels; BLAS reads the transposed and stride-0 operands without copying them.
    """
    if layout == "nchw":
        if out is not None:
            return out.baddbmm_(a, b)
        return torch.bmm(a, b) if bias is None else torch.baddbmm(bias.view(1, -1, 1), a, b)
    if out is not None:
        out.transpose(1, 2).baddbmm_(b.transpose(1, 2), a.transpose(1, 2))
        return out
    result = torch.bmm(b.transpose(1, 2), a.transpose(1, 2)) if bias is None else torch.baddbmm(
        bias.view(1, 1, -1), b.transpose(1, 2), a.transpose(1, 2))
    return result.transpose(1, 2)


class _Conv1x1(torch.autograd.Function):
    """conv1x1(cat(xs)) or, with `silu_input`, conv1x1(silu(cat(xs))) as batched matrix products.

    The concatenation of the inputs along channels is never built: each input meets its slice of the
    weight. Only the inputs are saved; silu(x) is recomputed in backward (as `_SiLUConv`). The inputs
    share one memory layout, NCHW or channels-last ("nhwc"); the output is made in `out_layout`, so a
    residual cell can run its inner k x k convs channels-last (oneDNN's fast layout on the CPU) while
    its input and output stay NCHW, without any layout copy.
    """

    @staticmethod
    def forward(ctx, weight, bias, silu_input, out_layout, *xs):
        ctx.save_for_backward(weight, *xs)
        ctx.silu_input = silu_input
        in_layout = _layout(xs[0])
        ctx.layouts = (in_layout, out_layout)
        batch, _, height, width = xs[0].shape
        out_channels = weight.shape[0]
        out, start = None, 0
        for x in xs:
            channels = x.shape[1]
            w = weight[:, start:start + channels].reshape(1, out_channels, channels).expand(batch, -1, -1)
            act = _columns(F.silu(x) if silu_input else x, in_layout)
            out = _product(w, act, out_layout, bias=bias, out=out)
            start += channels
        return _from_columns(out, out_layout, height, width)

    @staticmethod
    def backward(ctx, grad_out):
        weight, *xs = ctx.saved_tensors
        in_layout, out_layout = ctx.layouts
        batch, out_channels = grad_out.shape[:2]
        g = _columns(_as_layout(grad_out, out_layout), out_layout)  # (B, O, H*W)
        needs_w, needs_b = ctx.needs_input_grad[:2]
        grad_ws, grad_xs, start = [], [], 0
        for x, needs_x in zip(xs, ctx.needs_input_grad[4:]):
            channels = x.shape[1]
            if needs_w:
                act = _columns(F.silu(x) if ctx.silu_input else x, in_layout)
                grad_ws.append(torch.bmm(g, act.transpose(1, 2)).sum(0))
            grad_x = None
            if needs_x:
                w_t = weight[:, start:start + channels].reshape(1, out_channels, channels).transpose(1, 2)
                grad_x = _from_columns(_product(w_t.expand(batch, -1, -1), g, in_layout), in_layout, *x.shape[2:])
                if ctx.silu_input:
                    grad_x = torch.ops.aten.silu_backward(grad_x, x)
            grad_xs.append(grad_x)
            start += channels
        grad_w = torch.cat(grad_ws, dim=1).view_as(weight) if needs_w else None
        grad_b = g.sum((0, 2)) if needs_b else None
        return grad_w, grad_b, None, None, *grad_xs


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


def silu_conv(x, conv, out_layout=None):
    """conv(silu(x)); memory-efficient when gradients are needed and the padding is symmetric.

    A CPU GEMM 1x1 conv makes its output in `out_layout` ("nchw" or "nhwc"; default: x's layout).
    """
    if _is_gemm_1x1(conv, x):
        return _Conv1x1.apply(*_cast(x, conv.weight, conv.bias), True, out_layout or _layout(x), *_cast(x, x))
    if torch.is_grad_enabled() and conv._explicit_pad is None and conv.stride == (1, 1):
        return _SiLUConv.apply(*_cast(x, x, conv.weight, conv.bias), conv.padding)
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

    def forward(self, x, extra=None):
        """cell(x); with `extra`, cell(cat([x, extra])) of a non-residual cell, without the concatenation
        where the first conv is a CPU GEMM (the posterior's input: the top-down state and the skip).

        When the edge convs are CPU GEMMs, the inner k x k convs run channels-last, oneDNN's fast
        layout, while the cell's input and output keep x's layout (the GEMMs change layouts for free).
        """
        first, last = self.convs[1], self.convs[-1]
        gemm = _is_gemm_1x1(first, x) and (extra is None or (_is_gemm_1x1(first, extra)
                                                              and _layout(x) == _layout(extra)))
        inner = "nhwc" if gemm and INNER_CHANNELS_LAST and len(self.convs) > 4 else None
        if extra is None:
            y = silu_conv(x, first, inner)
        elif self.residual:
            raise ValueError("a residual cell takes one input")
        elif gemm:
            y = _Conv1x1.apply(*_cast(x, first.weight, first.bias), True, inner or _layout(x), *_cast(x, x, extra))
        else:
            y = silu_conv(torch.cat([x, extra], dim=1), first)
        for i in range(3, len(self.convs) - 2, 2):  # the inner (SiLU, conv) pairs
            y = silu_conv(y, self.convs[i])
        y = silu_conv(y, last, _layout(x) if gemm else None)
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
