"""Units and pixel constants shared by both frameworks' losses and reports.

"nats" are natural-log units, "per dim" divides by the data dimension count E (`effective_pixels`),
bits = nats / ln 2. Binarized digits are reported in nats per image, image data in bits per dimension.
"""
import math

from efficient_vdvae_core.config import is_binarized

LN2 = math.log(2.0)
MNIST_CROP = slice(2, 30)  # the 28x28 digit inside the zero-padded 32x32 input
MNIST_SIZE = 28


def pixel_range(num_bits):
    """(min_pix, max_pix) in float64: the normalised values of pixels 0 and 255 at `num_bits`.

    8 bits: (-1, 1); 5 bits: (-1, 0.945098...) since 255 is reduced to 248.
    """
    step = 2.0 ** (8 - num_bits)
    top = math.floor(255 / step) * step
    return -1.0, (top - 127.5) / 127.5


def num_classes(num_bits):
    """2^num_bits - 1; the MoL loss uses a half-bin width of 1 / num_classes (5-bit quirk kept)."""
    return 2.0 ** num_bits - 1.0


def effective_pixels(data):
    """Data dimensions E per example for a DataConfig: 28*28*C for binarized digits, else R*R*C."""
    side = MNIST_SIZE if is_binarized(data) else data.target_res
    return side * side * data.channels


def report_unit_name(binarized):
    """'nats/image' for binarized digits, 'bits/dim' for all image data, as the original reports."""
    return "nats/image" if binarized else "bits/dim"


def nats_per_dim_to_report(value, *, binarized, effective_pixels):
    """Convert a value in nats/dim (float or tensor) to the reported unit (bits/dim or nats/image)."""
    return value * effective_pixels if binarized else value / LN2
