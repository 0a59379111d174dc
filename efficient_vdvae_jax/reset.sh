#!/bin/sh
# sh reset.sh <run.name>: remove logs-<run.name>/ and checkpoints-<run.name>/ in the current directory.
# The run folders have the same layout in both frameworks, so this is the PyTorch folder's script.
exec sh "$(dirname "$0")/../efficient_vdvae_torch/reset.sh" "$@"
