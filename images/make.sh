#!/bin/sh
# Remake the pictures of images/ from real runs of this code: the CPU demo (egs/cpu_demo.cfg) trained in
# both frameworks, then synthesize.py's reconstruction (raw and EMA weights), generation and div_stats
# modes on each run, then bench/make_images.py (sample grids, generation per temperature, reconstructions,
# training curves, div_stats heat maps, scores.json). About 15 minutes on 2 idle cores. Needs the torch,
# jax and images extras:
#   .venv/bin/pip install -e '.[torch,jax,images]' && sh images/make.sh
# PYTHON (default: the repository's .venv/bin/python), WORKDIR (default: a new temporary folder, kept)
# and FRAMEWORKS (default: torch jax) choose the interpreter, where the runs are written and which run.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
work=${WORKDIR:-$(mktemp -d)}
config=$repo/egs/cpu_demo.cfg
frameworks=${FRAMEWORKS:-torch jax}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

for framework in $frameworks; do
    run=$work/$framework
    cd "$repo/efficient_vdvae_$framework"
    "$python" train.py --config "$config" --workdir "$run"
    synthesize() {
        "$python" synthesize.py --config "$config" --workdir "$run" "$@"
    }
    synthesize --set synthesis.synthesis_mode=reconstruction --set synthesis.load_ema_weights=False
    synthesize --set synthesis.synthesis_mode=reconstruction --set synthesis.save_target_in_reconstruction=True
    synthesize --set synthesis.synthesis_mode=generation --set synthesis.n_generation_batches=4
    synthesize --set synthesis.synthesis_mode=div_stats
done
cd "$repo"
"$python" bench/make_images.py "$work" "$repo/images" --frameworks $frameworks
echo "Runs kept in $work"
