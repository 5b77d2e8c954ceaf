#!/usr/bin/env python3
"""Causal-LM training step: koala (ONNX Runtime, generated backward) against PyTorch CPU eager.

Optional tooling, not part of CI and not needed by koala itself. It needs torch, numpy and onnx
(`pip install -r benches/pytorch/requirements.txt`; with --model also transformers, and with --lora-rank peft)
and cargo.

Models: the shipped tiny Llama (default), or a model `koala import` wrote (--model models/smollm2/model.onnx,
next to its config.json). Full fine-tuning (every weight) or LoRA (--lora-rank R: alpha 2R on
q/k/v/o/gate/up/down, as `koala finetune --lora-rank R`).

Both sides run in this one invocation on the same machine, model, batches and thread count:
1. `cargo bench --bench lm_step` (koala's numbers, written as JSON via KOALA_BENCH_JSON): the causal-LM
   training graph of models/tiny_llama_shakespeare/model.onnx, forward + shifted cross-entropy (mean) +
   backward, and ORT's inference forward as a baseline, with the process's peak RSS (VmHWM).
2. PyTorch eager in a separate subprocess that imports only torch and numpy (so its peak RSS is PyTorch's
   alone; with --model also transformers, with --lora-rank also peft): for the tiny model `LlamaLM` of
   tests/fixtures/reference/gen/llama_export.py (whose parameter names are the ONNX initializer names), for
   --model Hugging Face's `AutoModelForCausalLM.from_config(config.json)` (attention "sdpa", PyTorch's fused
   scaled-dot-product kernel, HF's default; --attn eager for the plain one); with the ONNX file's weights,
   with LoRA wrapped by PEFT and loaded with koala's adapters as initialised (the same A, B = 0, written by
   lm_step.rs in PEFT's format), the same token batches, the same loss, f32,
   torch.set_num_threads(THREADS), OMP_WAIT_POLICY=PASSIVE (koala's ORT workers do not spin either);
   forward + loss + backward, and forward alone under no_grad. With
   --train REGEX only the matching parameters require grad, as koala then trains only them.

Token ids: the bytes of data/shakespeare/midsummer_nights_dream_gut.txt modulo the vocabulary; batch k is the
k-th run of B*T consecutive ids (rows of T), cycled; labels = ids (the loss shifts them), as in lm_step.rs.
The weights never change (no optimizer step on either side), so both report the loss of batch 0 at the
shipped weights: they must agree (a check that both compute the same thing).

Usage: python3 benches/pytorch/compare_lm_step.py [--threads 2] [--train REGEX] [--shapes 8x128,1x256,4x64]
                                                  [--reps 30] [--skip-koala FILE.json]
                                                  [--model models/smollm2/model.onnx] [--lora-rank 8]
Prints a markdown table; ratio = koala step / PyTorch step (lower is better for koala).
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GEN = os.path.join(ROOT, "tests", "fixtures", "reference", "gen")
DEFAULT_MODEL = os.path.join(ROOT, "models", "tiny_llama_shakespeare", "model.onnx")
TEXT = os.path.join(ROOT, "data", "shakespeare", "midsummer_nights_dream_gut.txt")
WARMUP = 3  # untimed runs before each timed block, as lm_step.rs


def parse_shapes(s):
    out = []
    for part in s.split(","):
        b, _, t = part.strip().partition("x")
        if not (b.isdigit() and t.isdigit() and int(b) > 0 and int(t) > 0):
            raise SystemExit(f"--shapes: '{part}' is not BATCHxSEQ (e.g. 8x128)")
        out.append((int(b), int(t)))
    return out


# ---------------------------------------------------------------- koala side (parent process)

def koala_times(args, json_path, adapter_dir):
    env = dict(os.environ, KOALA_BENCH_THREADS=str(args.threads), KOALA_BENCH_JSON=json_path,
               KOALA_BENCH_SHAPES=args.shapes, KOALA_BENCH_REPS=str(args.reps), KOALA_BENCH_MODEL=args.model)
    for name, value in [("KOALA_BENCH_TRAIN", args.train),
                        ("KOALA_BENCH_LORA_RANK", args.lora_rank and str(args.lora_rank)),
                        ("KOALA_BENCH_ADAPTER_DIR", args.lora_rank and adapter_dir)]:
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    subprocess.run(["cargo", "bench", "--bench", "lm_step"], cwd=ROOT, env=env, check=True)
    with open(json_path) as f:
        return json.load(f)


def export_weights(model_path, npz_path):
    """The ONNX file's float initializers as float32 arrays by name (read here so the PyTorch worker need not
    import onnx, which would add to its RSS)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(model_path)
    np.savez(npz_path, **{t.name: numpy_helper.to_array(t).astype(np.float32) for t in m.graph.initializer
                          if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)})


def torch_times(args, tmp, adapter_dir):
    npz = os.path.join(tmp, "weights.npz")
    out = os.path.join(tmp, "torch.json")
    export_weights(args.model, npz)
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", npz, out, "--threads", str(args.threads),
           "--shapes", args.shapes, "--reps", str(args.reps), "--model", args.model, "--attn", args.attn]
    if args.train:
        cmd += ["--train", args.train]
    if args.lora_rank:
        cmd += ["--lora-rank", str(args.lora_rank), "--adapter-dir", adapter_dir]
    # koala's ORT sessions run with intra-op spinning off (koala-runtime SessionOptions::spinning); the OpenMP
    # equivalent for PyTorch's intra-op pool is OMP_WAIT_POLICY=PASSIVE. It matters on a shared machine: with
    # 2 threads, load ~8 on 2 cores, active spinning took PyTorch's 8x128 step from ~0.18 s to 1-3 s.
    env = dict(os.environ, OMP_WAIT_POLICY=args.omp_wait_policy)
    subprocess.run(cmd, check=True, env=env)
    with open(out) as f:
        return json.load(f)


# ---------------------------------------------------------------- PyTorch side (worker subprocess)

def peft_to_koala(name):
    """PEFT's parameter name (`base_model.model.<module>.lora_A.default.weight`) as koala's adapter tensor
    name (`<module>.lora_A.weight`, the name in the PEFT file without its `base_model.model.` prefix)."""
    return name.removeprefix("base_model.model.").replace(".default.", ".")


def worker(args):
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    model_dir = os.path.dirname(os.path.abspath(args.model))
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    if os.path.abspath(args.model) == DEFAULT_MODEL:
        sys.path.insert(0, GEN)
        from llama_export import LlamaLM

        model = LlamaLM(cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                        cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["rms_norm_eps"], cfg["rope_theta"])
        logits_of = model
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=args.attn, dtype=torch.float32)

        def logits_of(x):
            return model(input_ids=x, use_cache=False).logits

    weights = np.load(args.torch_worker[0])
    params = dict(model.named_parameters())  # a tied head shares model.embed_tokens.weight
    missing = sorted(set(params) - set(weights.files))
    if missing:
        raise SystemExit(f"{args.model} has no initializer for PyTorch parameters {missing}")
    with torch.no_grad():
        for name, p in params.items():
            w = torch.from_numpy(weights[name])
            if w.shape != p.shape:
                raise SystemExit(f"initializer '{name}' has shape {list(w.shape)}, PyTorch wants {list(p.shape)}")
            p.copy_(w)
    model = model.float().eval()  # no dropout anywhere; eval() only for clarity
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        # koala's adapters as initialised (same A, B = 0), in PEFT's format: the same starting point. Loaded
        # as a plain PeftModel (task_type None) because the tiny LlamaLM is not a transformers model.
        lora_cfg = LoraConfig.from_pretrained(args.adapter_dir)
        lora_cfg.task_type = None
        lora_cfg.inference_mode = False
        model = get_peft_model(model, lora_cfg)
        result = set_peft_model_state_dict(model, load_file(os.path.join(args.adapter_dir, "adapter_model.safetensors")))
        if result.unexpected_keys:
            raise SystemExit(f"koala's adapter file has tensors PEFT does not place: {result.unexpected_keys[:4]}")
        model = model.eval()
        params = {peft_to_koala(n): p for n, p in model.named_parameters() if "lora_" in n}
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        trained = list(params)
        # PEFT wraps the base model's Linear layers in place, so `logits_of` runs the adapters too.
    else:
        pattern = re.compile(args.train) if args.train else None
        trained = [n for n in params if pattern is None or pattern.search(n)]
        if not trained:
            raise SystemExit(f"--train '{args.train}' matches no parameter of the PyTorch model")
        for name, p in params.items():
            p.requires_grad_(name in trained)

    vocab = cfg["vocab_size"]
    with open(TEXT, "rb") as f:
        ids = torch.from_numpy(np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64) % vocab)

    def batch(b, t, k):
        n = b * t
        count = len(ids) // n
        s = (k % count) * n
        return ids[s:s + n].view(b, t)

    def loss_of(x):
        """Shifted next-token cross-entropy, mean over all B*(T-1) targets (HF's *ForCausalLM loss)."""
        logits = logits_of(x)
        v = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1, :].reshape(-1, v), x[:, 1:].reshape(-1), ignore_index=-100)

    def timed(reps, fn, times):
        for i in range(WARMUP + reps):
            s = time.perf_counter()
            fn(i)
            if i >= WARMUP:
                times.append(time.perf_counter() - s)

    results = []
    half = args.reps // 2
    for b, t in parse_shapes(args.shapes):
        if len(ids) < b * t:
            raise SystemExit(f"{TEXT} has {len(ids)} tokens, fewer than one {b}x{t} batch")
        state = {"kf": 0, "ks": 0}
        t_fwd, t_step = [], []

        def forward(_):
            with torch.no_grad():
                logits_of(batch(b, t, state["kf"]))
            state["kf"] += 1

        def step(_):
            model.zero_grad(set_to_none=True)
            loss_of(batch(b, t, state["ks"])).backward()
            state["ks"] += 1

        for _round in range(2):  # [forward block, step block] twice, as lm_step.rs
            timed(half, forward, t_fwd)
            timed(half, step, t_step)
        model.zero_grad(set_to_none=True)
        loss0 = loss_of(batch(b, t, 0))
        loss0.backward()
        loss0 = float(loss0.detach())
        grad_l2 = {n: float(params[n].grad.double().norm()) for n in trained}
        fwd_ms, step_ms = 1e3 * statistics.median(t_fwd), 1e3 * statistics.median(t_step)
        results.append({"batch": b, "seq": t, "tokens": b * t, "forward_ms": fwd_ms, "step_ms": step_ms,
                        "forward_tokens_per_s": b * t / (fwd_ms * 1e-3),
                        "step_tokens_per_s": b * t / (step_ms * 1e-3), "loss_batch0": loss0,
                        "grad_l2_batch0": grad_l2})
    # ru_maxrss is in KiB on Linux: the worker's high-water mark (torch's allocator and libraries included)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with open(args.torch_worker[1], "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "peak_rss_mib": peak,
                   "trained_tensors": len(trained),
                   "trained_params": sum(params[n].numel() for n in trained), "shapes": results}, f, indent=1)


# ---------------------------------------------------------------- table

def print_table(args, koala, pt):
    what = f"LoRA rank {args.lora_rank}" if args.lora_rank else (args.train or "all weights")
    print(f"\nmodel: {os.path.relpath(args.model, ROOT)}; trained: {what} "
          f"(koala {koala['shapes'][0]['trainable_tensors']} tensors / "
          f"{koala['shapes'][0]['trainable_params']} params, PyTorch {pt['trained_tensors']} / "
          f"{pt['trained_params']}); threads {args.threads} (ORT intra-op; torch {pt['torch']}, "
          f"{pt['threads']} intra-op, OMP_WAIT_POLICY={args.omp_wait_policy}); f32; median of {koala['reps']} steps")
    print("| B×T | koala step | PyTorch step | koala / PyTorch | koala tok/s | PyTorch tok/s "
          "| ORT forward | PyTorch forward | loss batch 0 koala / PyTorch | max rel. diff of gradient L2 norms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_shape = {(r["batch"], r["seq"]): r for r in pt["shapes"]}
    missing = [(k["batch"], k["seq"]) for k in koala["shapes"] if (k["batch"], k["seq"]) not in by_shape]
    if missing:
        raise SystemExit(f"PyTorch did not run the shapes {missing} that koala's JSON has; pass the same --shapes")
    for k in koala["shapes"]:
        p = by_shape[(k["batch"], k["seq"])]
        print(f"| {k['batch']}×{k['seq']} | {k['step_ms']:.2f} ms | {p['step_ms']:.2f} ms | "
              f"{k['step_ms'] / p['step_ms']:.2f}× | {k['step_tokens_per_s']:.0f} | {p['step_tokens_per_s']:.0f} | "
              f"{k['forward_ms']:.2f} ms | {p['forward_ms']:.2f} ms | "
              f"{k['loss_batch0']:.5f} / {p['loss_batch0']:.5f} | {grad_norm_diff(k, p):.1e} |")
    krss = koala.get("peak_rss_mib")
    print(f"peak RSS over all shapes: koala {krss:.1f} MiB (VmHWM of the cargo-bench process, ORT arenas included)"
          if krss is not None else "peak RSS: koala unavailable", end="")
    print(f"; PyTorch {pt['peak_rss_mib']:.1f} MiB (ru_maxrss of a worker running only PyTorch)")
    # Same weights, same batch, same loss definition: f32 forward passes agree to ~1e-5 relative
    # (export check: ORT vs PyTorch logits 9.5e-6 abs); 1e-4 leaves room for the different reduction order.
    # Gradient norms: the same f32 computation through 4 layers and a 512-way softmax, summed in different
    # orders; 1e-3 relative is far above that rounding and far below any wrong or missing gradient term.
    bad = [(k["batch"], k["seq"]) for k in koala["shapes"]
           if abs(k["loss_batch0"] - by_shape[(k["batch"], k["seq"])]["loss_batch0"])
           > 1e-4 * max(1.0, abs(k["loss_batch0"])) or grad_norm_diff(k, by_shape[(k["batch"], k["seq"])]) > 1e-3]
    if bad:
        print(f"WARNING: at {bad} the batch-0 losses differ by more than 1e-4 relative or a gradient norm by more "
              "than 1e-3 relative: the two sides do not compute the same step")
        return 1
    return 0


def grad_norm_diff(k, p):
    """Largest relative difference between koala's and PyTorch's per-tensor gradient L2 norms at batch 0
    (inf when the two sides trained different tensors)."""
    kg, pg = k.get("grad_l2_batch0", {}), p["grad_l2_batch0"]
    if set(kg) != set(pg):
        return float("inf")
    return max(abs(kg[n] - pg[n]) / max(pg[n], 1e-12) for n in pg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("KOALA_BENCH_THREADS", "2")))
    ap.add_argument("--train", default=os.environ.get("KOALA_BENCH_TRAIN") or None,
                    help="train only parameters whose name matches (both sides), e.g. '^model\\.norm'")
    ap.add_argument("--shapes", default=os.environ.get("KOALA_BENCH_SHAPES", "8x128,1x256,4x64"))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("KOALA_BENCH_REPS", "30")),
                    help="timed steps per shape, split over two rounds")
    ap.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"], default="PASSIVE",
                    help="OMP_WAIT_POLICY of the PyTorch worker (PASSIVE matches koala's ORT sessions, which do not spin)")
    ap.add_argument("--model", default=os.environ.get("KOALA_BENCH_MODEL") or DEFAULT_MODEL,
                    help="the causal LM (.onnx, with config.json beside it), relative to the repository root or "
                         "absolute; e.g. models/smollm2/model.onnx after `koala import`")
    ap.add_argument("--lora-rank", type=int, default=int(os.environ.get("KOALA_BENCH_LORA_RANK") or 0) or None,
                    help="train LoRA adapters of this rank (alpha 2r, q/k/v/o/gate/up/down) on both sides")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa",
                    help="attention of the Hugging Face model (--model): sdpa (default, PyTorch's fused kernel) or eager")
    ap.add_argument("--adapter-dir", help=argparse.SUPPRESS)
    ap.add_argument("--skip-koala", metavar="JSON", help="reuse a KOALA_BENCH_JSON file instead of running cargo bench")
    ap.add_argument("--torch-worker", nargs=2, metavar=("WEIGHTS_NPZ", "OUT_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    parse_shapes(args.shapes)
    args.model = os.path.join(ROOT, args.model)  # an absolute path stays as it is
    args.reps = max(1, (args.reps + 1) // 2) * 2  # two equal rounds, as lm_step.rs
    if args.torch_worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = os.path.join(tmp, "adapter")
        if args.skip_koala:
            if args.lora_rank:
                raise SystemExit("--skip-koala cannot be used with --lora-rank: PyTorch needs the adapters "
                                 "koala initialised, which only a koala run writes")
            with open(args.skip_koala) as f:
                koala = json.load(f)
            if koala.get("train") != args.train or koala.get("threads") != args.threads \
                    or os.path.abspath(koala.get("model", DEFAULT_MODEL)) != os.path.abspath(args.model):
                raise SystemExit(f"{args.skip_koala} was measured with model={koala.get('model')!r}, "
                                 f"train={koala.get('train')!r}, threads={koala.get('threads')}; pass the same "
                                 "--model/--train/--threads")
        else:
            koala = koala_times(args, os.path.join(tmp, "lm_step.json"), adapter_dir)
        pt = torch_times(args, tmp, adapter_dir)
    return print_table(args, koala, pt)


if __name__ == "__main__":
    sys.exit(main())
