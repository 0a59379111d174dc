"""SSIM metric as the original computes it, per example."""
import torch
from torch.nn import functional as F

K1, K2, DATA_RANGE, WINDOW, SIGMA = 0.01, 0.03, 255.0, 11, 1.5


def _window(channels, device, dtype):
    coords = torch.arange(WINDOW, device=device, dtype=torch.float64) - WINDOW // 2
    g = torch.exp(-(coords ** 2) / (2 * SIGMA ** 2))
    w = torch.outer(g, g)
    w = (w / w.sum()).to(dtype)
    return w.expand(channels, 1, WINDOW, WINDOW).contiguous()


def to_pixels(images):
    """[-1, 1] images -> [0, 255] values rounded to the 8-bit grid (float32)."""
    return torch.round(images.float().clamp(-1, 1) * 127.5 + 127.5)


def ssim_per_example(x, y):
    """SSIM of two (B, C, H, W) batches in [-1, 1]; 11x11 Gaussian window, sigma 1.5, zero padding."""
    x, y = to_pixels(x), to_pixels(y)
    channels = x.shape[1]
    w = _window(channels, x.device, x.dtype)

    def blur(t):
        return F.conv2d(t, w, padding=WINDOW // 2, groups=channels)

    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_x, mu_y = blur(x), blur(y)
    mu_xy, mu_sq = mu_x * mu_y, mu_x ** 2 + mu_y ** 2
    luminance = (2 * mu_xy + c1) / (mu_sq + c1)
    contrast_structure = (2 * blur(x * y) - 2 * mu_xy + c2) / (blur(x * x + y * y) - mu_sq + c2)
    return (luminance * contrast_structure).mean(dim=(1, 2, 3))
