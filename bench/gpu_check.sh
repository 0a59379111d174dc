#!/bin/sh
# On a machine with CUDA: both frameworks' training-step benchmarks on cifar10_baseline and ffhq256_8bits_baseline
# at their config batch sizes (fp32 with TF32 off and on, bf16, torch.compile, channels-last, activation
# checkpointing), images/s, peak GPU memory and the loss after a few steps, into one JSON file, in under 8 minutes.
#   sh bench/gpu_check.sh [OUTPUT.json]     (default bench/gpu_check.json; PYTHON=... picks the interpreter)
# Without CUDA it says so and exits 0 without running or writing anything.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
