#!/bin/sh
# Run a command in the Efficient-VDVAE container (default: an interactive shell), building the image
# from build/ first when it does not exist (or when REBUILD=1). The repository is mounted at
# /workspace/Efficient-VDVAE, the working directory; ~/.cache/efficient_vdvae (MNIST / CIFAR-10
# downloads, decoded caches) is shared with the host.
#
#   sh docker_run.sh
#   sh docker_run.sh sh -c "cd efficient_vdvae_torch && sh train.sh --config ../egs/cifar10_baseline.cfg"
#   GPUS='"device=0,1"' sh docker_run.sh
#
# Environment: IMAGE (default efficient_vdvae_image), REBUILD=1, GPUS (default all), SHM_SIZE (default 64g).
# POSIX sh (dash, bash): no pipelines, so no need for pipefail.
set -eu

repo="$(cd "$(dirname "$0")" && pwd)"
image="${IMAGE:-efficient_vdvae_image}"
workdir=/workspace/Efficient-VDVAE
cache="${XDG_CACHE_HOME:-$HOME/.cache}/efficient_vdvae"

if [ "${REBUILD:-0}" = 1 ] || ! docker image inspect "$image" >/dev/null 2>&1; then
  docker build -t "$image" "$repo/build"  # what `cd build && docker build -t efficient_vdvae_image .` does
fi
mkdir -p "$cache"
tty_flag=
if [ -t 0 ] && [ -t 1 ]; then
  tty_flag=-it
fi
exec docker run --rm ${tty_flag:+"$tty_flag"} \
  --gpus "${GPUS:-all}" --shm-size="${SHM_SIZE:-64g}" --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$repo:$workdir" -v "$cache:/root/.cache/efficient_vdvae" -w "$workdir" \
  "$image" "$@"
