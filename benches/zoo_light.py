#!/usr/bin/env python3
"""Issue 12's "done when" on the real ONNX Model Zoo architectures (tooling, not a test).

The `onnx` Python package ships architecture-only copies of nine Model Zoo classifiers under
`onnx/backend/test/data/light/` (ResNet-50, SqueezeNet, DenseNet-121, Inception v1/v2,
ShuffleNet, VGG-19, AlexNet, ZFNet-512): opset 9, IR 3, initializers listed as graph inputs,
batch fixed to 1, and every weight a `ConstantOfShape` fill of one value. For each, this script

1. replaces each `ConstantOfShape(<name>__SHAPE)` weight by a real random initializer of that
   shape (seeded; He-normal for Conv/Gemm weights, std sqrt(2 / fan_in); zero biases;
   BatchNormalization scale 1, bias 0, mean 0, variance 1 with a little noise; the
   `Unsqueeze` + `Mul` / `Add` scale pattern as 1 / 0), keeping opset 9 and IR 3 and listing
   the new initializers as graph inputs the way the file lists its others;
2. writes it to a scratch directory and runs `koala check`,
   `koala finetune --num-classes 10 --batch-size 1 --accumulate 2 --max-steps 2` on a slice of
   the repository's Fashion-MNIST subset (`data/fashion_mnist_small`: 40 training and 10 test
   images, so that the evaluations before and after at 224×224 stay short), and
3. reloads the export with onnxruntime, checking opset 9 and 10 class scores,

and prints a markdown table for the README.

    /work/pyenv/bin/python benches/zoo_light.py [--koala target/release/koala] [--only resnet50,...]

Needs `cargo build --release` first, and onnx + onnxruntime + numpy in the Python used.
"""

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnx import helper, numpy_helper

MODELS = [
    ("ResNet-50", "light_resnet50.onnx"),
    ("SqueezeNet", "light_squeezenet.onnx"),
    ("DenseNet-121", "light_densenet121.onnx"),
    ("Inception v1", "light_inception_v1.onnx"),
    ("Inception v2", "light_inception_v2.onnx"),
    ("ShuffleNet", "light_shufflenet.onnx"),
    ("VGG-19", "light_vgg19.onnx"),
    ("AlexNet", "light_bvlc_alexnet.onnx"),
    ("ZFNet-512", "light_zfnet512.onnx"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def light_dir():
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def fill_value(consumers, name, shape, rng):
    """Random values for weight `name` of `shape`, chosen by the op that reads it."""
    uses = consumers.get(name, [])
    # Follow a Reshape / Unsqueeze to the op that really uses the tensor.
    for node, idx in list(uses):
        if node.op_type in ("Reshape", "Unsqueeze") and idx == 0:
            uses = uses + consumers.get(node.output[0], [])
    for node, idx in uses:
        op = node.op_type
        if op == "BatchNormalization":
            n = int(np.prod(shape))
            base = {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}[idx]
            noise = rng.uniform(-0.1, 0.1, n) if idx in (1, 2, 3) else rng.uniform(0.0, 0.2, n)
            return (base + noise).reshape(shape).astype(np.float32)
        if op in ("Conv", "Gemm", "MatMul") and idx == 1 and len(shape) >= 2:
            fan_in = int(np.prod(shape[1:])) if op != "MatMul" else shape[0]
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        if op in ("Conv", "Gemm") and idx == 2:
            return np.zeros(shape, np.float32)
        if op == "Mul":
            return (1.0 + rng.uniform(-0.1, 0.1, shape)).astype(np.float32)
        if op == "Add":
            return rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    return rng.normal(0.0, 0.01, shape).astype(np.float32)


def with_random_weights(path, seed):
    """The light model with its ConstantOfShape fills replaced by random initializers."""
    m = onnx.load(path)
    g = m.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in g.initializer}
    consumers = {}
    for node in g.node:
        for i, x in enumerate(node.input):
            consumers.setdefault(x, []).append((node, i))
    fills = [n for n in g.node if n.op_type == "ConstantOfShape" and n.input[0] in inits]
    dropped = set()
    for n in fills:
        shape = [int(d) for d in numpy_helper.to_array(inits[n.input[0]])]
        value = fill_value(consumers, n.output[0], shape, rng)
        g.initializer.append(numpy_helper.from_array(value, n.output[0]))
        g.input.append(helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, shape))
        dropped.add(n.input[0])
        g.node.remove(n)
    kept = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept)
    kept_inputs = [i for i in g.input if i.name not in dropped]
    del g.input[:]
    g.input.extend(kept_inputs)
    onnx.checker.check_model(m)
    params = sum(int(np.prod(t.dims)) for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT)
    return m, params


def slice_idx(src, dst, train, test):
    """An IDX folder with the first `train` training and `test` test images of `src`."""
    os.makedirs(dst, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        for kind, header in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            with gzip.open(os.path.join(src, f"{split}-{kind}.gz"), "rb") as f:
                data = bytearray(f.read())
            item = 28 * 28 if kind.startswith("images") else 1
            data[4:8] = n.to_bytes(4, "big")
            with open(os.path.join(dst, f"{split}-{kind}"), "wb") as f:
                f.write(bytes(data[: header + n * item]))
    return dst


def run(cmd, timeout):
    t = time.time()
    try:
        # One stream, in the order koala wrote it (progress on stderr, summary on stdout).
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout, time.time() - t
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n(timed out after {timeout} s)", time.time() - t


def first_error(log):
    """The first error of a koala log, short enough for a table cell."""
    text = full_error(log)
    rule = re.search(r"node #(\d+) '[^']*' \((\w+)\) has no gradient rule", text)
    if rule:
        return f"no gradient rule for {rule.group(2)} (node #{rule.group(1)})"
    opset = re.search(r"default-domain opset (\d+) is outside the supported range [0-9–-]+", text)
    if opset:
        return opset.group(0)
    return text[:100]


def full_error(log):
    lines = [l.strip() for l in log.splitlines() if l.strip()]
    for i, line in enumerate(lines):
        if "cannot be fine-tuned as configured" in line and i + 1 < len(lines):
            return lines[i + 1][:160]
        if line.startswith("error") or "error:" in line:
            return line[:160]
    return log.strip().splitlines()[-1][:160] if log.strip() else "no output"


def reload_export(path):
    m = onnx.load(path)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {}
    inits = {t.name for t in m.graph.initializer}
    for i in s.get_inputs():
        if i.name in inits:
            continue
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    y = s.run(None, feeds)[0]
    return opset, int(y.size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--koala", default=os.path.join(ROOT, "target", "release", "koala"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "fashion_mnist_small"))
    ap.add_argument("--only", default="", help="comma-separated light file stems, e.g. resnet50,squeezenet")
    ap.add_argument("--scratch", default="", help="keep the models and runs here (default: a temporary directory)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per koala command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--convert-opset", type=int, default=0,
        help="convert the models to this opset with onnx.version_converter first (only to try the rest of the "
        "pipeline on a koala without old-opset support; the issue's target is the original opset 9)",
    )
    a = ap.parse_args()
    scratch = a.scratch or tempfile.mkdtemp(prefix="koala_zoo_light_")
    os.makedirs(scratch, exist_ok=True)
    data = slice_idx(a.data, os.path.join(scratch, "fashion_mnist_slice"), 40, 10)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    rows = []
    for arch, file in MODELS:
        stem = file[len("light_"):-len(".onnx")]
        if only and stem not in only:
            continue
        model, params = with_random_weights(os.path.join(light_dir(), file), a.seed)
        want_opset = 9
        if a.convert_opset:
            model = onnx.version_converter.convert_version(model, a.convert_opset)
            want_opset = a.convert_opset
        path = os.path.join(scratch, f"{stem}.onnx")
        onnx.save(model, path)
        rc, log, _ = run([a.koala, "check", path, "--threads", "2"], a.timeout)
        check = "ok" if rc == 0 else f"refused: {first_error(log)}"
        run_dir = os.path.join(scratch, f"run_{stem}")
        shutil.rmtree(run_dir, ignore_errors=True)
        finetune_cmd = [a.koala, "finetune", "--model", path, "--data", data, "--num-classes", "10",
                        "--batch-size", "1", "--accumulate", "2", "--max-steps", "2", "--no-augment",
                        "--threads", "2", "--run-dir", run_dir]
        with open(os.path.join(scratch, f"{stem}.log"), "w") as f:
            f.write(f"# {arch} from the onnx package's {file}, with seeded random He-normal weights in place of\n"
                    "# its ConstantOfShape fills: a smoke run of check/finetune/export, so the losses and\n"
                    "# accuracies below are those of a random network after 2 steps, not of a trained model.\n")
            f.write(f"$ koala check {path} --threads 2\n{log}\n$ {' '.join(finetune_cmd)}\n")
        rc, log, wall = run(finetune_cmd, a.timeout)
        step = "–"
        if rc == 0:
            finetune = f"ok ({wall:.0f} s in all)"
            t = re.search(r"time in ONNX Runtime steps ([0-9.]+) s, in optimizer ([0-9.]+) s", log)
            n = re.search(r"steps (\d+) \(", log)
            if t and n and int(n.group(1)) > 0:
                # One optimizer step = 2 accumulated forward+backward passes + the update.
                step = f"{(float(t.group(1)) + float(t.group(2))) / int(n.group(1)):.2f} s"
            try:
                opset, classes = reload_export(os.path.join(run_dir, "model.onnx"))
                good = opset == want_opset and classes == 10
                export = f"{'ok' if good else 'WRONG'}: opset {opset}, {classes} classes"
            except Exception as e:  # noqa: BLE001 (report, do not stop the sweep)
                export = f"failed: {str(e)[:120]}"
        else:
            finetune = f"failed: {first_error(log)}"
            export = "–"
        with open(os.path.join(scratch, f"{stem}.log"), "a") as f:
            f.write(log)
        rows.append((arch, f"{params / 1e6:.1f} M", check, finetune, export, step))
        print(f"{arch}: check {check}; finetune {finetune}; export {export}", file=sys.stderr, flush=True)
    print("| architecture | params | `koala check` | finetune (2 steps) | export reload | step time (batch 1 × 2) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    print(f"\nmodels, logs and runs in {scratch}", file=sys.stderr)


if __name__ == "__main__":
    main()
