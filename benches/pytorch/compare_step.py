#!/usr/bin/env python3
"""Training-step time: koala (ONNX Runtime, generated backward) against PyTorch CPU eager.

Optional tooling, not part of CI and not needed by koala itself. It needs torch and
torchvision (`pip install -r benches/pytorch/requirements.txt`) and cargo.

Both sides run in this one invocation on the same machine with the same thread count:
1. `cargo bench --bench train_step` (koala's numbers, written as JSON via KOALA_BENCH_JSON);
2. PyTorch eager on the same models, batch and input: forward without autograd, and
   forward + softmax cross-entropy + backward with BatchNorm in inference mode (frozen running
   statistics, trainable scale/bias), which is what koala's training graph computes.

Usage: python3 benches/pytorch/compare_step.py [--threads 2] [--skip-koala FILE.json]
Prints a markdown table; ratio = koala step / PyTorch step (lower is better for koala), for
koala's default `ort` target (ORT's blocked conv kernels) and the `portable` target.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "reference", "gen"))
from models_shared import TinyCNN  # noqa: E402  (the model behind the tiny_cnn reference)


def bench_input(shape, classes):
    """The same deterministic batch as benches/train_step.rs."""
    n = 1
    for d in shape:
        n *= d
    i = torch.arange(n, dtype=torch.int64)
    x = ((i * 7919) % 1000).to(torch.float32) / 500.0 - 1.0
    labels = torch.arange(shape[0], dtype=torch.int64) % classes
    return x.reshape(shape), labels


def median_ms(warmup, reps, fn):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def torch_times(model, shape, classes, reps):
    model.eval()  # BatchNorm uses its running statistics, as in koala's training graph
    x, labels = bench_input(shape, classes)

    def forward():
        with torch.no_grad():
            model(x)

    def step():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()

    return median_ms(2, reps, forward), median_ms(2, reps, step)


def koala_times(threads, json_path):
    env = dict(os.environ, KOALA_BENCH_THREADS=str(threads), KOALA_BENCH_JSON=json_path)
    subprocess.run(["cargo", "bench", "--bench", "train_step"], cwd=ROOT, env=env, check=True)
    with open(json_path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("KOALA_BENCH_THREADS", "2")))
    ap.add_argument("--skip-koala", metavar="JSON", help="reuse a KOALA_BENCH_JSON file instead of running cargo bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.skip_koala:
        with open(args.skip_koala) as f:
            koala = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            koala = koala_times(args.threads, os.path.join(tmp, "train_step.json"))

    cases = [
        ("tiny_cnn", TinyCNN(), [16, 3, 16, 16], 10, 50),
        ("mobilenet_v2", torchvision.models.mobilenet_v2(weights=None), [16, 3, 96, 96], 1000, 10),
    ]
    print(f"\nthreads: {args.threads} (torch {torch.__version__}, {torch.get_num_threads()} intra-op threads); median ms")
    print("| model | batch | PyTorch forward | PyTorch fwd+bwd | PyTorch bwd/fwd | ORT forward | koala fwd+bwd (ort target, default) | koala / PyTorch step | koala portable fwd+bwd | portable / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, model, shape, classes, reps in cases:
        fwd, step = torch_times(model, shape, classes, reps)
        k = koala[key]
        ks = k["step_ms"]["default"]
        kp = k["step_ms"]["portable"]
        print(f"| {k['model']} | {shape[0]} | {fwd:.1f} | {step:.1f} | {step / fwd:.2f}× | "
              f"{k['forward_ms']:.1f} | {ks:.1f} | {ks / step:.2f}× | {kp:.1f} | {kp / step:.2f}× |")


if __name__ == "__main__":
    main()
