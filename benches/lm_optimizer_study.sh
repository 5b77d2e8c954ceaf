#!/usr/bin/env bash
# Optimizer study on the tiny-LM job (README "A tiny LM to try things on"): runs every
# configuration × seed of `koala finetune` on models/tiny_llama_shakespeare with
# data/shakespeare/midsummer_nights_dream_gut.txt (block 128, batch 8, 2 epochs = 90 steps,
# cosine), one run at a time, and prints one markdown table of the held-out perplexity after
# training (mean and min–max over seeds). Each run takes ≈ 15 s on one core.
# (benches/optimizer_study.sh does the same for image classifiers.)
#
#   benches/lm_optimizer_study.sh OUT_DIR 'name|flags' ['name|flags' ...]
#   e.g. benches/lm_optimizer_study.sh runs/lm-study 'adamw|--optimizer adamw --lr 1e-3' \
#          'koala-joint|--koala-innovation joint --koala-diagonal second-moment'
#
# Environment: KOALA (the koala binary, default target/release/koala), SEEDS (default
# "0 1 2"), THREADS (default 1). A finished run (its log holds "eval after:") is not run
# again, so an interrupted study resumes; each run's flags are kept next to its log and a
# finished run made with other flags stops the study. Flags are split on whitespace.
set -euo pipefail
set -f
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac
out=$1
shift
[ $# -gt 0 ] || { echo "error: no configuration given ('name|flags'); see --help" >&2; exit 2; }
koala=${KOALA:-target/release/koala}
seeds=${SEEDS:-0 1 2}
threads=${THREADS:-1}
[ -x "$koala" ] || { echo "error: koala binary $koala not found or not executable (cargo build --release, or set KOALA)" >&2; exit 1; }
base="--model models/tiny_llama_shakespeare/model.onnx --data data/shakespeare/midsummer_nights_dream_gut.txt --block-size 128 --batch-size 8 --epochs 2 --schedule cosine"
mkdir -p "$out"
status=0
printf '| config | flags | perplexity after, mean (min–max) | per seed |\n|---|---|---|---|\n'
for spec in "$@"; do
  name=${spec%%|*}
  flags=${spec#*|}
  ppl=()
  for seed in $seeds; do
    log="$out/$name-s$seed.log"
    if [ -f "$out/$name-s$seed.flags" ] && [ "$(cat "$out/$name-s$seed.flags")" != "$flags" ]; then
      echo "error: $log was made with other flags ($(cat "$out/$name-s$seed.flags")); use another OUT_DIR or name" >&2
      exit 1
    fi
    if ! grep -q "eval after" "$log" 2>/dev/null; then
      printf '%s' "$flags" >"$out/$name-s$seed.flags"
      rm -rf "$out/$name-s$seed"
      # shellcheck disable=SC2086 # flags are word lists on purpose
      "$koala" finetune $base $flags --seed "$seed" --threads "$threads" --run-dir "$out/$name-s$seed" >"$log" 2>&1 || true
    fi
    p=$(grep "eval after" "$log" 2>/dev/null | grep -o 'perplexity [0-9.]*' | cut -d' ' -f2 || true)
    if [ -z "$p" ]; then
      echo "error: $name seed $seed failed, see $log" >&2
      status=1
      p=FAILED
    fi
    ppl+=("$p")
  done
  summary=$(printf '%s\n' "${ppl[@]}" | awk '/FAILED/ {bad=1} !/FAILED/ {s+=$1; n++; if (min=="" || $1<min) min=$1; if ($1>max) max=$1}
    END {if (bad || n==0) print "FAILED"; else printf "%.2f (%.2f–%.2f)", s/n, min, max}')
  printf '| %s | `%s` | %s | %s |\n' "$name" "$flags" "$summary" "${ppl[*]}"
done
exit $status
