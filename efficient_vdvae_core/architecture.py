"""Turn the parallel up_*/down_* lists of [model] into one validated list of block records.

Both frameworks build their networks from these records, so widths, strides, resolutions and
the latent-layer order are decided once, here.
"""
import math
from dataclasses import dataclass
from typing import Optional

from efficient_vdvae_core.dataset_kinds import is_binarized
from efficient_vdvae_core.errors import ConfigError

UP_KEYS = ("up_strides", "up_n_blocks_per_res", "up_n_blocks", "up_n_layers", "up_filters",
           "up_mid_filters_ratio", "up_kernel_size", "up_skip_filters")
DOWN_KEYS = ("down_strides", "down_n_blocks_per_res", "down_n_blocks", "down_n_layers", "down_filters",
             "down_mid_filters_ratio", "down_kernel_size", "down_latent_variates")


@dataclass(frozen=True)
class UpBlock:
    """One bottom-up LevelBlockUp. `index` is None for the level's skip/downsample block."""
    level: int
    index: Optional[int]
    n_blocks: int
    n_layers: int
    in_filters: int
    filters: int
    mid_ratio: float
    kernel_size: int
    stride: int
    skip_filters: int
    use_skip: bool
    resolution: int  # input (and skip) resolution of the block


@dataclass(frozen=True)
class DownBlock:
    """One top-down LevelBlockDown (one latent layer). `index` is None for the level's upsample block."""
    level: int
    index: Optional[int]
    layer: int  # position in the flat latent-layer order
    n_blocks: int
    n_layers: int
    in_filters: int
    filters: int
    mid_ratio: float
    kernel_size: int
    stride: int
    skip_filters: int
    latent_variates: int
    resolution: int  # working resolution after the optional unpool

    @property
    def width(self):
        """Channel width of the residual stream inside the block (after the unpool)."""
        return self.filters if self.stride > 1 else self.in_filters


@dataclass(frozen=True)
class Architecture:
    """Everything the networks need to know about their shape."""
    input_channels: int
    input_filters: int
    input_kernel_size: tuple
    up_levels: tuple  # per level: (tuple of pre UpBlocks, downsample UpBlock)
    down_levels: tuple  # per level: (upsample DownBlock, tuple of extra DownBlocks)
    top_resolution: int  # h0
    top_filters: int
    output_kernel_size: tuple
    output_channels: int
    use_mol: bool

    @property
    def latent_layers(self):
        """Top-down blocks in latent-layer order: level 0 upsample, its extras, level 1 upsample, ..."""
        return tuple(b for up, extras in self.down_levels for b in (up, *extras))

    @property
    def n_latent_layers(self):
        return sum(1 + len(extras) for _, extras in self.down_levels)

    @property
    def stable_init_scale(self):
        """sqrt(1 / N_lat); the original also uses it for bottom-up cells."""
        return math.sqrt(1.0 / self.n_latent_layers)

    @property
    def n_levels(self):
        return len(self.down_levels)


def _error(key, value, message):
    return ConfigError(f"[model] {key} = {value}: {message}")


def build_architecture(model, data):
    """Validate the [model] lists against [data] and return an Architecture."""
    lengths = {k: len(getattr(model, k)) for k in UP_KEYS + DOWN_KEYS}
    n = lengths["up_strides"]
    for key in UP_KEYS + DOWN_KEYS:
        if lengths[key] != n:
            raise _error(key, f"<list of {lengths[key]}>",
                         f"has {lengths[key]} entries but up_strides has {n}; all up_*/down_* lists need one entry per level")
    if tuple(model.down_strides) != tuple(reversed(model.up_strides)):
        raise _error("down_strides", list(model.down_strides), f"must be the reverse of up_strides {list(model.up_strides)}")
    total_stride = math.prod(model.up_strides)
    if data.target_res % total_stride:
        raise _error("up_strides", list(model.up_strides),
                     f"their product {total_stride} does not divide [data] target_res = {data.target_res}")

    up_levels, skips = [], []
    width, res = model.input_conv_filters, data.target_res
    for i in range(n):
        stride, filters = model.up_strides[i], model.up_filters[i]
        if stride == 1 and filters != width:
            raise _error("up_filters", list(model.up_filters),
                         f"level {i} has stride 1 but changes the width {width} -> {filters}; widths may only change at stride > 1")
        if res % stride:
            raise _error("up_strides", list(model.up_strides), f"level {i}: resolution {res} is not divisible by stride {stride}")
        _check_mid(model.up_mid_filters_ratio[i], width, "up_mid_filters_ratio", i)
        common = dict(level=i, n_blocks=model.up_n_blocks[i], n_layers=model.up_n_layers[i], in_filters=width,
                      filters=filters, mid_ratio=model.up_mid_filters_ratio[i], kernel_size=model.up_kernel_size[i],
                      resolution=res)
        pre = tuple(UpBlock(index=j, stride=1, skip_filters=model.up_skip_filters[i], use_skip=False, **common)
                    for j in range(model.up_n_blocks_per_res[i]))
        down = UpBlock(index=None, stride=stride, skip_filters=model.up_skip_filters[i], use_skip=True, **common)
        up_levels.append((pre, down))
        skips.append((model.up_skip_filters[i], res))
        width, res = filters, res // stride

    h0 = data.target_res // total_stride
    down_levels, layer = [], 0
    width, res = model.down_filters[0], h0
    for i in range(n):
        stride, filters = model.down_strides[i], model.down_filters[i]
        if stride == 1 and filters != width:
            raise _error("down_filters", list(model.down_filters),
                         f"level {i} has stride 1 but changes the width {width} -> {filters}; widths may only change at stride > 1")
        res *= stride
        skip_filters, skip_res = skips[n - 1 - i]
        block_width = filters if stride > 1 else width
        if skip_res != res:
            raise _error("down_strides", list(model.down_strides), f"level {i}: resolution {res} does not match its skip ({skip_res})")
        if skip_filters != block_width:
            raise _error("up_skip_filters", list(model.up_skip_filters),
                         f"entry {n - 1 - i} is {skip_filters} but top-down level {i} works at width {block_width}; "
                         "the skip must have the width of the top-down level it feeds")
        _check_mid(model.down_mid_filters_ratio[i], block_width, "down_mid_filters_ratio", i)
        common = dict(level=i, n_blocks=model.down_n_blocks[i], n_layers=model.down_n_layers[i],
                      mid_ratio=model.down_mid_filters_ratio[i], kernel_size=model.down_kernel_size[i],
                      skip_filters=skip_filters, latent_variates=model.down_latent_variates[i], resolution=res,
                      filters=filters)
        upsample = DownBlock(index=None, layer=layer, in_filters=width, stride=stride, **common)
        extras = tuple(DownBlock(index=j, layer=layer + 1 + j, in_filters=filters, stride=1, **common)
                       for j in range(model.down_n_blocks_per_res[i]))
        layer += 1 + len(extras)
        down_levels.append((upsample, extras))
        width = filters

    use_mol = not is_binarized(data)
    out_channels = model.num_output_mixtures * (3 * data.channels + 1) if use_mol else 1
    return Architecture(
        input_channels=data.channels, input_filters=model.input_conv_filters,
        input_kernel_size=tuple(model.input_kernel_size), up_levels=tuple(up_levels),
        down_levels=tuple(down_levels), top_resolution=h0, top_filters=model.down_filters[0],
        output_kernel_size=tuple(model.output_kernel_size), output_channels=out_channels, use_mol=use_mol)


def _check_mid(ratio, width, key, level):
    if int(width * ratio) < 1:
        raise _error(key, ratio, f"level {level}: int({width} * {ratio}) = 0 bottleneck channels")


def describe_architecture(arch):
    """Human-readable lines, one per level, of the bottom-up and top-down networks."""
    lines = [f"input: {arch.input_channels} channels -> input_conv {arch.input_filters} filters"]
    for i, (pre, down) in enumerate(arch.up_levels):
        lines.append(f"up   level {i:3d}: {down.resolution:4d}x{down.resolution:<4d} width {down.in_filters:4d} "
                     f"blocks {len(pre) + 1} stride {down.stride} -> {down.filters} (skip {down.skip_filters})")
    for i, (up, extras) in enumerate(arch.down_levels):
        layers = f"{up.layer}" if not extras else f"{up.layer}-{extras[-1].layer}"
        lines.append(f"down level {i:3d}: {up.resolution:4d}x{up.resolution:<4d} width {up.width:4d} "
                     f"stride {up.stride} latent layers {layers} ({up.latent_variates} variates)")
    lines.append(f"latent layers: {arch.n_latent_layers}, top {arch.top_resolution}x{arch.top_resolution}, "
                 f"output: {'MoL' if arch.use_mol else 'Bernoulli'} {arch.output_channels} channels")
    return lines


def unused_parameter_prefixes(arch):
    """state_dict prefixes of parameters that never receive a gradient: the last bottom-up level's pool.

    The top-down pass starts from the learned `trainable_h`, so the output of the last bottom-up level's
    downsampling (a pool when its stride is > 1) is never read. The parameters stay (the original's
    checkpoints have them); data-parallel training must be told they get no gradient.
    """
    last = len(arch.up_levels) - 1
    _, down = arch.up_levels[last]
    return [f"bottom_up.levels_up_downsample.{last}.pool."] if down.stride > 1 else []
