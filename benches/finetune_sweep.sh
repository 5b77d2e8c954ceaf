#!/usr/bin/env bash
# Runs several `koala finetune` configurations of the README main job side by side and
# prints one table of their results. For hyper-parameter studies on a machine with more
# cores than one run uses (each run gets --threads THREADS, default 2).
#
#   benches/finetune_sweep.sh OUT_DIR 'name|extra finetune flags' ['name|flags' ...]
#   e.g. benches/finetune_sweep.sh runs/sweep 'eta03|--lr 0.03' 'sq05|--lr 0.05 --loss-var square'
#
# Environment: KOALA (the koala binary, default target/release/koala), THREADS (2),
# BASE (the flags shared by every run, default: the README main job without optimizer flags).
set -euo pipefail
out=${1:?usage: finetune_sweep.sh OUT_DIR 'name|flags' ...}
shift
koala=${KOALA:-target/release/koala}
threads=${THREADS:-2}
base=${BASE:---model models/mobilenet_v2/model.onnx --data data/fashion_mnist_small --num-classes 10 --image-size 96 --batch-size 32 --epochs 3 --no-augment --schedule cosine}
[ -x "$koala" ] || { echo "error: koala binary $koala not found or not executable (cargo build --release, or set KOALA)" >&2; exit 1; }
mkdir -p "$out"
pids=()
for spec in "$@"; do
  name=${spec%%|*}
  flags=${spec#*|}
  # shellcheck disable=SC2086 # flags are word lists on purpose
  "$koala" finetune $base $flags --threads "$threads" --run-dir "$out/$name" >"$out/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
printf '| run | flags | test top-1 after | test loss after | samples/s |\n|---|---|---|---|---|\n'
for spec in "$@"; do
  name=${spec%%|*}
  flags=${spec#*|}
  log="$out/$name.log"
  after=$(grep -o 'accuracy after: *[0-9.]*% (loss [0-9.]*' "$log" | sed 's/accuracy after: *//; s/ (loss / | /' || true)
  sps=$(grep -o '[0-9.]* samples/s, unreadable' "$log" | cut -d' ' -f1 || true)
  printf '| %s | `%s` | %s | %s |\n' "$name" "$flags" "${after:-FAILED (see $log)}" "${sps:-}"
done
exit $status
