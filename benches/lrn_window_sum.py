"""Times the three standard-ONNX forms of LRN's channel-window sum on ORT's
CPU kernels (one thread), the choice behind `crates/koala-graph/src/backward/lrn.rs`:

- Conv with a ones kernel [1, 1, size, 1] over a [N, 1, C, H·W] view,
- AveragePool (kernel [size, 1], count_include_pad = 1) over the same view,
  times size,
- Pad along C + `size` shifted Slices + Sum,

and ORT's LRN forward for scale. Prints milliseconds per run and each form's
largest difference from the Conv form (all are exact up to f32 rounding).
Tooling only (the product never runs Python):  python benches/lrn_window_sum.py
"""

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

N, C, H, W = 8, 192, 28, 28  # an Inception v1 LRN input, batch 8
SIZE = 5
HALF = (SIZE - 1) // 2


def session(nodes, inits):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


view = [i64("view", [N, 1, C, H * W]), i64("back", [N, C, H, W])]
pads = [HALF, 0, SIZE - 1 - HALF, 0]
conv = session(
    [
        helper.make_node("Reshape", ["x", "view"], ["v"]),
        helper.make_node("Conv", ["v", "k"], ["c"], pads=pads),
        helper.make_node("Reshape", ["c", "back"], ["y"]),
    ],
    view + [numpy_helper.from_array(np.ones([1, 1, SIZE, 1], np.float32), "k")],
)
pool = session(
    [
        helper.make_node("Reshape", ["x", "view"], ["v"]),
        helper.make_node(
            "AveragePool", ["v"], ["c"], kernel_shape=[SIZE, 1], pads=pads, count_include_pad=1
        ),
        helper.make_node("Reshape", ["c", "back"], ["y"]),
    ],
    view,
)
nodes = [helper.make_node("Pad", ["x", "pads"], ["p"])]
inits = [i64("pads", [0, HALF, 0, 0, 0, SIZE - 1 - HALF, 0, 0]), i64("axis", [1])]
for k in range(SIZE):
    inits += [i64(f"s{k}", [k]), i64(f"e{k}", [k + C])]
    nodes.append(helper.make_node("Slice", ["p", f"s{k}", f"e{k}", "axis"], [f"sl{k}"]))
nodes.append(helper.make_node("Sum", [f"sl{k}" for k in range(SIZE)], ["y"]))
slices = session(nodes, inits)
lrn = session([helper.make_node("LRN", ["x"], ["y"], size=SIZE)], [])

x = np.random.default_rng(0).random((N, C, H, W), dtype=np.float32)
ref = None
for name, s, scale in [
    ("Conv ones kernel", conv, 1),
    ("AveragePool", pool, SIZE),
    ("Pad + Slices + Sum", slices, 1),
    ("LRN forward (reference)", lrn, None),
]:
    s.run(None, {"x": x})
    t = time.perf_counter()
    for _ in range(10):
        y = s.run(None, {"x": x})[0]
    ms = (time.perf_counter() - t) / 10 * 1e3
    if scale is None:
        print(f"{name:26s} {ms:7.2f} ms")
        continue
    y = y * scale
    ref = y if ref is None else ref
    print(f"{name:26s} {ms:7.2f} ms   max |diff| {np.abs(y - ref).max():.2e}")
