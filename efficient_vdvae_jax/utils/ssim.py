"""SSIM metric as the original computes it, per example, NHWC."""
import jax
import jax.numpy as jnp
import numpy as np

K1, K2, DATA_RANGE, WINDOW, SIGMA = 0.01, 0.03, 255.0, 11, 1.5


def _window():
    coords = np.arange(WINDOW, dtype=np.float64) - WINDOW // 2
    g = np.exp(-(coords ** 2) / (2 * SIGMA ** 2))
    w = np.outer(g, g)
    return (w / w.sum()).astype(np.float32)


def to_pixels(images):
    """[-1, 1] images -> [0, 255] values rounded to the 8-bit grid (float32)."""
    return jnp.round(jnp.clip(images.astype(jnp.float32), -1, 1) * 127.5 + 127.5)


def ssim_per_example(x, y):
    """SSIM of two (B, H, W, C) batches in [-1, 1]; 11x11 Gaussian window, sigma 1.5, zero padding."""
    x, y = to_pixels(x), to_pixels(y)
    channels = x.shape[-1]
    kernel = jnp.asarray(np.tile(_window()[:, :, None, None], (1, 1, 1, channels)))  # HWIO, depthwise

    def blur(t):
        return jax.lax.conv_general_dilated(t, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)

    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_x, mu_y = blur(x), blur(y)
    mu_xy, mu_sq = mu_x * mu_y, mu_x ** 2 + mu_y ** 2
    luminance = (2 * mu_xy + c1) / (mu_sq + c1)
    contrast_structure = (2 * blur(x * y) - 2 * mu_xy + c2) / (blur(x * x + y * y) - mu_sq + c2)
    return jnp.mean(luminance * contrast_structure, axis=(1, 2, 3))
