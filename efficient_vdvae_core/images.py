"""Image conversion, PNG writing and grids (NumPy + Pillow), shared by both frameworks."""
import math
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images, binarized=False):
    """Float images (..., H, W, C) in [-1, 1] (or [0, 1] when `binarized`) -> uint8 in [0, 255].

    Values outside the range are clipped; NaN pixels (a diverged model) become 0, without a warning.
    """
    images = np.asarray(images, dtype=np.float32)
    scaled = images * 255.0 if binarized else images * 127.5 + 127.5
    return np.nan_to_num(np.clip(np.round(scaled), 0, 255), nan=0.0).astype(np.uint8)


def save_png(path, image):
    """Write one uint8 (H, W, C) image with C in {1, 3} as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    return path


def make_grid(images, ncols=None, pad=2):
    """Tile uint8 (N, H, W, C) images into one (rows*(H+pad)+pad, ...) uint8 image."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid
