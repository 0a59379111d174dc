"""The CPU GEMM 1x1 convs and channels-last inner convs compute the same as the plain conv path."""
import pytest
import torch
from torch.nn import functional as F

import efficient_vdvae_torch.model.layers as layers
from efficient_vdvae_torch.model.autoencoder import build_model
from efficient_vdvae_torch.model.layers import Conv2d, ResidualConvCell, silu_conv

CHANNELS_LAST = torch.channels_last


def _as(x, layout):
    return x.contiguous(memory_format=CHANNELS_LAST if layout == "nhwc" else torch.contiguous_format)


@pytest.mark.parametrize("in_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("out_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("silu", [True, False])
def test_gemm_conv_gradients_two_inputs(in_layout, out_layout, silu):
    torch.manual_seed(0)
    conv = Conv2d(9, 7, 1).double()
    x = _as(torch.randn(3, 5, 4, 4, dtype=torch.float64), in_layout).requires_grad_()
    extra = _as(torch.randn(3, 4, 4, 4, dtype=torch.float64), in_layout).requires_grad_()

    def gemm(weight, bias, x, extra):
        return layers._Conv1x1.apply(weight, bias, silu, out_layout, x, extra)

    out = gemm(conv.weight, conv.bias, x, extra)
    inputs = torch.cat([x, extra], dim=1)
    expected = F.conv2d(F.silu(inputs) if silu else inputs, conv.weight, conv.bias)
    assert out.is_contiguous(memory_format=CHANNELS_LAST if out_layout == "nhwc" else torch.contiguous_format)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(gemm, (conv.weight, conv.bias, x, extra))


def test_gemm_path_is_taken_only_where_it_pays():
    conv = Conv2d(8, 8, 1)
    assert layers._is_gemm_1x1(conv, torch.zeros(2, 8, 16, 16))
    assert layers._is_gemm_1x1(conv, _as(torch.zeros(2, 8, 16, 16), "nhwc"))
    assert not layers._is_gemm_1x1(conv, torch.zeros(2, 8, 8, 8))  # too few pixels
    assert not layers._is_gemm_1x1(conv, torch.zeros(2, 16, 16, 16)[:, :8])  # a channel slice
    assert not layers._is_gemm_1x1(Conv2d(8, 8, 3), torch.zeros(2, 8, 16, 16))
    assert isinstance(silu_conv(torch.zeros(2, 8, 16, 16), conv).grad_fn, torch.autograd.function.BackwardCFunction)


@pytest.mark.parametrize("residual", [True, False])
def test_cell_with_channels_last_inner_convs(residual, monkeypatch):
    """A cell (GEMM edges, channels-last 3x3 inside) equals the same cell on oneDNN convs only."""
    torch.manual_seed(0)
    cell = ResidualConvCell(2, 8, 0.5, 3, 1.0, True, residual=residual,
                            output_ratio=1.0 if residual else 0.5).double()
    x = torch.randn(2, 8 if residual else 4, 16, 16, dtype=torch.float64, requires_grad=True)
    extra = None if residual else torch.randn(2, 4, 16, 16, dtype=torch.float64, requires_grad=True)
    inputs = [x] if residual else [x, extra]
    out = cell(x, extra)
    assert out.is_contiguous()
    grads = torch.autograd.grad(out.square().sum(), [*inputs, *cell.parameters()])
    monkeypatch.setattr(layers, "MIN_GEMM_PIXELS", 10 ** 9)
    reference = cell(x) if residual else cell(torch.cat([x, extra], dim=1))
    expected = torch.autograd.grad(reference.square().sum(), [*inputs, *cell.parameters()])
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_model_outputs_and_gradients_equal_on_both_paths(tiny_config, monkeypatch):
    """The tiny model (32x32: its edge convs at 32 and 16 px go through the GEMMs) on both paths."""
    torch.manual_seed(0)
    model = build_model(tiny_config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = [torch.randn(2, b.latent_variates, b.resolution, b.resolution) for b in model.arch.latent_layers]

    def run():
        model.zero_grad()
        logits, posts, _ = model(x, noise=noise)
        (logits.square().mean() + sum(p[0].square().mean() for p in posts)).backward()
        return logits.detach(), [None if p.grad is None else p.grad.clone() for p in model.parameters()]

    logits, grads = run()
    monkeypatch.setattr(layers, "MIN_GEMM_PIXELS", 10 ** 9)
    ref_logits, ref_grads = run()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert sum(g is not None for g in grads) > 100
    for got, want in zip(grads, ref_grads):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
