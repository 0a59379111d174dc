"""Grids and their enlarged copies for people (efficient_vdvae_core.images)."""
import numpy as np
from PIL import Image

from efficient_vdvae_core.images import (MIN_VIEW_WIDTH, grid_of_rows, make_grid, save_png_with_view,
                                         upscale_factor, upscale_nearest, view_path)


def test_upscale_factor_is_the_smallest_integer_reaching_the_width():
    assert upscale_factor(242) == 3 and 242 * 3 >= MIN_VIEW_WIDTH > 242 * 2
    assert upscale_factor(512) == 1 and upscale_factor(900) == 1
    assert upscale_factor(100, min_width=1000) == 10


def test_upscale_nearest_repeats_every_pixel():
    image = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1)
    big = upscale_nearest(image, 4)
    assert big.shape == (8, 12, 1) and big.dtype == np.uint8
    assert np.array_equal(big[::4, ::4], image)
    assert (big[4:8, 8:12] == image[1, 2]).all()


def test_grid_of_rows_puts_one_batch_per_row(tmp_path):
    rows = [np.full((5, 4, 4, 1), v, np.uint8) for v in (10, 20)] + [np.full((3, 4, 4, 1), 30, np.uint8)]
    grid = grid_of_rows(rows)
    assert grid.shape == make_grid(np.zeros((9, 4, 4, 1), np.uint8), ncols=3).shape == (3 * 6 + 2, 3 * 6 + 2, 1)
    assert [grid[2 + 6 * r, 2, 0] for r in range(3)] == [10, 20, 30]


def test_save_png_with_view_writes_both_sizes(tmp_path):
    grid = make_grid(np.random.default_rng(0).integers(0, 256, (24, 28, 28, 1), dtype=np.uint8), ncols=8)
    small, big = save_png_with_view(tmp_path / "samples" / "step_600.png", grid)
    assert small == tmp_path / "samples" / "step_600.png" and big == view_path(small, 3)
    assert big.name == "step_600_x3.png"
    with Image.open(small) as a, Image.open(big) as b:
        assert a.size == (grid.shape[1], grid.shape[0]) and b.size == (3 * grid.shape[1], 3 * grid.shape[0])
        assert np.array_equal(np.asarray(b)[::3, ::3], np.asarray(a))
