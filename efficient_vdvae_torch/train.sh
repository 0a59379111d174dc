#!/bin/sh
# Launch PyTorch training with torchrun (through launch.py, which ends with the training processes' exit
# code: 2 for a refused input, 143 / 130 after a clean stop on SIGTERM / Ctrl-C): one process per GPU
# (or one CPU process without GPUs).
#   sh train.sh [--config PATH] [--set section.key=value ...]
# Multi-node: pass torchrun's rendezvous options through TORCHRUN_ARGS, e.g.
#   TORCHRUN_ARGS="--nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=host0:29500" sh train.sh
set -eu  # POSIX sh (users run `sh train.sh`, and sh is dash on Debian/Ubuntu): no pipelines, no pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${NUM_GPUS_PER_NODE:-}" ]; then
  NUM_GPUS_PER_NODE="$("${PYTHON:-python}" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
export NCCL_LL_THRESHOLD="${NCCL_LL_THRESHOLD:-0}"
# shellcheck disable=SC2086
exec "${PYTHON:-python}" "$here/launch.py" ${TORCHRUN_ARGS:---standalone --nnodes=1} \
  --nproc_per_node="$NUM_GPUS_PER_NODE" "$here/train.py" "$@"
