"""Unusual but valid architectures of the tiny config (32x32, width 16), as --set overrides of egs/tiny.cfg.

Each is (name, up_strides, up_n_blocks_per_res, down_n_blocks_per_res, up_n_blocks, up_n_layers): few levels,
a stride > 1 at the last bottom-up level (whose pool output nothing reads), levels without extra blocks or
without residual cells, cells without middle convolutions.
"""

UNUSUAL = [
    ("two_levels", [2, 4], [0, 0], [0, 0], [1, 1], [1, 1]),  # the 2-level model of issue 18
    ("one_level", [2], [0], [2], [1], [0]),
    ("three_levels", [4, 2, 4], [0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 2]),
    ("last_stride_one", [2, 2, 1], [1, 0, 2], [0, 0, 1], [1, 0, 1], [1, 1, 1]),
]


def overrides(up_strides, up_per_res, down_per_res, up_blocks, up_layers):
    """The --set strings that turn egs/tiny.cfg into this architecture."""
    n = len(up_strides)
    values = {"up_strides": up_strides, "up_n_blocks_per_res": up_per_res, "up_n_blocks": up_blocks,
              "up_n_layers": up_layers, "up_filters": [16] * n, "up_mid_filters_ratio": [0.5] * n,
              "up_kernel_size": [3] * n, "up_skip_filters": [16] * n, "down_strides": up_strides[::-1],
              "down_n_blocks_per_res": down_per_res, "down_n_blocks": [1] * n, "down_n_layers": [1] * n,
              "down_filters": [16] * n, "down_mid_filters_ratio": [0.5] * n, "down_kernel_size": [3] * n,
              "down_latent_variates": [4] * n}
    return [f"model.{key}={value}" for key, value in values.items()]
