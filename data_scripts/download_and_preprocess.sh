#!/usr/bin/env bash
# Download and prepare one dataset into <repo>/datasets/ (archives are kept in <repo>/dataset_dumps/).
#
#   bash data_scripts/download_and_preprocess.sh {imagenet32|imagenet64|celeba|celebahq|ffhq}
#
# Results (the paths of the egs/ configs, relative to a framework folder):
#   imagenet32  datasets/imagenet_32/{train_data,val_data}    .npz batches
#   imagenet64  datasets/imagenet_64/{train_data,val_data}    .npz batches
#   celeba      datasets/celebA/{train_data,val_data,synthesis_data}   148x148 crops, official partition
#   celebahq    datasets/celebAHQ/{train_data,val_data}       1024x1024, 3000 val (seed 0)
#   ffhq        datasets/ffhq/{train_data,val_data}           1024x1024, 7000 val (seed 0)
# MNIST and CIFAR-10 need no preparation: they are downloaded on first use into [data] download_dir.
# A download resumes where it stopped; an archive already in the dumps folder is not downloaded again.
# Environment: DUMPS_DIR, DATASETS_DIR (defaults above), PYTHON (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
dumps="${DUMPS_DIR:-$repo/dataset_dumps}"
datasets="${DATASETS_DIR:-$repo/datasets}"
python="${PYTHON:-python3}"
IMAGENET_URL="https://image-net.org/data/downsample"
CELEBAHQ_DRIVE_ID="1-LFFkFKNuyBO1sjkM4t_AArIXr3JAOyl"
FFHQ_URL="https://archive.org/download/ffhq-dataset/images1024x1024.zip"

usage() { echo "usage: $0 {imagenet32|imagenet64|celeba|celebahq|ffhq}" >&2; exit 2; }
die() { echo "error: $*" >&2; exit 1; }

fresh() {  # fresh DIR: refuse to overwrite a prepared dataset
  [[ ! -e "$1" ]] || die "$1 already exists; delete it to prepare it again"
}

fetch() {  # fetch URL FILE: download URL to FILE unless FILE exists, resuming FILE.part
  local url="$1" file="$2"
  if [[ -f "$file" ]]; then
    echo "using $file"
    return
  fi
  command -v curl >/dev/null || die "curl is not installed; download $url into $file by hand"
  echo "downloading $url"
  curl -fL --retry 3 -C - -o "$file.part" "$url" || die "download of $url failed; download it into $file by hand"
  mv "$file.part" "$file"
}

unpack() {  # unpack ZIP DIR
  command -v unzip >/dev/null || die "unzip is not installed"
  echo "unpacking $1"
  unzip -q -o "$1" -d "$2" || die "cannot unpack $1; delete it to download it again"
}

imagenet() {  # imagenet RES
  local res="$1" out="$datasets/imagenet_$1"
  fresh "$out"
  local zips=("Imagenet${res}_train_npz.zip" "Imagenet${res}_val_npz.zip")
  if [[ "$res" == 64 ]]; then
    zips=("Imagenet64_train_part1_npz.zip" "Imagenet64_train_part2_npz.zip" "Imagenet64_val_npz.zip")
  fi
  for zip in "${zips[@]}"; do
    fetch "$IMAGENET_URL/$zip" "$dumps/$zip"
    unpack "$dumps/$zip" "$dumps"
  done
  mkdir -p "$out"
  if [[ "$res" == 64 ]]; then
    mv "$dumps/Imagenet64_train_part1_npz" "$out/train_data"
    mv "$dumps/Imagenet64_train_part2_npz"/* "$out/train_data/"
    rmdir "$dumps/Imagenet64_train_part2_npz"
  else
    mv "$dumps/Imagenet${res}_train_npz" "$out/train_data"
  fi
  mv "$dumps/Imagenet${res}_val_npz" "$out/val_data"
}

celeba() {
  local zip="$dumps/img_align_celeba.zip" partition="$dumps/list_eval_partition.txt"
  fresh "$datasets/celebA"
  if [[ ! -f "$zip" || ! -f "$partition" ]]; then
    die "place img_align_celeba.zip and list_eval_partition.txt (CelebA 'Align&Cropped Images' and" \
        "'Eval', https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) in $dumps, then run this again"
  fi
  unpack "$zip" "$dumps"
  "$python" "$here/preprocess_celeba64.py" "$dumps/img_align_celeba" "$partition" "$datasets/celebA"
}

celebahq() {
  local zip="$dumps/data1024x1024.zip"
  fresh "$datasets/celebAHQ"
  fetch "https://drive.usercontent.google.com/download?id=$CELEBAHQ_DRIVE_ID&export=download&confirm=t" "$zip"
  if ! unzip -l "$zip" >/dev/null 2>&1; then
    mv "$zip" "$zip.bad"
    die "$zip is not a zip archive (Google Drive may have refused the download; moved to $zip.bad);" \
        "download https://drive.google.com/file/d/$CELEBAHQ_DRIVE_ID into $zip by hand"
  fi
  unpack "$zip" "$dumps/data1024x1024"
  "$python" "$here/random_split.py" "$dumps/data1024x1024" "$datasets/celebAHQ" 3000 --seed 0 --move
}

ffhq() {
  local zip="$dumps/images1024x1024.zip"
  fresh "$datasets/ffhq"
  fetch "$FFHQ_URL" "$zip"
  unpack "$zip" "$dumps"
  # random_split.py flattens the archive's 1000-image sub-folders and leaves LICENSE.txt behind.
  "$python" "$here/random_split.py" "$dumps/images1024x1024" "$datasets/ffhq" 7000 --seed 0 --move
}

[[ $# -eq 1 ]] || usage
case "$1" in
  imagenet32 | imagenet64 | celeba | celebahq | ffhq) ;;
  *) usage ;;
esac
mkdir -p "$dumps" "$datasets"
case "$1" in
  imagenet32) imagenet 32 ;;
  imagenet64) imagenet 64 ;;
  *) "$1" ;;
esac
echo "finished preparing $1 in $datasets"
