#!/bin/sh
# Delete a run: its logs folder (saved config, TensorBoard events, synthesis images, latents) and
# its checkpoints folder, both in the current directory.
# Usage: sh reset.sh <run.name>
set -eu

usage="usage: sh reset.sh <run.name>   (removes ./logs-<run.name> and ./checkpoints-<run.name>)"
if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "$usage" >&2
    exit 2
fi
name=$1
case "$name" in
    */*)
        echo "reset.sh: a run name must not contain '/': $name" >&2
        echo "$usage" >&2
        exit 2
        ;;
esac

removed=0
for path in "logs-$name" "checkpoints-$name"; do
    if [ -e "$path" ] || [ -L "$path" ]; then
        rm -rf -- "$path"
        echo "removed $path"
        removed=1
    fi
done
if [ "$removed" -eq 0 ]; then
    echo "nothing to remove: no logs-$name or checkpoints-$name in $(pwd)"
fi
