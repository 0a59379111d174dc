"""Time XLA:CPU's two convolution paths, YNNPACK (this jaxlib's default) and Eigen, at the example configs' shapes.

    python bench/conv_paths.py [--rounds 7] [--calls 5]

For each k x k convolution of the models (stride 1, 'same', NHWC): the forward, and the forward with both
gradients as a training step runs them, in milliseconds per call. Both paths are compiled in one process
and alternate call batch by call batch; the medians over the rounds are printed, one JSON line per shape.
`efficient_vdvae_jax.utils.cpu` sends the convolutions of train.py and synthesize.py to Eigen because of these
numbers.
"""
import argparse
import json
import statistics
import time

import jax

from efficient_vdvae_jax.model.layers import conv  # the model's own k x k path: XLA's convolution, 'same'

# (config, batch, side, channels, kernel size): the middle convolutions of the residual cells
SHAPES = [
    ("cifar10_baseline", 8, 32, 96, 3), ("cifar10_baseline", 8, 32, 48, 3), ("cifar10_baseline", 8, 16, 96, 3),
    ("cifar10_baseline", 8, 8, 96, 3), ("cifar10_baseline", 8, 4, 96, 3),
    ("binarized_mnist_baseline", 16, 32, 64, 3), ("binarized_mnist_baseline", 16, 16, 64, 3),
    ("binarized_mnist_baseline", 16, 8, 128, 3), ("binarized_mnist_baseline", 16, 4, 256, 3),
]
# Only convolutions are compiled here, so the one setting that differs is where they go.
PATHS = {"ynnpack": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
         "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def forward_and_gradients(x, kernel, grad):
    out, vjp = jax.vjp(conv, x, kernel)
    return out, vjp(grad)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="calls per timing")
    args = parser.parse_args()
    for config, batch, side, channels, k in SHAPES:
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (batch, side, side, channels))
        kernel = jax.random.normal(keys[1], (k, k, channels, channels)) * 0.1
        grad = jax.random.normal(keys[2], (batch, side, side, channels))
        programs = {}
        for path, options in PATHS.items():
            programs[path, "forward_ms"] = (jax.jit(conv).lower(x, kernel).compile(options), (x, kernel))
            programs[path, "with_gradients_ms"] = (
                jax.jit(forward_and_gradients).lower(x, kernel, grad).compile(options), (x, kernel, grad))
        times = {key: [] for key in programs}
        for _ in range(args.rounds):
            for key, (program, inputs) in programs.items():
                jax.block_until_ready(program(*inputs))
                start = time.perf_counter()
                for _ in range(args.calls):
                    jax.block_until_ready(program(*inputs))
                times[key].append((time.perf_counter() - start) / args.calls * 1e3)
        record = {"config": config, "shape": [batch, side, side, channels], "kernel": k}
        for path in PATHS:
            record[path] = {kind: round(statistics.median(times[path, kind]), 3)
                            for kind in ("forward_ms", "with_gradients_ms")}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
