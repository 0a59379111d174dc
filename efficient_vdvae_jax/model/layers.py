"""Convolutions, residual bottleneck cells and the pooling/unpooling layers. NHWC.

Attribute names and list indices follow the PyTorch modules, so the nnx state path of every parameter
is the torch state_dict name split at '.', with `weight` -> `kernel` (HWIO). Lists of sub-modules are
plain Python lists (list positions become int path entries).

All modules of the model are nnx graph nodes with `pytree=False`: they are used through the nnx graph
API (nnx.split / merge / state / jit / grad), and skipping the per-attribute pytree checks makes
building the big configs (thousands of parameters) faster, abstractly or not.
"""
import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
from flax import nnx

LEAKY_SLOPE = 0.1


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class ParamKeys:
    """Fresh parameter-init keys fold_in(key, 1), fold_in(key, 2), ...: a plain counter, cheap to trace.

    (Drawing from an nnx.Rngs stream per parameter makes abstract evaluation of the large configs
    much slower: each draw updates a traced counter variable.)
    """

    def __init__(self, key):
        self.key, self.count = key, 0

    def __call__(self):
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def _uniform(key, shape, bound):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def same_padding(kernel_size, stride):
    """Per-axis (low, high) 'same' padding of the PyTorch model: total k - s, the odd pixel low (left/top)."""
    return tuple(((k - s + 1) // 2, (k - s) // 2) for k, s in zip(kernel_size, stride))


class Conv2d(nnx.Module, pytree=False):
    """Conv with 'same' padding, xavier-uniform kernel (bound times `init_scale`) and zero bias.

    With `default_init=True` it uses PyTorch's default initialisation instead (kernel and bias
    U(+-1/sqrt(fan_in))), as the first conv of every residual cell. kernel (kh, kw, in, out), bias (out,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, init_scale=1.0, default_init=False, *,
                 keys):
        kh, kw = _pair(kernel_size)
        self.stride = _pair(stride)
        shape = (kh, kw, in_channels, out_channels)
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        if default_init:
            bound = 1.0 / math.sqrt(fan_in)
            kernel = _uniform(keys(), shape, bound)
            bias = _uniform(keys(), (out_channels,), bound)
        else:
            kernel = _uniform(keys(), shape, math.sqrt(6.0 / (fan_in + fan_out)) * init_scale)
            bias = jnp.zeros((out_channels,), jnp.float32)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)

    def __call__(self, x):
        y = conv(x, self.kernel[...], self.stride)
        return y + self.bias[...].astype(y.dtype)


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_COMPUTE_DTYPE = contextvars.ContextVar("compute_dtype", default=None)


@contextlib.contextmanager
def compute_dtype(dtype):
    """While tracing inside it, convolutions and products cast their inputs and kernels to `dtype` (None: as they
    come) and make outputs of `dtype`: [train] mixed_precision = 'bf16'. Gradients of the float32 kernels stay
    float32 (the cast is differentiated)."""
    token = _COMPUTE_DTYPE.set(dtype)
    try:
        yield
    finally:
        _COMPUTE_DTYPE.reset(token)


def _cast(*arrays):
    dtype = _COMPUTE_DTYPE.get()
    return arrays if dtype is None else tuple(a.astype(dtype) for a in arrays)


def conv(x, kernel, stride=(1, 1)):
    """Conv2d's product, without the bias: a 1x1 stride-1 conv as one matrix product, the others XLA's
    convolution with 'same' padding (on the CPU its Eigen path, utils/cpu.py, gradients included)."""
    if kernel.shape[:2] == (1, 1) and tuple(stride) == (1, 1):
        return conv1x1(x, kernel)
    x, kernel = _cast(x, kernel)
    return jax.lax.conv_general_dilated(x, kernel, stride, same_padding(kernel.shape[:2], stride),
                                        dimension_numbers=_DIMENSIONS)


def conv1x1(x, kernel):
    """A 1x1 conv as one matrix product over all pixels (NHWC): whole training steps are faster with it
    than with XLA:CPU's convolution, through YNNPACK or Eigen (bench/README.md)."""
    batch, height, width, channels = x.shape
    x, kernel = _cast(x, kernel)
    y = jnp.dot(x.reshape(-1, channels), kernel.reshape(channels, -1))
    return y.reshape(batch, height, width, -1)


def silu(x):
    """SiLU; on the CPU computed on its own: XLA:CPU would otherwise fuse it into the conv or dot that reads it,
    and the fused product runs slower than the library GEMM on a plain input (bench/README.md). Other
    platforms (GPU) fuse it freely: the choice is made when the program is lowered for its platform."""
    return jax.lax.platform_dependent(x, cpu=lambda v: jax.lax.optimization_barrier(jax.nn.silu(v)),
                                      default=jax.nn.silu)


class ResidualConvCell(nnx.Module, pytree=False):
    """Pre-activation bottleneck: SiLU-conv (1x1 or k) -> n_layers x SiLU-conv(k) -> SiLU-conv (1x1 or k).

    `convs` holds the convs at odd indices 1, 3, 5, ... (even slots are parameter-free placeholders for
    the SiLUs), matching the PyTorch names `convs.1`, `convs.3`, ...
    """

    def __init__(self, n_layers, in_filters, bottleneck_ratio, kernel_size, init_scale, use_1x1_conv,
                 residual=True, output_ratio=1.0, *, keys):
        if residual and output_ratio != 1.0:
            raise ValueError("a residual cell must keep its width (output_ratio 1)")
        mid = int(in_filters * bottleneck_ratio)
        out = int(in_filters * output_ratio)
        edge_kernel = 1 if use_1x1_conv else kernel_size
        convs = [None, Conv2d(in_filters, mid, edge_kernel, default_init=True, keys=keys)]
        for _ in range(n_layers):
            convs += [None, Conv2d(mid, mid, kernel_size, keys=keys)]
        convs += [None, Conv2d(mid, out, edge_kernel, init_scale=init_scale, keys=keys)]
        self.convs = convs
        self.residual = residual

    def __call__(self, x, extra=None):
        """cell(x); with `extra`, cell(concat([x, extra])) of a non-residual cell. A 1x1 first conv then
        takes the two inputs through the two halves of its kernel, without the concatenation."""
        first = self.convs[1]
        if extra is None:
            y = first(silu(x))
        elif self.residual:
            raise ValueError("a residual cell takes one input")
        elif first.kernel.shape[:2] == (1, 1):
            kernel, split = first.kernel[...], x.shape[-1]
            y = conv1x1(silu(x), kernel[:, :, :split]) + conv1x1(silu(extra), kernel[:, :, split:])
            y = y + first.bias[...].astype(y.dtype)
        else:
            y = first(silu(jnp.concatenate([x, extra], axis=-1)))
        for i in range(3, len(self.convs), 2):
            y = self.convs[i](silu(y))
        return x + y if self.residual else y


class PoolLayer(nnx.Module, pytree=False):
    """Strided conv (kernel = stride) then LeakyReLU(0.1): bottom-up downsampling. Conv at `ops[0]`."""

    def __init__(self, in_filters, filters, stride, *, keys):
        self.ops = [Conv2d(in_filters, filters, stride, stride=stride, keys=keys)]

    def __call__(self, x):
        return jax.nn.leaky_relu(self.ops[0](x), LEAKY_SLOPE)


class UnpoolLayer(nnx.Module, pytree=False):
    """1x1 conv, LeakyReLU(0.1), nearest upsampling by `stride`, plus a per-position trainable bias.

    `scale_bias` (1, R, R, filters) is created here, zero, with R the output resolution.
    """

    def __init__(self, in_filters, filters, stride, out_resolution, *, keys):
        self.scale_bias = nnx.Param(jnp.zeros((1, out_resolution, out_resolution, filters), jnp.float32))
        self.ops = [Conv2d(in_filters, filters, 1, keys=keys)]
        self.stride = stride

    def __call__(self, x):
        y = jax.nn.leaky_relu(self.ops[0](x), LEAKY_SLOPE)
        y = jnp.repeat(jnp.repeat(y, self.stride, axis=1), self.stride, axis=2)  # nearest neighbour
        return y + self.scale_bias[...]
