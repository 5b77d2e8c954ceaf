//! The `ort` execution target: 2-D convolutions of the training graph on ONNX Runtime's
//! blocked-channel (NCHWc) kernels (issue 11).
//!
//! **Why.** A training graph feeds its weights as graph inputs, so ORT's own
//! `NchwcTransformer` (which reorders *constant* weights once, at load) never fires and
//! every Conv, forward or backward, runs through im2col + GEMM; grouped convs (depthwise
//! forward, depthwise input and weight gradients) run one im2col per group. The blocked
//! kernels exist in every stock CPU build of ORT (x86-64), in the `com.microsoft.nchwc`
//! domain, and take the filter as an ordinary tensor: only the transformer insists on
//! constants. So this pass does what the transformer would, with the weight reorder written
//! as standard ops inside the graph (a few KB per conv per step).
//!
//! **Layout** (MLAS `snchwc.cpp`, `reorder.cpp`; B = the block, 16 with AVX-512, 8 with
//! AVX2, measured at run time by [`block_size`]): a blocked activation of logical shape
//! [N, C, H, W] is stored as [N, ⌈C/B⌉, H, W, B] (channels zero-padded), declared as
//! [N, ⌈C/B⌉·B, H, W]. `ReorderInput` / `ReorderOutput` convert. `nchwc.Conv` reads its
//! filter in one of two layouts, chosen by MLAS from the per-group channel counts:
//! * OIHWBiBo `[O/B, I/B, KH, KW, Bi, Bo]` for a dense conv whose input is blocked
//!   (input channels ≥ B);
//! * OIHWBo `[O/B, I, KH, KW, Bo]` for a depthwise conv (group = C = O) and for a dense
//!   conv on a plain NCHW input with fewer than B channels (a stem).
//!   O is zero-padded to a multiple of B (and the bias with it); a dense filter's I is padded
//!   to the blocked input's channels. Zero pads keep the blocked result's pad channels at
//!   exactly 0, so a blocked conv output can feed the next blocked conv directly.
//!
//! **The pass** ([`lower`]) walks the finished training graph once, in order:
//! * a 2-D float Conv that fits one of the cases above becomes `nchwc.Conv` on blocked
//!   operands; its output is kept *blocked only*;
//! * an element-wise node (Add, Mul, Clip, comparisons, Cast, …) whose tensor operands are
//!   all blocked with the same shape (channels a multiple of B, so no pad channel can turn
//!   non-zero) and whose other operands are scalars runs on the blocked data as it is;
//! * a Reshape that only splits or merges the batch into the channel axis (in multiples of
//!   B) is a reshape of the blocked data too (the depthwise weight gradient's
//!   batch-as-channels form, `backward/conv.rs`);
//! * a conv's bias gradient (ReduceSum over batch and space) reads the plain gradient:
//!   ORT's ReduceSum over the blocked layout's non-adjacent axes took 1.5–2× as long as
//!   the ReorderOutput + plain sum (MobileNetV2 profile), so there is no blocked form;
//! * any other reader of a blocked-only value gets `ReorderOutput` (under the value's own
//!   name) right before it, once. So every value keeps its name and meaning, and the pass
//!   can be switched off (`portable`) without changing anything else.
//!
//! Exactness: the blocked kernels sum in another order than im2col + GEMM, so results
//! agree to float rounding (≈1e-6 relative), not bitwise; the finite-difference tests run
//! on both targets (`tests/fd_conv.rs`, `tests/nchwc.rs`).

use crate::attrs::a_int;
use crate::backward::GradCtx;
use crate::proto::{AttributeProto, DataType, NodeProto, OperatorSetIdProto};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The ONNX Runtime domain of the blocked kernels.
pub const DOMAIN: &str = "com.microsoft.nchwc";

/// What [`lower`] changed (for `check`, logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NchwcStats {
    /// The channel block B.
    pub block: usize,
    /// Convs now on the blocked kernels.
    pub convs: usize,
    /// Every Conv of the graph (those that fit no blocked case stay on ORT's plain kernels:
    /// 1-D/3-D, grouped but not depthwise, depthwise with channels not a multiple of B).
    pub convs_total: usize,
    /// Element-wise nodes and reshapes that run on blocked data.
    pub blocked_nodes: usize,
    /// `ReorderInput` nodes (plain → blocked).
    pub reorder_in: usize,
    /// `ReorderOutput` nodes (blocked → plain).
    pub reorder_out: usize,
}

/// ORT's NCHWc channel block on this machine (`MlasNchwcGetBlockSize`), or None when the
/// runtime has no blocked kernels. Measured once per process by running `ReorderInput` on
/// 4 channels: its output pads the channels to exactly one block.
pub fn block_size() -> Option<usize> {
    static BLOCK: OnceLock<Option<usize>> = OnceLock::new();
    *BLOCK.get_or_init(probe_block_size)
}

fn probe_block_size() -> Option<usize> {
    use crate::proto::{GraphProto, ModelProto};
    use crate::training::value_info;
    let node = NodeProto {
        op_type: "ReorderInput".into(),
        domain: DOMAIN.into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        name: "probe".into(),
        ..Default::default()
    };
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            },
            OperatorSetIdProto {
                domain: DOMAIN.into(),
                version: 1,
            },
        ],
        graph: Some(GraphProto {
            name: "nchwc_block_probe".into(),
            node: vec![node],
            input: vec![value_info("x", DataType::Float, &[1, 4, 1, 1])],
            output: vec![crate::proto::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = koala_runtime::SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let bytes = prost::Message::encode_to_vec(&proto);
    let mut s = koala_runtime::Session::from_bytes(&bytes, &opts).ok()?;
    let x = [0f32; 4];
    let out = s
        .run(&[("x", koala_runtime::TensorView::f32(&x, &[1, 4, 1, 1]))])
        .ok()?;
    let b = *out.first()?.shape.get(1)?;
    // MLAS blocks are 8 (AVX2) or 16 (AVX-512); anything else is not a layout this pass
    // knows how to write.
    matches!(b, 8 | 16).then_some(b)
}

/// Adds the blocked domain to a model's `opset_import` (once).
pub fn import_domain(opsets: &mut Vec<OperatorSetIdProto>) {
    if !opsets.iter().any(|o| o.domain == DOMAIN) {
        opsets.push(OperatorSetIdProto {
            domain: DOMAIN.into(),
            version: 1,
        });
    }
}

/// A blocked value: its name and shape. A 4-D value is declared [N, ⌈C/B⌉·B, H, W] (what
/// the blocked kernels read); any other rank is a *view*: the storage order made explicit,
/// [N, C/B, spatial…, B] (C a multiple of B), which spatial reshapes and pads keep.
#[derive(Clone, Debug)]
struct Blocked {
    name: String,
    shape: Vec<usize>,
    view: bool,
}

/// How one Conv maps onto the blocked kernels.
enum ConvCase {
    /// group = C = O, one input channel per group: blocked X, OIHWBo filter.
    Depthwise,
    /// group 1, C ≥ B: blocked X, OIHWBiBo filter (I padded to X's blocked channels).
    Dense,
    /// group 1, C < B: plain NCHW X, OIHWBo filter.
    DenseStem,
}

struct Pass<'c, 'f> {
    ctx: &'c mut GradCtx<'f>,
    block: usize,
    /// Plain value name → its blocked copy.
    blocked: HashMap<String, Blocked>,
    /// Values that exist only blocked so far (their plain form is made on first use).
    blocked_only: HashSet<String>,
    out: Vec<NodeProto>,
    stats: NchwcStats,
    /// Value name → the op types of the nodes that read it (decides where a view pays).
    readers: HashMap<String, Vec<String>>,
}

/// Rewrites `nodes` (a finished training graph in execution order) for the blocked
/// kernels with channel block `block`; `graph_outputs` are materialised plain at the end.
/// New constants go to `ctx.initializers`. See the module docs.
pub fn lower(
    ctx: &mut GradCtx,
    nodes: Vec<NodeProto>,
    graph_outputs: &[String],
    block: usize,
) -> Result<(Vec<NodeProto>, NchwcStats)> {
    ctx.set_scope("ort_nchwc");
    let mut readers: HashMap<String, Vec<String>> = HashMap::new();
    for n in &nodes {
        for i in crate::backward::reads(n) {
            readers
                .entry(i.to_string())
                .or_default()
                .push(n.op_type.clone());
        }
    }
    let mut p = Pass {
        readers,
        ctx,
        block,
        blocked: HashMap::new(),
        blocked_only: HashSet::new(),
        out: Vec::with_capacity(nodes.len() * 2),
        stats: NchwcStats {
            block,
            ..NchwcStats::default()
        },
    };
    for node in nodes {
        if node.op_type == "Conv" && node.domain.is_empty() {
            p.stats.convs_total += 1;
        }
        if p.try_conv(&node)?
            || p.try_elementwise(&node)?
            || p.try_reshape(&node)?
            || p.try_pad(&node)?
        {
            continue;
        }
        for name in crate::backward::reads(&node) {
            p.materialise(name)?;
        }
        p.out.push(node);
    }
    for o in graph_outputs {
        p.materialise(o)?;
    }
    let stats = p.stats;
    let mut out = p.out;
    out.retain(|n| !n.name.starts_with(MARKER));
    remove_dead(&mut out, graph_outputs);
    Ok((out, stats))
}

/// Drops nodes none of whose outputs is read (e.g. a plain Reshape whose blocked twin
/// replaced it), last to first so chains of them go too.
fn remove_dead(nodes: &mut Vec<NodeProto>, graph_outputs: &[String]) {
    let mut needed: HashSet<String> = graph_outputs.iter().cloned().collect();
    let mut keep = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(crate::backward::reads(n).into_iter().map(String::from));
        }
    }
    let mut k = keep.into_iter();
    nodes.retain(|_| k.next().unwrap_or(true));
}

fn round_up(c: usize, b: usize) -> usize {
    c.div_ceil(b) * b
}

impl Pass<'_, '_> {
    /// Moves the nodes the helpers emitted into the output, in order.
    fn flush(&mut self) {
        self.out.append(&mut self.ctx.nodes);
    }

    /// Records that the value `plain` now exists only as the blocked value `name`.
    fn set_blocked_only(&mut self, plain: &str, name: String, shape: Vec<usize>, view: bool) {
        self.blocked
            .insert(plain.to_string(), Blocked { name, shape, view });
        self.blocked_only.insert(plain.to_string());
    }

    /// Whether every node that reads `v` has one of the op types `ops` (and one does).
    fn only_read_by(&self, v: &str, ops: &[&str]) -> bool {
        self.readers
            .get(v)
            .is_some_and(|r| r.iter().all(|op| ops.contains(&op.as_str())))
    }

    fn is_f32(&self, name: &str) -> bool {
        self.ctx.dtype(name).ok() == Some(DataType::Float)
    }

    /// The plain value `name` becomes available under its own name (ReorderOutput of its
    /// blocked copy) if so far it exists only blocked.
    fn materialise(&mut self, name: &str) -> Result<()> {
        if !self.blocked_only.remove(name) {
            return Ok(());
        }
        let b = self.blocked[name].clone();
        let shape = self.ctx.shape(name)?;
        let dt = self.ctx.dtype(name)?;
        if b.view {
            // [N, C/B, S…, B] → [N, C/B, B, S…] → [N, C, S…]
            let r = b.shape.len() - 1;
            let perm: Vec<usize> = [0, 1, r].into_iter().chain(2..r).collect();
            let t = self.ctx.transpose(&b.name, &perm)?;
            let s = self
                .ctx
                .const_i64(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
            self.ctx.emit_into("Reshape", &[&t, &s], &[name], vec![]);
        } else if dt == DataType::Float {
            self.ctx.emit_into(
                "ReorderOutput",
                &[&b.name],
                &[name],
                vec![a_int("channels", shape[1] as i64)],
            );
            self.set_domain_of_last();
        } else {
            // ReorderOutput is float-only: a blocked mask goes through float and back.
            let f = self.ctx.emit_shaped(
                "Cast",
                &[&b.name],
                vec![a_int("to", DataType::Float as i64)],
                DataType::Float,
                b.shape.clone(),
            );
            let plain = self.ctx.fresh("plain");
            self.ctx.emit_into(
                "ReorderOutput",
                &[&f],
                &[&plain],
                vec![a_int("channels", shape[1] as i64)],
            );
            self.set_domain_of_last();
            self.ctx.set_fact(&plain, DataType::Float, shape.clone());
            self.ctx
                .emit_into("Cast", &[&plain], &[name], vec![a_int("to", dt as i64)]);
        }
        self.stats.reorder_out += 1;
        self.flush();
        Ok(())
    }

    fn set_domain_of_last(&mut self) {
        if let Some(n) = self.ctx.nodes.last_mut() {
            n.domain = DOMAIN.into();
        }
    }

    /// The blocked copy of `x` (a plain [N, C, H, W] float value), reordering it if needed.
    fn blocked_input(&mut self, x: &str) -> Result<Blocked> {
        if let Some(b) = self.blocked.get(x) {
            return Ok(b.clone());
        }
        let xs = self.ctx.shape(x)?;
        let mut shape = xs.clone();
        shape[1] = round_up(xs[1], self.block);
        let name =
            self.ctx
                .emit_shaped("ReorderInput", &[x], vec![], DataType::Float, shape.clone());
        self.set_domain_of_last();
        self.stats.reorder_in += 1;
        let b = Blocked {
            name,
            shape,
            view: false,
        };
        self.blocked.insert(x.to_string(), b.clone());
        Ok(b)
    }

    /// Which blocked kernel a Conv can use, if any.
    fn conv_case(&self, node: &NodeProto) -> Option<ConvCase> {
        if node.op_type != "Conv" || !node.domain.is_empty() || node.input.len() < 2 {
            return None;
        }
        let (x, w) = (&node.input[0], &node.input[1]);
        if !self.is_f32(x) || !self.is_f32(w) || !self.is_f32(&node.output[0]) {
            return None;
        }
        let (xs, ws) = (self.ctx.shape(x).ok()?, self.ctx.shape(w).ok()?);
        if xs.len() != 4 || ws.len() != 4 {
            return None;
        }
        let group = crate::attrs::int(node, "group", 1) as usize;
        let (c, o, b) = (xs[1], ws[0], self.block);
        let x_blockable = self.blocked.contains_key(x.as_str()) || c % 4 == 0;
        if group == c && o == c && ws[1] == 1 && c % b == 0 && x_blockable {
            Some(ConvCase::Depthwise)
        } else if group == 1 && c >= b && x_blockable {
            Some(ConvCase::Dense)
        } else if group == 1 && c < b {
            Some(ConvCase::DenseStem)
        } else {
            None
        }
    }

    fn try_conv(&mut self, node: &NodeProto) -> Result<bool> {
        let Some(case) = self.conv_case(node) else {
            return Ok(false);
        };
        let (x, w, y) = (&node.input[0], &node.input[1], &node.output[0]);
        let ws = self.ctx.shape(w)?;
        let ys = self.ctx.shape(y)?;
        let b = self.block;
        let o_pad = round_up(ws[0], b);
        let x_in = match case {
            ConvCase::DenseStem => {
                self.materialise(x)?;
                x.to_string()
            }
            _ => self.blocked_input(x)?.name,
        };
        let i_pad = match case {
            ConvCase::Dense => round_up(ws[1], b),
            _ => ws[1],
        };
        let w_in = self.reorder_filter(w, &ws, o_pad, i_pad, matches!(case, ConvCase::Dense))?;
        let mut inputs = vec![x_in, w_in];
        if let Some(bias) = node.input.get(2).filter(|s| !s.is_empty()) {
            self.materialise(bias)?;
            inputs.push(self.pad_axis0(bias, o_pad)?);
        }
        let shape = vec![ys[0], o_pad, ys[2], ys[3]];
        let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let attrs: Vec<AttributeProto> = node.attribute.clone();
        let yb = self
            .ctx
            .emit_shaped("Conv", &refs, attrs, DataType::Float, shape.clone());
        self.set_domain_of_last();
        self.flush();
        self.set_blocked_only(y, yb, shape, false);
        self.stats.convs += 1;
        Ok(true)
    }

    /// Zero-pads axis 0 of a 1-D or 4-D value to `to` (O of a filter, a bias).
    fn pad_axis0(&mut self, v: &str, to: usize) -> Result<String> {
        let s = self.ctx.shape(v)?;
        if s[0] == to {
            return Ok(v.to_string());
        }
        let mut pads = vec![0i64; 2 * s.len()];
        pads[s.len()] = (to - s[0]) as i64;
        let mut shape = s.clone();
        shape[0] = to;
        let p = self.ctx.const_i64(&pads);
        Ok(self
            .ctx
            .emit_shaped("Pad", &[v, &p], vec![], DataType::Float, shape))
    }

    /// The filter `w` [O, I, KH, KW] in the layout `nchwc.Conv` reads, declared
    /// [o_pad, i_pad, KH, KW]: OIHWBiBo when `bi_bo`, else OIHWBo. A filter that is a
    /// batch-as-channels view of a blocked tensor (depthwise weight gradient) is already
    /// in OIHWBo order.
    fn reorder_filter(
        &mut self,
        w: &str,
        ws: &[usize],
        o_pad: usize,
        i_pad: usize,
        bi_bo: bool,
    ) -> Result<String> {
        let b = self.block;
        let declared = [o_pad, i_pad, ws[2], ws[3]];
        if !bi_bo && ws[1] == 1 {
            if let Some(v) = self.blocked_view_as_filter(w, ws)? {
                return Ok(v);
            }
        }
        self.materialise(w)?;
        let mut cur = self.pad_axis0(w, o_pad)?;
        if i_pad != ws[1] {
            let pads = self
                .ctx
                .const_i64(&[0, 0, 0, 0, 0, (i_pad - ws[1]) as i64, 0, 0]);
            let shape = vec![o_pad, i_pad, ws[2], ws[3]];
            cur = self
                .ctx
                .emit_shaped("Pad", &[&cur, &pads], vec![], DataType::Float, shape);
        }
        let k = ws[2] * ws[3];
        // Rank-reduced transposes: a 6-D Transpose was ≈ 5× slower in ORT (measured).
        let (split, perm): (Vec<usize>, Vec<usize>) = if !bi_bo {
            (vec![o_pad / b, b, i_pad * k], vec![0, 2, 1])
        } else if k == 1 {
            (vec![o_pad / b, b, i_pad / b, b], vec![0, 2, 3, 1])
        } else {
            (vec![o_pad / b, b, i_pad / b, b, k], vec![0, 2, 4, 3, 1])
        };
        let r = self.ctx.reshape(&cur, &split)?;
        let t = self.ctx.transpose(&r, &perm)?;
        self.ctx.reshape(&t, &declared)
    }

    /// If `w` ([N·C, 1, H, W]) is a Reshape of a value that is blocked [N, C, H, W] with C a
    /// multiple of the block, that blocked data read as [N·C/B, 1, H, W, B] already is the
    /// OIHWBo filter: return it reshaped to the declared filter shape.
    fn blocked_view_as_filter(&mut self, w: &str, ws: &[usize]) -> Result<Option<String>> {
        let Some(src) = self.reshape_source(w) else {
            return Ok(None);
        };
        let Some(b) = self.blocked.get(&src).filter(|b| !b.view).cloned() else {
            return Ok(None);
        };
        let ss = self.ctx.shape(&src)?;
        let fits = ss.len() == 4
            && ss[1] % self.block == 0
            && ss[0] * ss[1] == ws[0]
            && ss[2..] == ws[2..];
        if !fits {
            return Ok(None);
        }
        Ok(Some(self.ctx.reshape(&b.name, ws)?))
    }

    /// The input of the Reshape node (already emitted) that produced `v`, if any.
    fn reshape_source(&self, v: &str) -> Option<String> {
        self.out
            .iter()
            .rev()
            .find(|n| n.output.first().map(|o| o == v).unwrap_or(false))
            .filter(|n| n.op_type == "Reshape" && n.domain.is_empty())
            .map(|n| n.input[0].clone())
    }

    /// Element-wise ops that read blocked data correctly: same-shape tensor operands and
    /// scalars only (no broadcasting along a blocked axis), one output of that shape.
    fn try_elementwise(&mut self, node: &NodeProto) -> Result<bool> {
        const OPS: &[&str] = &[
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Sum",
            "Max",
            "Min",
            "Clip",
            "Relu",
            "LeakyRelu",
            "Sigmoid",
            "HardSigmoid",
            "HardSwish",
            "Tanh",
            "Neg",
            "Abs",
            "Greater",
            "Less",
            "GreaterOrEqual",
            "LessOrEqual",
            "Equal",
            "And",
            "Or",
            "Not",
            "Where",
            "Cast",
            "Identity",
        ];
        if !node.domain.is_empty() || !OPS.contains(&node.op_type.as_str()) {
            return Ok(false);
        }
        if node.output.len() != 1 || node.attribute.iter().any(|a| a.g.is_some()) {
            return Ok(false);
        }
        let y = &node.output[0];
        let Ok(ys) = self.ctx.shape(y) else {
            return Ok(false);
        };
        let mut bshape: Option<Vec<usize>> = None;
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            let Ok(s) = self.ctx.shape(i) else {
                return Ok(false);
            };
            if s.iter().product::<usize>() == 1 && !self.blocked.contains_key(i.as_str()) {
                continue; // a plain scalar broadcasts the same over the blocked layout
            }
            let Some(b) = self.blocked.get(i.as_str()).filter(|b| !b.view) else {
                return Ok(false);
            };
            if s != ys || s.len() != 4 || s[1] % self.block != 0 {
                return Ok(false);
            }
            if bshape.get_or_insert(b.shape.clone()) != &b.shape {
                return Ok(false);
            }
        }
        // Operands that exist in both forms count as blocked: a mask computed from a
        // forward activation (also needed plain by a weight gradient) then meets the
        // blocked output gradient without a reorder.
        let Some(shape) = bshape else {
            return Ok(false);
        };
        let mut n = node.clone();
        for i in n.input.iter_mut().filter(|i| !i.is_empty()) {
            if let Some(b) = self.blocked.get(i.as_str()) {
                *i = b.name.clone();
            }
        }
        let yb = self
            .ctx
            .fresh(&format!("{}_blocked", node.op_type.to_lowercase()));
        n.output = vec![yb.clone()];
        let dt = self.ctx.dtype(y)?;
        self.ctx.set_fact(&yb, dt, shape.clone());
        self.out.push(n);
        self.set_blocked_only(y, yb, shape, false);
        self.stats.blocked_nodes += 1;
        Ok(true)
    }

    /// A Reshape of a blocked value that moves whole channel blocks between batch and
    /// channels ([N, C, H, W] → [N', C', H, W], N·C = N'·C', C and C' multiples of B), or
    /// that keeps N and C and only reshapes the spatial axes (then the result is a view
    /// [N, C/B, spatial…, B] unless it is 4-D): the same bytes, still blocked.
    fn try_reshape(&mut self, node: &NodeProto) -> Result<bool> {
        if node.op_type != "Reshape" || !node.domain.is_empty() {
            return Ok(false);
        }
        let x = &node.input[0];
        let Some(b) = self.blocked.get(x.as_str()).cloned() else {
            return Ok(false);
        };
        let (xs, ys) = (self.ctx.shape(x)?, self.ctx.shape(&node.output[0])?);
        let bl = self.block;
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let batch_channels = !b.view
            && xs.len() == 4
            && ys.len() == 4
            && xs[1] % bl == 0
            && ys[1] % bl == 0
            && xs[0] * xs[1] == ys[0] * ys[1]
            && xs[2..] == ys[2..];
        let spatial = self.is_f32(x)
            && xs.len() >= 3
            && ys.len() >= 3
            && xs[..2] == ys[..2]
            && xs[1] % bl == 0
            && numel(&xs[2..]) == numel(&ys[2..]);
        let (shape, view) = if batch_channels || (spatial && ys.len() == 4) {
            (ys.clone(), false)
        } else if spatial && self.only_read_by(&node.output[0], &["Pad", "Reshape"]) {
            // A view pays only where its readers keep it blocked; turning one back costs a
            // Transpose, more than a ReorderOutput of the 4-D value.
            let mut v = vec![ys[0], ys[1] / bl];
            v.extend(&ys[2..]);
            v.push(bl);
            (v, true)
        } else {
            return Ok(false);
        };
        let yb = self.ctx.reshape(&b.name, &shape)?;
        self.flush();
        // The plain Reshape becomes a marker: `reshape_source` still finds it, the output
        // drops it, and a plain reader gets the blocked twin turned back instead.
        self.set_blocked_only(&node.output[0], yb, shape, view);
        self.out.push(reshape_marker(node));
        self.stats.blocked_nodes += 1;
        Ok(true)
    }

    /// A constant-zero Pad of spatial axes only, on a view: the same pads on the storage
    /// (none on its trailing block axis). Used by the strided depthwise input gradient's
    /// zero insertion (`backward/conv.rs`, `insert_zeros_by_pad`).
    fn try_pad(&mut self, node: &NodeProto) -> Result<bool> {
        if node.op_type != "Pad" || !node.domain.is_empty() || node.input.len() < 2 {
            return Ok(false);
        }
        let x = &node.input[0];
        let Some(b) = self.blocked.get(x.as_str()).filter(|b| b.view).cloned() else {
            return Ok(false);
        };
        let constant = crate::attrs::string(node, "mode", "constant") == "constant"
            && node.input.get(2).is_none_or(|v| v.is_empty())
            && node.input.get(3).is_none_or(|v| v.is_empty());
        let Some(pads) = self.ctx.ints(&node.input[1]) else {
            return Ok(false);
        };
        let r = b.shape.len() - 1; // the logical rank
        if !constant || pads.len() != 2 * r || pads[..2] != [0, 0] || pads[r..r + 2] != [0, 0] {
            return Ok(false);
        }
        let mut storage_pads: Vec<i64> = pads[..r].to_vec();
        storage_pads.push(0);
        storage_pads.extend(&pads[r..]);
        storage_pads.push(0);
        let mut shape = b.shape.clone();
        for i in 0..r {
            shape[i] = (shape[i] as i64 + pads[i] + pads[r + i]) as usize;
        }
        let p = self.ctx.const_i64(&storage_pads);
        let yb = self.ctx.emit_shaped(
            "Pad",
            &[&b.name, &p],
            vec![],
            DataType::Float,
            shape.clone(),
        );
        self.flush();
        let y = &node.output[0];
        self.set_blocked_only(y, yb, shape, true);
        self.stats.blocked_nodes += 1;
        Ok(true)
    }
}

/// A node that records "output = Reshape(input)" for [`Pass::reshape_source`] without
/// being part of the graph: removed by [`drop_markers`].
fn reshape_marker(node: &NodeProto) -> NodeProto {
    let mut n = node.clone();
    n.name = format!("{MARKER}{}", node.name);
    n
}

const MARKER: &str = "koala_nchwc_marker/";

/// Whether a node is one of this pass's blocked kernels (for tests and stats).
pub fn is_blocked_op(n: &NodeProto) -> bool {
    n.domain == DOMAIN
}
