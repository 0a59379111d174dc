"""The GEMM and 3x3-convolution throughput of this process's framework, at its current thread count.

A square fp32/bf16 matrix product (2048 x 2048 x 2048 on a CPU, 8192 on a GPU) and a 3x3 convolution at a shape of the models
(8 x 96 x 32 x 32, 96 -> 96 channels, 'same' padding, the framework's fast layout), best of a few runs,
in GFLOP/s (2 FLOP per multiply-add). They are the limits a training step's FLOP are compared with.
"""
import time

GEMM_SIZE = {"cpu": 2048, "gpu": 8192}
CONV_SHAPE = (8, 96, 32, 32)  # batch, channels, height, width
REPEATS = 5


def _gemm_flops(size):
    return 2 * size ** 3


def _conv_flops():
    batch, channels, height, width = CONV_SHAPE
    return 2 * batch * height * width * channels * channels * 9


def _best_seconds(run):
    run()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def torch_peaks(dtypes):
    """{'<dtype>_gemm_gflops': ..., '<dtype>_conv3x3_gflops': ...} measured with torch (CPU or CUDA)."""
    import torch
    from torch.nn import functional as F
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    found = {}
    for name in dtypes:
        dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[name])
        size = GEMM_SIZE["gpu" if device == "cuda" else "cpu"]
        a = torch.randn(size, size, device=device, dtype=dtype)
        x = torch.randn(CONV_SHAPE, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(CONV_SHAPE[1], CONV_SHAPE[1], 3, 3, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        with torch.no_grad():
            gemm = _best_seconds(lambda: (torch.mm(a, a), sync()))
            conv = _best_seconds(lambda: (F.conv2d(x, w, padding=1), sync()))
        found[f"{name}_gemm_gflops"] = round(_gemm_flops(size) / gemm / 1e9, 1)
        found[f"{name}_conv3x3_gflops"] = round(_conv_flops() / conv / 1e9, 1)
    return found


def jax_peaks(dtypes):
    """The same two figures measured with jitted XLA programs (NHWC convolution) on JAX's first device."""
    import jax
    import jax.numpy as jnp
    batch, channels, height, width = CONV_SHAPE
    dot = jax.jit(jnp.dot)
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    found = {}
    for name in dtypes:
        dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[name]
        key = jax.random.key(0)
        size = GEMM_SIZE["cpu" if jax.default_backend() == "cpu" else "gpu"]
        a = jax.random.normal(key, (size, size), dtype)
        x = jax.random.normal(key, (batch, height, width, channels), dtype)
        w = jax.random.normal(key, (3, 3, channels, channels), dtype)
        gemm = _best_seconds(lambda: dot(a, a).block_until_ready())
        seconds = _best_seconds(lambda: conv(x, w).block_until_ready())
        found[f"{name}_gemm_gflops"] = round(_gemm_flops(size) / gemm / 1e9, 1)
        found[f"{name}_conv3x3_gflops"] = round(_conv_flops() / seconds / 1e9, 1)
    return found
