"""Parameter names and layouts: PyTorch state_dict <-> this JAX model <-> the original JAX implementation.

NumPy only, used by both frameworks' checkpoint readers and by the converter.

This JAX model's parameters are a nested dict (an nnx "pure dict" of the Param state) whose paths are
the PyTorch state_dict names split at '.', list indices as ints, with `weight` -> `kernel`:
  torch `top_down.levels_down_upsample.3.unpool.ops.0.weight` (O, I, kh, kw)
  jax   ('top_down', 'levels_down_upsample', 3, 'unpool', 'ops', 0, 'kernel') (kh, kw, I, O)
`unpool.scale_bias` and `trainable_h` are (1, C, H, W) in torch and (1, H, W, C) in JAX; biases are
unchanged. The MoL output channels have the same order in both frameworks, so the conversion is this
table plus transposes, and PyTorch -> JAX -> PyTorch is bitwise exact.

The ORIGINAL JAX implementation names its parameters by block and layer, e.g.
`top_down/block_down_level_3_upsample/unpooling_layer/conv/conv/kernel`, and orders the MoL output
channels as (3M, C) instead of (C, 3M); `import_original_jax_params` maps its trees to ours and
`export_original_jax_params` back.
"""
import re

import numpy as np

CHANNELS_LAST = ("scale_bias", "trainable_h")  # (1, C, H, W) in torch, (1, H, W, C) in JAX

def flatten_tree(tree, prefix=()):
    """{path tuple: leaf} of a nested dict."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_tree(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten_tree(flat):
    """Nested dict from {path tuple: leaf}."""
    tree = {}
    for path, leaf in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return tree


def parse_part(part):
    """One part of a '/'- or '.'-joined parameter path: an int for a list index, else the name."""
    return int(part) if part.isdigit() else part


# ---------------------------------------------------------------- torch <-> jax

# Registration order of the PyTorch modules, to write state_dicts in the torch model's key order.
_TORCH_ORDER = {name: i for i, name in enumerate((
    "bottom_up", "top_down", "levels_up", "levels_up_downsample", "input_conv", "trainable_h", "levels_down",
    "levels_down_upsample", "output_conv", "unpool", "scale_bias", "ops", "residual_block", "skip_projection",
    "pool", "posterior_net", "prior_net", "prior_layer", "posterior_layer", "z_projection", "convs", "projection",
    "weight", "bias"))}


def torch_key_order(name):
    """Sort key putting torch state_dict names in the order of the PyTorch model's state_dict."""
    return [(0, int(p), "") if p.isdigit() else (1, _TORCH_ORDER.get(p, len(_TORCH_ORDER)), p)
            for p in name.split(".")]


def _torch_axes(path):
    """Transpose taking a JAX leaf at `path` to its torch layout (None: unchanged) and the torch leaf name."""
    leaf = path[-1]
    if leaf == "kernel":
        return (3, 2, 0, 1), "weight"  # (kh, kw, in, out) -> (out, in, kh, kw)
    if leaf in CHANNELS_LAST:
        return (0, 3, 1, 2), leaf  # (1, H, W, C) -> (1, C, H, W)
    if leaf == "bias":
        return None, leaf
    raise ValueError(f"{'/'.join(map(str, path))}: unknown parameter kind {leaf!r}")


def jax_to_torch_key(path, shape):
    """(torch state_dict name, torch shape) of a JAX parameter path and shape."""
    axes, leaf = _torch_axes(path)
    name = ".".join(str(p) for p in path[:-1] + (leaf,))
    return name, tuple(shape) if axes is None else tuple(shape[a] for a in axes)


def torch_to_jax_key(name, shape):
    """(JAX parameter path, JAX shape) of a torch state_dict name and shape."""
    path = tuple(parse_part(p) for p in name.split("."))
    if path[-1] == "weight":
        path = path[:-1] + ("kernel",)
    axes, _ = _torch_axes(path)
    if axes is not None and len(shape) != 4:
        raise ValueError(f"{name}: expected a 4-d parameter, got shape {tuple(shape)}")
    return path, tuple(shape) if axes is None else tuple(shape[axes.index(i)] for i in range(4))


def torch_state_dict_to_jax(state_dict):
    """PyTorch state_dict {name: array} -> nested JAX param dict (conv kernels HWIO, NHWC biases)."""
    flat = {}
    for name, value in state_dict.items():
        value = np.asarray(value)
        path, _ = torch_to_jax_key(name, value.shape)
        axes, _ = _torch_axes(path)
        flat[path] = np.ascontiguousarray(value if axes is None else value.transpose(np.argsort(axes)))
    return unflatten_tree(flat)


def jax_params_to_torch_state_dict(params):
    """Nested JAX param dict -> PyTorch state_dict {name: NumPy array} in the torch model's key order."""
    out = {}
    for path, value in flatten_tree(params).items():
        value = np.asarray(value)
        axes, _ = _torch_axes(path)
        name, _ = jax_to_torch_key(path, value.shape)
        out[name] = np.ascontiguousarray(value if axes is None else value.transpose(axes))
    return {k: out[k] for k in sorted(out, key=torch_key_order)}


# ---------------------------------------------------------------- the original JAX tree

def mol_channel_permutation(num_mixtures, channels):
    """Index array src with ours[..., j] = original[..., src[j]] for MoL output channels.

    Both start with the M mixture logits; then the original stores slot k of colour c at M + k*C + c
    (a (3M, C) layout), this codebase and PyTorch at M + c*3M + k (a (C, 3M) layout).
    """
    m, c = num_mixtures, channels
    src = list(range(m))
    for ch in range(c):
        src += [m + k * c + ch for k in range(3 * m)]
    return np.asarray(src)


_CONV = r"/conv/(kernel|bias)"
_ORIGINAL_BLOCK_RULES = [  # inside a block_up/block_down: original sub-path -> our sub-path
    (r"residual_block_(\d+)/conv_(\d+)" + _CONV, lambda b, k, x: ("residual_block", int(b), "convs", 2 * int(k) + 1, x)),
    (r"skip_projection" + _CONV, lambda x: ("skip_projection", x)),
    (r"pooling_layer/conv" + _CONV, lambda x: ("pool", "ops", 0, x)),
    (r"unpooling_layer/conv" + _CONV, lambda x: ("unpool", "ops", 0, x)),
    (r"unpooling_layer/scale_bias", lambda: ("unpool", "scale_bias")),
    (r"(posterior_net|prior_net)/conv_(\d+)" + _CONV, lambda net, k, x: (net, 0, "convs", 2 * int(k) + 1, x)),
    (r"(prior|posterior)_gaussian_layer/projection" + _CONV, lambda which, x: (f"{which}_layer", "projection", x)),
    (r"z_projection/z_projection" + _CONV, lambda x: ("z_projection", x)),
]
_ORIGINAL_RULES = [
    (r"bottom_up/input_conv" + _CONV, lambda x: ("bottom_up", "input_conv", x)),
    (r"top_down/output_conv" + _CONV, lambda x: ("top_down", "output_conv", x)),
    (r"top_down/trainable_h", lambda: ("top_down", "trainable_h")),
    (r"bottom_up/block_up_level_(\d+)_downsample/(.+)", lambda i, rest: ("bottom_up", "levels_up_downsample", int(i))),
    (r"bottom_up/block_up_level_(\d+)_(\d+)/(.+)", lambda i, j, rest: ("bottom_up", "levels_up", int(i), int(j))),
    (r"top_down/block_down_level_(\d+)_upsample/(.+)", lambda i, rest: ("top_down", "levels_down_upsample", int(i))),
    (r"top_down/block_down_level_(\d+)_(\d+)/(.+)", lambda i, j, rest: ("top_down", "levels_down", int(i), int(j))),
]


def original_jax_path_to_ours(path):
    """Our param path (tuple) for a '/'-joined path of the original JAX tree."""
    for pattern, build in _ORIGINAL_RULES:
        match = re.fullmatch(pattern, path)
        if match:
            groups = match.groups()
            if pattern.endswith("(.+)"):
                rest = groups[-1]
                for sub_pattern, sub_build in _ORIGINAL_BLOCK_RULES:
                    sub = re.fullmatch(sub_pattern, rest)
                    if sub:
                        return build(*groups) + sub_build(*sub.groups())
                break
            return build(*groups)
    raise ValueError(f"unknown parameter path of the original JAX model: {path}")


def ours_to_original_jax_path(path):
    """The original JAX tree's '/'-joined path of one of our param paths (inverse of the above)."""
    def block(rest):
        match rest:
            case ("residual_block", b, "convs", n, x):
                return f"residual_block_{b}/conv_{(n - 1) // 2}/conv/{x}"
            case ("skip_projection", x):
                return f"skip_projection/conv/{x}"
            case ("pool", "ops", 0, x):
                return f"pooling_layer/conv/conv/{x}"
            case ("unpool", "ops", 0, x):
                return f"unpooling_layer/conv/conv/{x}"
            case ("unpool", "scale_bias"):
                return "unpooling_layer/scale_bias"
            case ("posterior_net" | "prior_net" as net, 0, "convs", n, x):
                return f"{net}/conv_{(n - 1) // 2}/conv/{x}"
            case ("prior_layer" | "posterior_layer" as layer, "projection", x):
                return f"{layer.split('_')[0]}_gaussian_layer/projection/conv/{x}"
            case ("z_projection", x):
                return f"z_projection/z_projection/conv/{x}"
        raise ValueError(f"unknown parameter path {'/'.join(map(str, path))}")

    match tuple(path):
        case ("bottom_up", "input_conv", x) | ("top_down", "output_conv", x):
            return f"{path[0]}/{path[1]}/conv/{x}"
        case ("top_down", "trainable_h"):
            return "top_down/trainable_h"
        case ("bottom_up", "levels_up_downsample", i, *rest):
            return f"bottom_up/block_up_level_{i}_downsample/" + block(tuple(rest))
        case ("bottom_up", "levels_up", i, j, *rest):
            return f"bottom_up/block_up_level_{i}_{j}/" + block(tuple(rest))
        case ("top_down", "levels_down_upsample", i, *rest):
            return f"top_down/block_down_level_{i}_upsample/" + block(tuple(rest))
        case ("top_down", "levels_down", i, j, *rest):
            return f"top_down/block_down_level_{i}_{j}/" + block(tuple(rest))
    raise ValueError(f"unknown parameter path {'/'.join(map(str, path))}")


def _mixtures(ours, num_mixtures):
    """M of a MoL head (None for a Bernoulli head or a tree without the input and output convs)."""
    if any(k not in ours for k in (("bottom_up", "input_conv", "kernel"), ("top_down", "output_conv", "kernel"))):
        return None
    if num_mixtures is not None:
        return num_mixtures
    channels = np.shape(ours[("bottom_up", "input_conv", "kernel")])[2]
    width = np.shape(ours[("top_down", "output_conv", "kernel")])[-1]
    return width // (3 * channels + 1) if width > 1 and width % (3 * channels + 1) == 0 else None


def _unwrap_params(tree):
    while isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    return tree


def import_original_jax_params(tree, *, num_mixtures=None):
    """Param tree of the ORIGINAL JAX implementation (optionally under 'params') -> our nested param dict.

    Renames every path and reorders the MoL output channels of `output_conv` from the
    original's (3M, C) layout to ours (C, 3M). M is inferred from the output width and the input
    channels unless `num_mixtures` is given; a 1-channel Bernoulli head is left as it is.
    Leaves are kept as they are (arrays or shape structs) unless permuted.
    """
    flat = {"/".join(p): v for p, v in flatten_tree(_unwrap_params(tree)).items()}
    ours = {}
    for path, value in flat.items():
        target = original_jax_path_to_ours(path)
        if target in ours:
            raise ValueError(f"two parameters of the original tree map to {'/'.join(map(str, target))}")
        ours[target] = value
    _permute_output(ours, _mixtures(ours, num_mixtures), inverse=False)
    return unflatten_tree(ours)


def export_original_jax_params(params, *, num_mixtures=None):
    """Our nested param dict -> the original JAX implementation's tree (under no 'params' key).

    Inverse of `import_original_jax_params` (MoL output channels back to (3M, C)); for tests and interop.
    """
    ours = dict(flatten_tree(params))
    _permute_output(ours, _mixtures(ours, num_mixtures), inverse=True)
    return unflatten_tree({tuple(ours_to_original_jax_path(p).split("/")): v for p, v in ours.items()})


def _permute_output(flat, num_mixtures, *, inverse):
    """Reorder output_conv channels in place: original -> ours, or ours -> original when `inverse`."""
    if num_mixtures is None:
        return
    channels = np.shape(flat[("bottom_up", "input_conv", "kernel")])[2]
    src = mol_channel_permutation(num_mixtures, channels)
    index = np.argsort(src) if inverse else src
    for leaf in ("kernel", "bias"):
        key = ("top_down", "output_conv", leaf)
        flat[key] = np.asarray(flat[key])[..., index]
