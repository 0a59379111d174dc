"""Image conversion, PNG writing and grids (NumPy + Pillow), shared by both frameworks."""
import math
from pathlib import Path

import numpy as np
from PIL import Image

MIN_VIEW_WIDTH = 512  # pixels: enlarged copies of grids are at least this wide, for people to look at


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


def grid_of_rows(rows, pad=2):
    """One uint8 grid with a row per uint8 (N_i, H, W, C) batch, each cut to the shortest batch's length."""
    n = min(len(r) for r in rows)
    return make_grid(np.concatenate([np.asarray(r)[:n] for r in rows]), ncols=n, pad=pad)


def upscale_factor(width, min_width=MIN_VIEW_WIDTH):
    """The smallest integer factor (>= 1) that makes an image `width` pixels wide at least `min_width` wide."""
    return max(1, math.ceil(min_width / width))


def upscale_nearest(image, factor):
    """uint8 (H, W, C) image enlarged `factor` times in each direction by repeating pixels (nearest neighbour)."""
    image = np.asarray(image)
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def view_path(path, factor):
    """Name of the enlarged copy of the PNG `path`: <stem>_x<factor>.png beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_x{factor}{path.suffix}")


def save_png_with_view(path, image, min_width=MIN_VIEW_WIDTH):
    """Write `image` at its own size to `path` and enlarged to >= min_width px wide to view_path; both paths."""
    factor = upscale_factor(np.asarray(image).shape[1], min_width)
    return save_png(path, image), save_png(view_path(path, factor), upscale_nearest(image, factor))
