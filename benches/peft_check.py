#!/usr/bin/env python3
"""Optional check (not in CI): does Hugging Face PEFT load koala's LoRA adapter, and does the
adapted HF model compute what koala's merged export computes?

    koala finetune --model models/tiny_llama_shakespeare/model.onnx \
        --data data/shakespeare/midsummer_nights_dream_gut.txt --block-size 64 --batch-size 8 \
        --max-steps 20 --optimizer adamw --lr 1e-3 --lora-rank 4 --run-dir runs/lora
    python benches/peft_check.py --base models/tiny_llama_shakespeare --run-dir runs/lora

Needs torch, transformers, peft, onnx, onnxruntime (tooling only; koala itself never needs
Python). Steps:
1. a transformers causal LM (Llama, Mistral or Qwen2) from `<base>/config.json`, with the weights of
   `<base>/model.onnx` (HF-named initializers, `[out, in]` as in PyTorch);
2. `PeftModel.from_pretrained(hf, <run-dir>/adapter)`: koala's `adapter_config.json` and
   `adapter_model.safetensors` as PEFT reads them (a wrong key or shape fails here, or shows
   as "missing adapter keys");
3. logits of the PEFT model vs ONNX Runtime on koala's merged `<run-dir>/model.onnx`, and PEFT's
   own `merge_and_unload()` weights vs the merged file's initializers.
"""
import argparse
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM


def initializers(path):
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def feeds(sess, ids):
    """Every input of the ONNX model: input_ids, plus (koala import's KV-cache signature)
    an all-ones attention_mask, positions 0..T-1 and empty past_key_values."""
    f = {"input_ids": ids}
    b, t = ids.shape
    for i in sess.get_inputs():
        if i.name == "attention_mask":
            f[i.name] = np.ones_like(ids)
        elif i.name == "position_ids":
            f[i.name] = np.tile(np.arange(t, dtype=np.int64), (b, 1))
        elif i.name.startswith("past_key_values"):
            shape = [b if k == 0 else (0 if k == 2 else d) for k, d in enumerate(i.shape)]
            f[i.name] = np.zeros(shape, np.float32)
    return f


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="folder with config.json and model.onnx")
    p.add_argument("--run-dir", required=True, help="koala LoRA run (model.onnx, adapter/)")
    a = p.parse_args()
    base, run = pathlib.Path(a.base), pathlib.Path(a.run_dir)

    config = AutoConfig.from_pretrained(str(base))  # llama, mistral or qwen2 (koala import's config.json)
    hf = AutoModelForCausalLM.from_config(config).eval()
    weights = initializers(base / "model.onnx")
    state = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        sys.exit(f"base weights do not fit the HF model: missing {missing}, unexpected {unexpected}")

    peft_model = PeftModel.from_pretrained(hf, str(run / "adapter")).eval()

    torch.manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (2, 48))
    with torch.no_grad():
        peft_logits = peft_model(input_ids=ids).logits.numpy()
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(["logits"], feeds(sess, ids.numpy()))[0]
    d_logits = float(np.abs(peft_logits - onnx_logits).max())

    base_sess = ort.InferenceSession(str(base / "model.onnx"), providers=["CPUExecutionProvider"])
    base_logits = base_sess.run(["logits"], feeds(base_sess, ids.numpy()))[0]
    moved = float(np.abs(onnx_logits - base_logits).max())

    merged = peft_model.merge_and_unload()
    koala_merged = initializers(run / "model.onnx")
    d_weights = max(
        float(np.abs(merged.state_dict()[k].numpy() - v).max())
        for k, v in koala_merged.items()
        if k in merged.state_dict()
    )
    print(f"PEFT loaded {run / 'adapter'} onto the HF model")
    print(f"logits: PEFT model vs koala's merged model.onnx (ORT): max |Δ| {d_logits:.3e}"
          f" (logits up to {float(np.abs(onnx_logits).max()):.2f}; the adapter moved them by up to {moved:.3e})")
    print(f"weights: PEFT merge_and_unload vs koala's merged initializers: max |Δ| {d_weights:.3e}")
    # f32 forward passes in two runtimes agree to ~1e-6 of the logits' size (SmolLM2: 1.0e-4 at
    # logits up to 33); a wrong merge or adapter layout moves them by the adapter's effect.
    scale = max(1.0, float(np.abs(onnx_logits).max()))
    ok = d_logits <= 1e-5 * scale and d_weights <= 1e-5
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
