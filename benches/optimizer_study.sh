#!/usr/bin/env bash
# Optimizer study harness: runs every configuration × seed of `koala finetune`, at most JOBS
# runs at once, resumes an interrupted study, and prints ONE markdown table of the results
# (mean and min–max over seeds). For issue 10 (KOALA++ vs AdamW over seeds and data sets).
#
#   benches/optimizer_study.sh OUT_DIR [--seeds 0,1,2] [--jobs 1] [--threads 2]
#                              [--base 'shared finetune flags'] 'name|flags' ['name|flags' ...]
#   benches/optimizer_study.sh OUT_DIR --report-only
#
#   e.g. benches/optimizer_study.sh runs/study1 --seeds 0,1,2 --jobs 2 --threads 1 \
#          'kpp|--optimizer koala++ --lr 0.03' 'adamw|--optimizer adamw --lr 1e-3'
#
# Each run is `$KOALA finetune BASE FLAGS --seed S --threads THREADS --run-dir
# OUT_DIR/<name>/seed<S>` (flags are split on whitespace: values cannot hold spaces), its
# output goes to OUT_DIR/<name>/seed<S>.log and OUT_DIR/<name>/seed<S>.status records the
# command, its exit status and its wall time. A run counts as finished when its status says
# rc=0 and its log holds koala's end-of-run summary ("accuracy after:", "... in optimizer X s");
# a finished run is skipped when the study is run again with the same base flags, flags and
# seed (so an interrupted study resumes), a finished run with other flags stops the study
# before anything starts, and an unfinished or failed run is deleted and run again.
#
# Outputs: the table on stdout (progress with an ETA on stderr); OUT_DIR/study.json (every
# run: name, flags, seed, status, accuracy, loss, wall_s, optimizer_s, ...; every config: the
# aggregates); OUT_DIR/study.md (the table, the command line, date, nproc, koala binary and
# commit); OUT_DIR/study_config.json (what --report-only re-aggregates). Accuracy and loss are
# koala's final test evaluation ("accuracy after:" line), optimizer_s its "in optimizer"
# time (printed with 2 decimals), wall_s the whole process (load, evaluations, training,
# export and its checks) as measured here: with several jobs on few cores the runs slow each
# other down.
# A failed or missing run shows as FAILED/MISSING in the table and the script exits 1 after
# printing it.
#
# Options: --seeds (comma-separated integers, default 0,1,2), --jobs (runs at once, default 1),
# --threads (ONNX Runtime threads per run, default 2), --base (default: env BASE, else the
# README main job without optimizer flags, as benches/finetune_sweep.sh), --report-only.
# Environment: KOALA (the koala binary, default target/release/koala), BASE.
# Needs bash >= 4.3 and python3 (standard library only) for the aggregation.
set -euo pipefail
set -f # flags are split on whitespace on purpose; never glob them

help_text() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
usage() { help_text >&2; exit 2; }  # a bad command line: the help on stderr, exit 2
help() { help_text; exit 0; }       # --help: on stdout, exit 0
die() { echo "error: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
case "$1" in -h|--help) help ;; -*) die "the first argument must be OUT_DIR, got '$1' (see --help)" ;; esac
out=${1%/}
shift
shell_quote() { # args -> one line a shell reads back as the same words
  local a q=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./,:=+@%-]+$ ]]; then q+=("$a"); else q+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${q[*]}"
}
command_line=$(shell_quote "$0" "$out" "$@")

seeds_arg=0,1,2
jobs=1
threads=2
base=${BASE:---model models/mobilenet_v2/model.onnx --data data/fashion_mnist_small --num-classes 10 --image-size 96 --batch-size 32 --epochs 3 --no-augment --schedule cosine}
report_only=0
specs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds_arg=${2:?--seeds needs a value, e.g. --seeds 0,1,2}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift 2 ;;
    --threads) threads=${2:?--threads needs a value}; shift 2 ;;
    --base) base=${2?--base needs a value (quote the flags: --base '--model m.onnx --data d')}; shift 2 ;;
    --report-only) report_only=1; shift ;;
    -h|--help) help ;;
    --*) die "unknown option '$1' (options: --seeds, --jobs, --threads, --base, --report-only; configurations are 'name|flags')" ;;
    *) specs+=("$1"); shift ;;
  esac
done
python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "$python not found: the aggregation needs Python 3 (standard library only); set PYTHON=/path/to/python3"

# ---------------------------------------------------------------------------------------
# Aggregation: reads study_config.json and every run's status/log/metrics, writes study.json
# and study.md, prints the table; exit 1 if any run failed or is missing.
aggregate() {
  "$python" - "$out" "$1" <<'PY'
import json, math, os, re, statistics, sys

out, report_cmd = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(out, "study_config.json")))

ACC = re.compile(r"^accuracy after:\s*([0-9.]+|NaN|inf|-inf)% \(loss ([0-9.eE+-]+|NaN|inf|-inf), (\d+) samples\)", re.M)
TIMES = re.compile(r"^time in ONNX Runtime steps ([0-9.]+) s, in optimizer ([0-9.]+) s, waiting for data ([0-9.]+) s", re.M)
STEPS = re.compile(r"^steps (\d+) \((\d+) skipped as non-finite\), ([0-9.]+) samples/s", re.M)

def read_status(path):
    d = {}
    if os.path.exists(path):
        for line in open(path):
            k, _, v = line.rstrip("\n").partition("=")
            d[k] = v
    return d

def fnum(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None

def finite(x):
    return x is not None and math.isfinite(x)

def last_error(log):
    lines = [l.strip() for l in open(log, errors="replace")] if os.path.exists(log) else []
    errs = [l for l in lines if l.startswith("error") or l.startswith("warning: non-finite")]
    if errs:
        return errs[-1]
    return lines[-1] if lines else "empty log"

runs = []
for c in cfg["configs"]:
    for seed in cfg["seeds"]:
        base = os.path.join(out, c["name"], f"seed{seed}")
        log, status_path = base + ".log", base + ".status"
        st = read_status(status_path)
        r = {"name": c["name"], "flags": c["flags"], "seed": seed, "run_dir": base, "log": log,
             "status": None, "accuracy": None, "loss": None, "wall_s": fnum(st.get("wall_s")),
             "optimizer_s": None, "graph_s": None, "train_wall_s": None, "steps": None,
             "samples_per_s": None, "eval_samples": None, "command": st.get("command")}
        text = open(log, errors="replace").read() if os.path.exists(log) else None
        m, t = (ACC.search(text), TIMES.search(text)) if text is not None else (None, None)
        if not st and text is None:
            r["status"] = "MISSING"
            r["error"] = "not run"
        elif st.get("rc") == "0" and m and t:
            r["status"] = "ok"
            r["accuracy"] = float(m.group(1)) / 100.0
            r["loss"] = float(m.group(2))
            r["eval_samples"] = int(m.group(3))
            r["graph_s"], r["optimizer_s"] = float(t.group(1)), float(t.group(2))
            s = STEPS.search(text)
            if s:
                r["steps"], r["samples_per_s"] = int(s.group(1)), float(s.group(3))
            mpath = os.path.join(base, "metrics.jsonl")
            if os.path.exists(mpath):
                recs = [json.loads(l) for l in open(mpath) if l.strip()]
                if recs:
                    r["train_wall_s"] = recs[-1].get("wall_time")
        elif "rc" not in st:
            r["status"] = "MISSING"
            r["error"] = "interrupted (no exit status recorded)"
        else:
            r["status"] = "FAILED"
            r["rc"] = int(st["rc"]) if st["rc"].lstrip("-").isdigit() else st["rc"]
            r["error"] = last_error(log) if st["rc"] != "0" else "exit 0 but no end-of-run summary in the log"
        runs.append(r)

def agg(vals):
    v = [x for x in vals if x is not None]
    if not v:
        return None
    if not all(math.isfinite(x) for x in v):
        return {"mean": float("nan"), "min": min(v), "max": max(v), "std": float("nan")}
    return {"mean": statistics.fmean(v), "min": min(v), "max": max(v),
            "std": statistics.stdev(v) if len(v) > 1 else None}

configs = []
for c in cfg["configs"]:
    rs = [r for r in runs if r["name"] == c["name"]]
    ok = [r for r in rs if r["status"] == "ok"]
    configs.append({"name": c["name"], "flags": c["flags"], "seeds": cfg["seeds"], "n": len(rs), "n_ok": len(ok),
                    **{k: agg([r[k] for r in ok]) for k in ("accuracy", "loss", "wall_s", "optimizer_s", "train_wall_s")}})

def f(x, fmt):
    return "–" if x is None else (fmt % x if math.isfinite(x) else str(x))

def rel(p):
    return p

def shown(flags):
    return f"`{flags}`".replace("|", "\\|") if flags.strip() else "(base flags only)"

rows = ["| config | flags | seeds | test top-1 % mean (min–max) | test loss mean | wall s mean | optimizer s mean |",
        "|---|---|---|---|---|---|---|"]
for c in configs:
    if c["n_ok"]:
        a = c["accuracy"]
        acc = f"{f(100 * a['mean'], '%.2f')} ({f(100 * a['min'], '%.2f')}–{f(100 * a['max'], '%.2f')})"
        seeds = str(c["n_ok"]) if c["n_ok"] == c["n"] else f"{c['n_ok']} of {c['n']}"
        rows.append(f"| {c['name']} | {shown(c['flags'])} | {seeds} | {acc} | {f(c['loss']['mean'], '%.4f')} | "
                    f"{f(c['wall_s']['mean'] if c['wall_s'] else None, '%.1f')} | {f(c['optimizer_s']['mean'], '%.2f')} |")
    for r in runs:
        if r["name"] == c["name"] and r["status"] != "ok":
            err = r["error"].replace("|", "\\|").replace("`", "'")
            if len(err) > 160:
                err = err[:157] + "..."
            rows.append(f"| {c['name']} (seed {r['seed']}) | {shown(c['flags'])} | 0 of 1 | **{r['status']}**: "
                        f"`{rel(r['log'])}` ({err}) | | | |")
table = "\n".join(rows)

def clean(x):  # JSON has no NaN/inf: write null
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x

bad = [r for r in runs if r["status"] != "ok"]
study = {"command": cfg["command"], "report_command": report_cmd, "date": cfg["date"],
         "report_date": os.environ.get("STUDY_NOW"), "nproc": cfg["nproc"], "koala": cfg["koala"],
         "base": cfg["base"], "seeds": cfg["seeds"], "jobs": cfg["jobs"], "threads": cfg["threads"],
         "runs": runs, "configs": configs, "failed_or_missing": len(bad)}
tmp = os.path.join(out, "study.json.tmp")
with open(tmp, "w") as fh:
    json.dump(clean(study), fh, indent=1)
    fh.write("\n")
os.replace(tmp, os.path.join(out, "study.json"))

k = cfg["koala"]
md = [f"# Optimizer study: {out}", "",
      table, "",
      f"Seeds {','.join(map(str, cfg['seeds']))}; every run: `koala finetune {cfg['base']} <flags> --seed S "
      f"--threads {cfg['threads']}`, {cfg['jobs']} run(s) at once. Test top-1 and loss: koala's final evaluation "
      "(`accuracy after:`); wall s: the whole `koala finetune` process as timed by the harness (load, evaluations, "
      "training, export and its checks); optimizer s: koala's `in optimizer` time.", "",
      f"- command: `{cfg['command']}`",
      f"- date: {cfg['date']}" + (f" (table re-aggregated {study['report_date']} by `{report_cmd}`)" if report_cmd else ""),
      f"- nproc: {cfg['nproc']}",
      f"- koala binary: `{k['path']}` ({k['version']}), commit: {k['commit']}",
      f"- per-run results: `study.json`; logs: `<config>/seed<S>.log`, run directories `<config>/seed<S>/`"]
if bad:
    md.append(f"- **{len(bad)} run(s) failed or missing** (see the rows above)")
tmp = os.path.join(out, "study.md.tmp")
with open(tmp, "w") as fh:
    fh.write("\n".join(md) + "\n")
os.replace(tmp, os.path.join(out, "study.md"))

print(table)
if bad:
    print(f"{len(bad)} run(s) failed or missing; see the logs named above", file=sys.stderr)
    sys.exit(1)
PY
}

if [ "$report_only" = 1 ]; then
  [ -f "$out/study_config.json" ] || die "$out/study_config.json not found: $out is not a study directory (run the study without --report-only first)"
  [ ${#specs[@]} -eq 0 ] || die "--report-only takes no configurations: it re-aggregates the ones recorded in $out/study_config.json"
  STUDY_NOW=$(date -u '+%Y-%m-%d %H:%M:%S UTC') aggregate "$command_line"
  exit $?
fi

# ---------------------------------------------------------------------------------------
# Validate everything before starting anything.
[ ${#specs[@]} -ge 1 ] || die "no configurations given: pass one or more 'name|flags' (e.g. 'adamw|--optimizer adamw'), or --report-only"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer, got '$jobs'"
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '$threads'"
[[ "$seeds_arg" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--seeds must be comma-separated non-negative integers, e.g. 0,1,2; got '$seeds_arg'"
IFS=, read -r -a seeds <<<"$seeds_arg"
koala=${KOALA:-target/release/koala}
[ -x "$koala" ] || die "koala binary '$koala' not found or not executable (cargo build --release, or set KOALA=/path/to/koala)"
for w in $base; do
  case "$w" in --seed|--seed=*|--threads|--threads=*|--run-dir|--run-dir=*|--resume|--resume=*)
    die "--base holds '$w': the harness sets --seed, --threads and --run-dir itself (use --seeds / --threads)" ;;
  esac
done
[[ "$base" != *$'\n'* ]] || die "--base holds a line break: give the flags on one line"
names=() flagss=()
declare -A seen=()
for spec in "${specs[@]}"; do
  [[ "$spec" != *$'\n'* ]] || die "configuration '$spec' holds a line break: give its flags on one line"
  [[ "$spec" == *"|"* ]] || die "configuration '$spec' has no '|': write 'name|flags' (flags may be empty: 'default|')"
  name=${spec%%|*} flags=${spec#*|}
  [[ "$name" =~ ^[A-Za-z0-9._+-]+$ ]] || die "configuration name '$name' (in '$spec') may hold only letters, digits and . _ + -"
  [ -z "${seen[$name]:-}" ] || die "configuration name '$name' is given twice"
  seen[$name]=1
  for w in $flags; do
    case "$w" in --seed|--seed=*|--threads|--threads=*|--run-dir|--run-dir=*|--resume|--resume=*)
      die "configuration '$name' holds '$w': the harness sets --seed, --threads and --run-dir itself" ;;
    esac
  done
  names+=("$name") flagss+=("$flags")
done

mkdir -p "$out"
if command -v flock >/dev/null; then
  exec 9>"$out/.study.lock"
  flock -n 9 || die "another optimizer_study.sh is running on $out (it holds $out/.study.lock); wait for it or use another OUT_DIR"
fi

# ---------------------------------------------------------------------------------------
# What is left to run (refusing, before anything is written, a finished run with other flags).
args_of() { echo $base $2 --seed $3; } # name flags seed -> the flags that define the run (single spaces)
status_get() { sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n1; }
finished() { # run_dir: rc=0 recorded and koala's end-of-run summary in the log
  [ "$(status_get "$1.status" rc)" = 0 ] && grep -q '^accuracy after:' "$1.log" 2>/dev/null &&
    grep -q '^time in ONNX Runtime steps .* in optimizer [0-9.]* s' "$1.log" 2>/dev/null
}
fmt_s() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

todo=() # "index seed"
total=0 skipped=0
for i in "${!names[@]}"; do
  for s in "${seeds[@]}"; do
    total=$((total + 1))
    d="$out/${names[$i]}/seed$s"
    if finished "$d"; then
      was=$(status_get "$d.status" args)
      now=$(args_of "${names[$i]}" "${flagss[$i]}" "$s")
      [ "$was" = "$now" ] || die "$d finished with other flags ($was), not ($now): use another OUT_DIR, or delete $d and $d.* to rerun it"
      skipped=$((skipped + 1))
    else
      todo+=("$i $s")
    fi
  done
done

# The koala binary's commit: a name ending in -<hex> (e.g. koala-c933c2b), else the git
# work tree the binary lies in (HEAD at study time; the binary may be older than HEAD).
koala_abs=$(cd "$(dirname "$koala")" && pwd)/$(basename "$koala")
koala_version=$("$koala" --version 2>/dev/null || echo unknown)
commit=unknown
if [[ "$(basename "$koala")" =~ -([0-9a-f]{7,40})$ ]]; then
  commit="${BASH_REMATCH[1]} (from the binary's file name)"
elif top=$(git -C "$(dirname "$koala_abs")" rev-parse --show-toplevel 2>/dev/null); then
  head=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo '?')
  dirty=$(git -C "$top" status --porcelain --untracked-files=no 2>/dev/null | head -c1)
  commit="$head${dirty:+-dirty} (HEAD of the work tree $top holding the binary; built $(date -u -r "$koala_abs" '+%Y-%m-%d %H:%M UTC'))"
fi

# study_config.json: what --report-only re-aggregates.
{
  printf '%s\n' "$command_line" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(nproc)" "$koala_abs" "$koala_version" "$commit" \
    "$base" "$seeds_arg" "$jobs" "$threads"
  for i in "${!names[@]}"; do printf '%s\n%s\n' "${names[$i]}" "${flagss[$i]}"; done
} | "$python" -c '
import json, sys
l = sys.stdin.read().split("\n")[:-1]
cmd, date, nproc, kpath, kver, commit, base, seeds, jobs, threads = l[:10]
rest = l[10:]
json.dump({"command": cmd, "date": date, "nproc": int(nproc),
           "koala": {"path": kpath, "version": kver, "commit": commit},
           "base": base, "seeds": [int(s) for s in seeds.split(",")], "jobs": int(jobs), "threads": int(threads),
           "configs": [{"name": rest[i], "flags": rest[i + 1]} for i in range(0, len(rest), 2)]},
          open(sys.argv[1], "w"), indent=1)
' "$out/study_config.json.tmp"
mv "$out/study_config.json.tmp" "$out/study_config.json"

# ---------------------------------------------------------------------------------------
# The queue.
echo "study $out: ${#names[@]} configuration(s) × ${#seeds[@]} seed(s) = $total run(s); $skipped already finished (skipped), ${#todo[@]} to run, $jobs at once, $threads thread(s) each; koala $koala" >&2

declare -A pid_run=() pid_start=()
done_n=$skipped ran=0 ran_secs=0 failed=0
t0=$(date +%s)
cleanup() {
  for p in "${!pid_run[@]}"; do kill "$p" 2>/dev/null || true; done
  echo "interrupted: stopped ${#pid_run[@]} running run(s); rerun the same command to resume" >&2
  exit 130
}
trap cleanup INT TERM

reap() { # pid: wait for it, record its status, print progress
  local p=$1 rc=0 now wall d i s name eta
  wait "$p" || rc=$?
  now=$(date +%s.%N)
  read -r i s <<<"${pid_run[$p]}"
  name=${names[$i]}
  d="$out/$name/seed$s"
  wall=$(awk -v a="${pid_start[$p]}" -v b="$now" 'BEGIN { printf "%.2f", b - a }')
  printf 'rc=%s\nwall_s=%s\nended=%s\n' "$rc" "$wall" "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" >>"$d.status"
  unset "pid_run[$p]" "pid_start[$p]"
  done_n=$((done_n + 1)) ran=$((ran + 1))
  ran_secs=$(awk -v a="$ran_secs" -v b="$wall" 'BEGIN { print a + b }')
  local verdict elapsed=$(($(date +%s) - t0)) left=$((total - done_n))
  if [ "$rc" = 0 ] && finished "$d"; then
    verdict="ok, $(grep -o '^accuracy after: *[0-9.]*%' "$d.log" | sed 's/accuracy after: *//') top-1"
  else
    verdict="FAILED (exit $rc), see $d.log"
    failed=$((failed + 1))
  fi
  eta=$(awk -v m="$ran_secs" -v n="$ran" -v left="$left" -v j="$jobs" \
    'BEGIN { w = (left < j) ? left : j; if (w < 1) w = 1; printf "%d", (m / n) * left / w }')
  echo "[$done_n/$total] $name seed $s: $verdict in ${wall}s; elapsed $(fmt_s "$elapsed"), mean $(awk -v m="$ran_secs" -v n="$ran" 'BEGIN { printf "%.1f", m / n }')s/run, ETA ~$(fmt_s "$eta") ($left left)" >&2
}

for job in "${todo[@]}"; do
  while [ ${#pid_run[@]} -ge "$jobs" ]; do
    for p in "${!pid_run[@]}"; do
      kill -0 "$p" 2>/dev/null || reap "$p"
    done
    [ ${#pid_run[@]} -lt "$jobs" ] || sleep 0.2
  done
  read -r i s <<<"$job"
  name=${names[$i]} flags=${flagss[$i]}
  d="$out/$name/seed$s"
  rm -rf "$d" "$d.log" "$d.status" # an unfinished or failed earlier attempt
  mkdir -p "$out/$name"
  # shellcheck disable=SC2086 # base and flags are word lists on purpose
  cmd=$(shell_quote "$koala" finetune $base $flags --seed "$s" --threads "$threads" --run-dir "$d")
  printf 'command=%s\nargs=%s\nstarted=%s\n' "$cmd" "$(args_of "$name" "$flags" "$s")" "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" >"$d.status"
  # shellcheck disable=SC2086
  "$koala" finetune $base $flags --seed "$s" --threads "$threads" --run-dir "$d" >"$d.log" 2>&1 </dev/null &
  pid_run[$!]="$i $s"
  pid_start[$!]=$(date +%s.%N)
  echo "started $name seed $s ($d.log)" >&2
done
while [ ${#pid_run[@]} -gt 0 ]; do
  for p in "${!pid_run[@]}"; do
    kill -0 "$p" 2>/dev/null || reap "$p"
  done
  [ ${#pid_run[@]} -eq 0 ] || sleep 0.2
done
trap - INT TERM
echo "all $total run(s) done in $(fmt_s $(($(date +%s) - t0))) ($ran run now, $skipped skipped, $failed failed)" >&2
echo >&2
aggregate ""
