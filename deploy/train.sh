#!/bin/sh
# Entry point of the training image: train one model, then export it into the models folder
# the service reads, adding it to (or replacing it in) that folder's manifest.json.
#
#   train.sh MODEL [digits train options...]
#
# MODEL is the architecture and the model's name (lenet5 or mlp); the options go to
# `digits train` unchanged (see `digits train --help`), e.g. the recipe of `make train-lenet5`:
#   train.sh lenet5 --augment --epochs 20 --lr 0.002 --dropout 0.1
#
# Folders (mount them as volumes to keep what is written):
#   DIGITS_MODELS_DIR  where MODEL.onnx and manifest.json are written (default: /app/models)
#   DIGITS_RUNS_DIR    run directories: metrics, curves, checkpoints (default: /app/runs)
#   DIGITS_DATA_DIR    MNIST files, downloaded on first use and checksum-verified (default: ~/.cache/digits)
set -eu

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: train.sh MODEL [digits train options...]   (MODEL: lenet5 or mlp)" >&2
    echo "example: train.sh lenet5 --augment --epochs 20 --lr 0.002 --dropout 0.1" >&2
    exit 2
fi
model=$1
shift
models_dir=${DIGITS_MODELS_DIR:-/app/models}
runs_dir=${DIGITS_RUNS_DIR:-/app/runs}

for dir in "$models_dir" "$runs_dir"; do
    mkdir -p "$dir" 2>/dev/null || true
    if [ ! -w "$dir" ]; then
        echo "error: cannot write to $dir (running as uid $(id -u)); make the mounted folder writable for" \
             "that user, or run as its owner: DIGITS_UID=\$(id -u) DIGITS_GID=\$(id -g) (and mkdir -p it first)" >&2
        exit 2
    fi
done

digits train --model "$model" --name "$model" --out "$runs_dir/$model" "$@"
digits export "$runs_dir/$model" --out "$models_dir/$model.onnx" --manifest "$models_dir/manifest.json"
echo "wrote $models_dir/$model.onnx; restart the API replicas to serve it"
