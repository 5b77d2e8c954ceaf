#!/usr/bin/env python3
"""Optimizer step time: koala's fused KOALA++ against KOALA++ as the official PyTorch code does it.

Optional tooling, not part of CI. Needs torch (`pip install -r benches/pytorch/requirements.txt`)
and cargo. The official repository (Sumxiaa/KOALA_Plus_Plus) cannot be fetched here, so
`OfficialStyleKoalaPP` below re-creates its per-tensor eager step line by line from
koala-spec.md §5.3 (the canonical `KOALAPlusPlus.update`): fresh H and v tensors each
step, six separate dot products, about fourteen element-wise kernels, float32 tensors.
It is checked against koala's test vectors (tests/fixtures/koala-vectors) before timing,
so the timed code is the right algorithm.

Both sides run in this invocation with the same thread count:
1. `cargo bench --bench optim_table` (koala's numbers, JSON via KOALA_BENCH_JSON);
2. the PyTorch step on one tensor of 1e4 … 1e7 parameters (preset vision-cnn: σ=1, Q=1e-4, wd=5e-4).

Usage: python3 benches/pytorch/compare_optim.py [--threads 2] [--skip-koala FILE.json]
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class OfficialStyleKoalaPP:
    """KOALA++ (symmetric) written the way the official eager PyTorch code computes it."""

    def __init__(self, params, lr, sigma, q, wd, r=None, alpha_r=0.9, symmetric=True):
        self.params, self.lr, self.sigma, self.q, self.wd = params, lr, sigma, q, wd
        self.r_online = r is None
        self.r = 1.0 if r is None else r
        self.alpha_r, self.symmetric = alpha_r, symmetric
        self.state = [None] * len(params)

    @torch.no_grad()
    def update(self, loss, loss_var):
        if self.r_online:
            self.r = self.alpha_r * self.r + (1 - self.alpha_r) * loss_var
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None or torch.norm(g) < 1e-9:
                continue
            h = g.reshape(-1) + self.wd * p.reshape(-1)
            if self.state[i] is None:
                v_p, h_p, s_p = self.sigma * h, h, None
            else:
                v_p, h_p, s_p = self.state[i]
            x = torch.dot(h_p, h_p)
            y = torch.dot(h_p, v_p)
            if s_p is None:
                s_p = y + self.q * x + self.r
            a = torch.dot(h, h_p)
            b = torch.dot(h, v_p)
            lam = (b + self.q * a) / s_p
            alpha = a / x
            w = b / x - a * y / (x * x) if self.symmetric else torch.zeros_like(a)
            v = (alpha - lam) * v_p + self.q * (h - lam * h_p) + w * h_p
            s = torch.dot(v + self.q * h, h) + self.r
            ell = loss + 0.5 * self.wd * torch.dot(p.reshape(-1), p.reshape(-1))
            p.add_(((-self.lr * ell) * (v + self.q * h) / s).reshape(p.shape))
            self.state[i] = (v, h, s)


def check_against_vectors():
    """Replays koala's symmetric KOALA++ vectors; returns the worst relative parameter error."""
    worst = 0.0
    files = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "koala-vectors", "kpp_sym_*.json")))
    for path in files:
        with open(path) as f:
            case = json.load(f)
        hp = case["hyperparameters"]
        names = [t["name"] for t in case["tensors"]]
        shapes = {t["name"]: t["shape"] for t in case["tensors"]}

        def tensor(values, name):
            return torch.tensor(values, dtype=torch.float64).reshape(shapes[name])

        params = [tensor(case["initial_params"][n], n) for n in names]
        opt = OfficialStyleKoalaPP(params, lr=None, sigma=hp["sigma"], q=hp["q"], wd=hp["weight_decay"],
                                   r=hp["r"], alpha_r=hp["alpha_r"])
        for step in case["steps"]:
            opt.lr = step["lr"]
            for p, n in zip(params, names):
                p.grad = tensor(step["grads"][n], n)
            opt.update(step["loss"], step["loss_var"])
            for p, n in zip(params, names):
                want = tensor(step["params_after"][n], n)
                worst = max(worst, float((p - want).norm() / want.norm().clamp_min(1e-30)))
    return len(files), worst


def time_torch(n, reps):
    torch.manual_seed(0)
    p = torch.randn(n) * 0.1
    opt = OfficialStyleKoalaPP([p], lr=1e-3, sigma=1.0, q=1e-4, wd=5e-4, r=None)
    grads = [torch.randn(n) * 1e-2 for _ in range(2)]
    times = []
    for k in range(reps + 2):
        p.grad = grads[k % 2]
        t = time.perf_counter()
        opt.update(1.0, 1.0)
        if k >= 2:
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-koala", metavar="JSON", help="reuse a KOALA_BENCH_JSON file instead of running cargo bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    files, worst = check_against_vectors()
    print(f"official-style PyTorch step replays {files} symmetric KOALA++ vector files: worst relative parameter error {worst:.1e}")
    if args.skip_koala:
        with open(args.skip_koala) as f:
            koala = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "optim.json")
            env = dict(os.environ, KOALA_BENCH_JSON=path, RAYON_NUM_THREADS=str(args.threads))
            subprocess.run(["cargo", "bench", "--bench", "optim_table"], cwd=ROOT, env=env, check=True)
            with open(path) as f:
                koala = json.load(f)

    print(f"\nthreads: {args.threads}; median ms per step, one tensor")
    print("| params | PyTorch KOALA++ (official style) | koala KOALA++ fused | speed-up |")
    print("|---|---|---|---|")
    for row in koala["rows"]:
        if row["tensors"] != 1:
            continue
        n = row["params"]
        ours = row["step_ms"]["koala++ fused"]
        theirs = time_torch(n, reps=20 if n >= 10**6 else 200)
        print(f"| {n:.0e} | {theirs:.3f} | {ours:.3f} | {theirs / ours:.1f}× |")


if __name__ == "__main__":
    main()
