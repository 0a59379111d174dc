#!/bin/sh
# Download and prepare one dataset into <repo>/datasets/ (archives are kept in <repo>/dataset_dumps/).
#
#   sh data_scripts/download_and_preprocess.sh {imagenet32|imagenet64|celeba|celebahq|ffhq}
#   cd data_scripts && sh download_and_preprocess.sh celeba       (as in the original README)
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
# POSIX sh (dash, bash, busybox ash): no pipelines, so no need for pipefail.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
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
  if [ -e "$1" ]; then die "$1 already exists; delete it to prepare it again"; fi
}

fetch() {  # fetch URL FILE: download URL to FILE unless FILE exists, resuming FILE.part
  if [ -f "$2" ]; then
    echo "using $2"
    return 0
  fi
  command -v curl >/dev/null || die "curl is not installed; download $1 into $2 by hand"
  echo "downloading $1"
  curl -fL --retry 3 -C - -o "$2.part" "$1" || die "download of $1 failed; download it into $2 by hand"
  mv "$2.part" "$2"
}

unpack() {  # unpack ZIP DIR
  command -v unzip >/dev/null || die "unzip is not installed"
  echo "unpacking $1"
  unzip -q -o "$1" -d "$2" || die "cannot unpack $1; delete it to download it again"
}

imagenet() {  # imagenet RES
  imagenet_out="$datasets/imagenet_$1"
  fresh "$imagenet_out"
  if [ "$1" = 64 ]; then
    imagenet_zips="Imagenet64_train_part1_npz.zip Imagenet64_train_part2_npz.zip Imagenet64_val_npz.zip"
  else
    imagenet_zips="Imagenet$1_train_npz.zip Imagenet$1_val_npz.zip"
  fi
  for zip in $imagenet_zips; do  # names without spaces: word splitting is the list
    fetch "$IMAGENET_URL/$zip" "$dumps/$zip"
    unpack "$dumps/$zip" "$dumps"
  done
  mkdir -p "$imagenet_out"
  if [ "$1" = 64 ]; then
    mv "$dumps/Imagenet64_train_part1_npz" "$imagenet_out/train_data"
    mv "$dumps/Imagenet64_train_part2_npz"/* "$imagenet_out/train_data/"
    rmdir "$dumps/Imagenet64_train_part2_npz"
  else
    mv "$dumps/Imagenet$1_train_npz" "$imagenet_out/train_data"
  fi
  mv "$dumps/Imagenet$1_val_npz" "$imagenet_out/val_data"
}

celeba() {
  celeba_zip="$dumps/img_align_celeba.zip"
  celeba_partition="$dumps/list_eval_partition.txt"
  fresh "$datasets/celebA"
  if [ ! -f "$celeba_zip" ] || [ ! -f "$celeba_partition" ]; then
    die "place img_align_celeba.zip and list_eval_partition.txt (CelebA 'Align&Cropped Images' and" \
        "'Eval', https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) in $dumps, then run this again"
  fi
  unpack "$celeba_zip" "$dumps"
  "$python" "$here/preprocess_celeba64.py" "$dumps/img_align_celeba" "$celeba_partition" "$datasets/celebA"
}

celebahq() {
  celebahq_zip="$dumps/data1024x1024.zip"
  fresh "$datasets/celebAHQ"
  fetch "https://drive.usercontent.google.com/download?id=$CELEBAHQ_DRIVE_ID&export=download&confirm=t" \
        "$celebahq_zip"
  if ! unzip -l "$celebahq_zip" >/dev/null 2>&1; then
    mv "$celebahq_zip" "$celebahq_zip.bad"
    die "$celebahq_zip is not a zip archive (Google Drive may have refused the download; moved to" \
        "$celebahq_zip.bad); download https://drive.google.com/file/d/$CELEBAHQ_DRIVE_ID into $celebahq_zip by hand"
  fi
  unpack "$celebahq_zip" "$dumps/data1024x1024"
  "$python" "$here/random_split.py" "$dumps/data1024x1024" "$datasets/celebAHQ" 3000 --seed 0 --move
}

ffhq() {
  ffhq_zip="$dumps/images1024x1024.zip"
  fresh "$datasets/ffhq"
  fetch "$FFHQ_URL" "$ffhq_zip"
  unpack "$ffhq_zip" "$dumps"
  # random_split.py flattens the archive's 1000-image sub-folders and leaves LICENSE.txt behind.
  "$python" "$here/random_split.py" "$dumps/images1024x1024" "$datasets/ffhq" 7000 --seed 0 --move
}

[ "$#" -eq 1 ] || usage
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
