#!/bin/sh
# Remake the pictures of images/ from real runs of this code: the CPU demo (egs/cpu_demo.cfg) trained in
# both frameworks, then synthesize.py's reconstruction (raw and EMA weights), generation and div_stats
# modes on each run, then bench/make_images.py (prior samples, reconstructions, training curves, div_stats
# heat maps, scores.json). About 15 minutes on 2 idle cores. Needs the torch, jax and images extras:
#   .venv/bin/pip install -e '.[torch,jax,images]' && sh images/make.sh
# PYTHON (default: the repository's .venv/bin/python) and WORKDIR (default: a new temporary folder, kept)
# choose the interpreter and where the runs are written.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
work=${WORKDIR:-$(mktemp -d)}
config=$repo/egs/cpu_demo.cfg
frameworks=${FRAMEWORKS:-torch jax}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

newest_report() {
    ls -t $(find "$1" -name reconstruction_metrics.json) | head -n 1
}

for framework in $frameworks; do
    run=$work/$framework
    cd "$repo/efficient_vdvae_$framework"
    "$python" train.py --config "$config" --workdir "$run"
    synthesize() {
        "$python" synthesize.py --config "$config" --workdir "$run" "$@"
    }
    synthesize --set synthesis.synthesis_mode=reconstruction --set synthesis.load_ema_weights=False
    cp "$(newest_report "$run/logs-cpu_demo")" "$run/reconstruction_raw.json"
    synthesize --set synthesis.synthesis_mode=reconstruction --set synthesis.save_target_in_reconstruction=True
    synthesize --set synthesis.synthesis_mode=generation
    synthesize --set synthesis.synthesis_mode=div_stats
done
cd "$repo"
"$python" bench/make_images.py "$work" "$repo/images" --frameworks $frameworks
echo "Runs kept in $work"
