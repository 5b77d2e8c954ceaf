//! The one table of gradient rules, and the table of ops recognised as
//! non-differentiable. Everything that needs to know "which ops can koala
//! differentiate" derives from these two tables: [`rule_for`], the error
//! message for an op without a rule, `koala check`, and the README's list
//! ([`supported_ops_markdown`], compared with the README by a test).
//!
//! Layout follows burn-onnx's `onnx-ir` registry (one `NodeSpec` per op with
//! an opset range) and tract's `register_all_ops`: a flat, greppable list.

use super::{
    activation, batchnorm, concat_split, conv, einsum, elementwise, gather, gemm, instancenorm,
    layernorm, lrn, math, matmul, pool, reduce, resize, shape_ops, slice_pad, softmax, tile_expand,
    where_, Rule,
};
use crate::model::is_default_domain;
use crate::proto::NodeProto;

/// Highest default-domain opset koala supports (see `check::OPSETS`).
pub const MAX_OPSET: i64 = 21;

/// One gradient rule.
pub struct RuleEntry {
    /// ONNX op type (default domain).
    pub op: &'static str,
    /// The rule.
    pub rule: Rule,
    /// First opset in which the rule applies (the op's introduction, or the
    /// first version whose form the rule reads).
    pub min_opset: i64,
    /// Last opset the rule is known to be right for.
    pub max_opset: i64,
    /// The file the rule lives in (`backward/<family>.rs`).
    pub family: &'static str,
    /// What the rule covers or leaves out, for the README and messages.
    pub note: &'static str,
}

const fn r(
    op: &'static str,
    rule: Rule,
    min_opset: i64,
    family: &'static str,
    note: &'static str,
) -> RuleEntry {
    RuleEntry {
        op,
        rule,
        min_opset,
        max_opset: MAX_OPSET,
        family,
        note,
    }
}

/// Every gradient rule koala has, one entry per op, grouped by family.
#[rustfmt::skip]
pub const RULES: &[RuleEntry] = &[
    r("Conv", conv::conv, 1, "conv", "groups, depthwise, strides, pads, auto_pad, dilations, 1-D/2-D"),
    r("ConvTranspose", conv::conv_transpose, 1, "conv", ""),
    r("Gemm", gemm::gemm, 7, "gemm", ""),
    r("MatMul", matmul::matmul, 1, "matmul", "batched, broadcast, 1-D operands"),
    r("Einsum", einsum::einsum, 12, "einsum", "one or two operands, no repeated index within an operand"),
    r("Add", elementwise::add, 7, "elementwise", "broadcasting"),
    r("Sub", elementwise::sub, 7, "elementwise", "broadcasting"),
    r("Mul", elementwise::mul, 7, "elementwise", "broadcasting"),
    r("Div", elementwise::div, 7, "elementwise", "broadcasting"),
    r("Neg", elementwise::neg, 6, "elementwise", ""),
    r("Sum", elementwise::sum, 8, "elementwise", "variadic, broadcasting"),
    r("Mean", elementwise::mean, 8, "elementwise", "variadic, broadcasting"),
    r("Where", where_::where_, 9, "where_", "the condition is data"),
    r("Max", where_::max, 11, "where_", "variadic, broadcasting; ties share the gradient equally"),
    r("Min", where_::min, 11, "where_", "variadic, broadcasting; ties share the gradient equally"),
    r("Relu", activation::relu, 6, "activation", ""),
    r("LeakyRelu", activation::leaky_relu, 6, "activation", ""),
    r("PRelu", activation::prelu, 7, "activation", "slope trainable, broadcast to X"),
    r("Elu", activation::elu, 6, "activation", ""),
    r("Selu", activation::selu, 6, "activation", ""),
    r("Clip", activation::clip, 6, "activation", ""),
    r("Sigmoid", activation::sigmoid, 6, "activation", ""),
    r("HardSigmoid", activation::hard_sigmoid, 6, "activation", ""),
    r("HardSwish", activation::hard_swish, 14, "activation", ""),
    r("Tanh", activation::tanh, 6, "activation", ""),
    r("Erf", math::erf, 9, "math", ""),
    r("Gelu", math::gelu, 20, "math", "approximate none and tanh"),
    r("Pow", math::pow, 7, "math", "exponent must not need a gradient"),
    r("Sqrt", math::sqrt, 6, "math", ""),
    r("Reciprocal", math::reciprocal, 6, "math", ""),
    r("Exp", math::exp, 6, "math", ""),
    r("Log", math::log, 6, "math", ""),
    r("Sin", math::sin, 7, "math", ""),
    r("Cos", math::cos, 7, "math", ""),
    r("Abs", math::abs, 6, "math", ""),
    r("Softplus", math::softplus, 1, "math", ""),
    r("Softsign", math::softsign, 1, "math", ""),
    r("Softmax", softmax::softmax, 1, "softmax", "masked (−inf) scores get zero gradient"),
    r("LogSoftmax", softmax::log_softmax, 1, "softmax", ""),
    r("BatchNormalization", batchnorm::batch_norm, 9, "batchnorm", "frozen statistics"),
    r("LayerNormalization", layernorm::layer_norm, 17, "layernorm", "Y, Mean and InvStdDev outputs"),
    r("InstanceNormalization", instancenorm::instance_norm, 6, "instancenorm", "scale and B trainable"),
    r("LRN", lrn::lrn, 1, "lrn", "odd size on NCHW (what ORT runs)"),
    r("MaxPool", pool::max_pool, 1, "pool", ""),
    r("AveragePool", pool::average_pool, 1, "pool", ""),
    r("GlobalAveragePool", pool::global_average_pool, 1, "pool", ""),
    r("Resize", resize::resize, 11, "resize", "X only; nearest, linear, cubic; all coordinate transformations; scales or sizes, axes; no antialias"),
    r("ReduceMean", reduce::reduce_mean, 1, "reduce", "axes as attribute or input"),
    r("ReduceSum", reduce::reduce_sum, 1, "reduce", "axes as attribute or input"),
    r("Flatten", shape_ops::reshape_like, 1, "shape_ops", ""),
    r("Reshape", shape_ops::reshape_like, 5, "shape_ops", ""),
    r("Squeeze", shape_ops::reshape_like, 1, "shape_ops", ""),
    r("Unsqueeze", shape_ops::reshape_like, 1, "shape_ops", ""),
    r("Transpose", shape_ops::transpose, 1, "shape_ops", ""),
    r("Identity", shape_ops::identity, 1, "shape_ops", ""),
    r("Dropout", shape_ops::identity, 1, "shape_ops", "inference mode only"),
    r("Cast", shape_ops::cast, 6, "shape_ops", "between float types"),
    r("Trilu", shape_ops::trilu, 14, "shape_ops", ""),
    r("Expand", tile_expand::expand, 8, "tile_expand", ""),
    r("Tile", tile_expand::tile, 6, "tile_expand", ""),
    r("Concat", concat_split::concat, 4, "concat_split", ""),
    r("Split", concat_split::split, 2, "concat_split", "split sizes or num_outputs"),
    r("Slice", slice_pad::slice, 1, "slice_pad", "negative axes, starts and steps"),
    r("Pad", slice_pad::pad, 2, "slice_pad", "constant mode"),
    r("Gather", gather::gather, 1, "gather", "embeddings (scatter-add) and activations, any axis"),
    r("GatherElements", gather::gather_elements, 16, "gather", "needs ScatterElements reduction (opset 16)"),
];

/// An op recognised as carrying no gradient.
pub struct NonDifferentiable {
    /// ONNX op type.
    pub op: &'static str,
    /// Why no gradient flows through it.
    pub why: &'static str,
}

const fn nd(op: &'static str, why: &'static str) -> NonDifferentiable {
    NonDifferentiable { op, why }
}

const INT_OUT: &str = "integer or boolean output";
const PIECEWISE: &str =
    "piecewise constant: zero gradient almost everywhere (PyTorch's convention)";

/// Ops through which no gradient flows, whatever their inputs: their outputs
/// are integers/booleans, or piecewise constant in their float inputs.
///
/// Ops that are non-differentiable only for some inputs (integer Add/Mul/
/// Div/Sub, Cast to an integer type, Cos/Sin of a constant RoPE table) are
/// recognised by element type and by reachability instead: a value computed
/// only from integers or from constants is never on a path from a trainable
/// weight, so no rule is asked for.
pub const NON_DIFFERENTIABLE: &[NonDifferentiable] = &[
    nd("Shape", INT_OUT),
    nd("Size", INT_OUT),
    nd("Range", "shape arithmetic (index ranges)"),
    nd("ConstantOfShape", "a constant of a computed shape"),
    nd("Constant", "a constant"),
    nd("EyeLike", "a constant of the input's shape"),
    nd("Equal", INT_OUT),
    nd("Not", INT_OUT),
    nd("And", INT_OUT),
    nd("Or", INT_OUT),
    nd("Xor", INT_OUT),
    nd("Less", INT_OUT),
    nd("LessOrEqual", INT_OUT),
    nd("Greater", INT_OUT),
    nd("GreaterOrEqual", INT_OUT),
    nd("IsNaN", INT_OUT),
    nd("IsInf", INT_OUT),
    nd("ArgMax", INT_OUT),
    nd("ArgMin", INT_OUT),
    nd("NonZero", INT_OUT),
    nd(
        "TopK",
        "its indices are integers; its values are not differentiated",
    ),
    nd("OneHot", "a constant pattern from integer indices"),
    nd("Floor", PIECEWISE),
    nd("Ceil", PIECEWISE),
    nd("Round", PIECEWISE),
    nd("Sign", PIECEWISE),
];

/// Is `node` an op through which no gradient flows?
pub fn is_non_differentiable(node: &NodeProto) -> bool {
    is_default_domain(node) && NON_DIFFERENTIABLE.iter().any(|e| e.op == node.op_type)
}

/// The table entry for an op at a given opset, if koala has a rule for it.
pub fn rule_entry(op: &str, opset: i64) -> Option<&'static RuleEntry> {
    RULES
        .iter()
        .find(|e| e.op == op && (e.min_opset..=e.max_opset).contains(&opset))
}

/// The rule for a node at a default-domain opset, if koala has one. Ops in
/// non-default domains have none (a lowering pass rewrites those first).
pub fn rule_for(node: &NodeProto, opset: i64) -> Option<Rule> {
    if !is_default_domain(node) {
        return None;
    }
    rule_entry(&node.op_type, opset).map(|e| e.rule)
}

/// The names of all ops with a rule, sorted (for messages).
pub fn supported_op_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = RULES.iter().map(|e| e.op).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The supported-op list as a Markdown table (op, opsets, family, note), in
/// table order; the README's section between `<!-- supported-ops:start -->`
/// and `<!-- supported-ops:end -->` is this text (a test compares them).
pub fn supported_ops_markdown() -> String {
    let mut s = String::from("| op | opsets | family | note |\n|---|---|---|---|\n");
    for e in RULES {
        let lo = e
            .min_opset
            .max(crate::check::NATIVE_OPSETS.start().to_owned());
        s.push_str(&format!(
            "| {} | {}–{} | `backward/{}.rs` | {} |\n",
            e.op, lo, e.max_opset, e.family, e.note
        ));
    }
    s.push_str("\nNo gradient flows through (recognised, never reported): ");
    let names: Vec<&str> = NON_DIFFERENTIABLE.iter().map(|e| e.op).collect();
    s.push_str(&names.join(", "));
    s.push_str(
        "; integer/boolean values (Cast to int, integer arithmetic) and values computed only from constants.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_appears_once_and_no_op_is_both_differentiable_and_not() {
        let mut seen = std::collections::HashSet::new();
        for e in RULES {
            assert!(seen.insert(e.op), "{} has two rule entries", e.op);
            assert!(
                !NON_DIFFERENTIABLE.iter().any(|n| n.op == e.op),
                "{} is in both tables",
                e.op
            );
            assert!(e.min_opset <= e.max_opset, "{}: empty opset range", e.op);
        }
    }

    #[test]
    fn rule_for_respects_the_opset_range_and_the_domain() {
        let node = |op: &str, domain: &str| NodeProto {
            op_type: op.into(),
            domain: domain.into(),
            ..Default::default()
        };
        assert!(rule_for(&node("LayerNormalization", ""), 17).is_some());
        assert!(rule_for(&node("LayerNormalization", ""), 16).is_none());
        assert!(rule_for(&node("Gelu", ""), 20).is_some());
        assert!(rule_for(&node("MatMul", "com.microsoft"), 17).is_none());
        assert!(rule_for(&node("NoSuchOp", ""), 17).is_none());
    }

    /// The README's supported-op section is `supported_ops_markdown()`.
    /// `KOALA_BLESS=1` rewrites the section instead of failing.
    #[test]
    fn readme_lists_exactly_the_ops_of_the_rule_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let text = std::fs::read_to_string(&path).expect("README.md");
        let (start, end) = (
            "<!-- supported-ops:start -->\n",
            "<!-- supported-ops:end -->",
        );
        let a = text
            .find(start)
            .expect("README lacks <!-- supported-ops:start -->")
            + start.len();
        let b = text
            .find(end)
            .expect("README lacks <!-- supported-ops:end -->");
        let want = supported_ops_markdown();
        if text[a..b] != want && std::env::var_os("KOALA_BLESS").is_some() {
            let new = format!("{}{want}{}", &text[..a], &text[b..]);
            std::fs::write(&path, new).expect("write README.md");
            return;
        }
        assert_eq!(
            text[a..b],
            want,
            "README.md's supported-op list is stale; regenerate it with KOALA_BLESS=1 cargo test --release -p koala-graph --lib readme"
        );
    }
}
