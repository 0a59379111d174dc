#!/bin/sh
# Launch PyTorch training with torchrun (through launch.py, which ends with the training processes' exit
# code: 2 for a refused input, 143 / 130 after a clean stop on SIGTERM / Ctrl-C): one process per GPU
# (or one CPU process without GPUs).
#   sh train.sh [--config PATH] [--set section.key=value ...]
# Multi-node: run the same command on every node, with the same environment variables
#   NUM_NODES=2 RDZV_ENDPOINT=host0:29500 sh train.sh ...
# NUM_NODES       number of nodes (default 1: a standalone run on this node)
# RDZV_ENDPOINT   host:port of torchrun's c10d rendezvous, reachable from every node (e.g. the first node)
# RDZV_ID         name of the job, the same on every node (default efficient_vdvae; SLURM: the job id)
# NUM_GPUS_PER_NODE  processes per node (default: the GPUs of this node, or 1)
# Global ranks are given by the rendezvous; global rank 0 writes the checkpoints and logs, so [run] workdir
# must be on a file system that every node shares. See egs/train_multinode.sbatch for SLURM.
# TORCHRUN_ARGS, when set, replaces the rendezvous options above (any torchrun options).
set -eu  # POSIX sh (users run `sh train.sh`, and sh is dash on Debian/Ubuntu): no pipelines, no pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${NUM_GPUS_PER_NODE:-}" ]; then
  NUM_GPUS_PER_NODE="$("${PYTHON:-python}" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
rendezvous="--standalone --nnodes=1"
if [ "${NUM_NODES:-1}" != 1 ]; then
  if [ -z "${RDZV_ENDPOINT:-}" ]; then
    echo "error: NUM_NODES=$NUM_NODES needs RDZV_ENDPOINT=host:port (the same on every node, e.g. the first node's host name and a free port)" >&2
    exit 2
  fi
  rendezvous="--nnodes=$NUM_NODES --rdzv_backend=c10d --rdzv_endpoint=$RDZV_ENDPOINT --rdzv_id=${RDZV_ID:-efficient_vdvae}"
fi
export NCCL_LL_THRESHOLD="${NCCL_LL_THRESHOLD:-0}"
export TORCH_CPP_LOG_LEVEL="${TORCH_CPP_LOG_LEVEL:-ERROR}"  # no C++ warnings with stack frames when a node is lost
# shellcheck disable=SC2086
exec "${PYTHON:-python}" "$here/launch.py" ${TORCHRUN_ARGS:-$rendezvous} \
  --nproc_per_node="$NUM_GPUS_PER_NODE" "$here/train.py" "$@"
