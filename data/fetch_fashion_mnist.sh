#!/usr/bin/env bash
# Fetches the full Fashion-MNIST (60 000 train + 10 000 test images, IDX gzip
# files) from the Debian package `dataset-fashion-mnist` into
# data/fashion_mnist/ (or the folder given as $1), without installing it
# system-wide. Needs apt-get and dpkg-deb (Debian/Ubuntu). Licence: MIT,
# Copyright 2017 Zalando SE (see data/fashion_mnist_small/README.md).
set -euo pipefail
out="${1:-$(dirname "$0")/fashion_mnist}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download dataset-fashion-mnist 2>/dev/null; then
  echo "apt-get could not download dataset-fashion-mnist; running 'apt-get update' first" >&2
  apt-get update -qq
  apt-get download dataset-fashion-mnist
fi
dpkg-deb -x dataset-fashion-mnist_*.deb root
src=root/usr/share/datasets/fashion-mnist
test -f "$src/train-images-idx3-ubyte.gz" || { echo "unexpected package layout: no $src/train-images-idx3-ubyte.gz" >&2; exit 1; }
cd - >/dev/null
mkdir -p "$out"
cp "$work/$src"/*-ubyte.gz "$out"/
echo "wrote $(ls "$out" | wc -l) files to $out; train with: koala finetune --data $out ..."
