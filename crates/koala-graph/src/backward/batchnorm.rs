//! Gradient of BatchNormalization in inference mode (frozen statistics).
//!
//! Fine-tuning keeps the running mean and variance fixed (the default of
//! every exporter in eval mode), so BN is an affine map per channel:
//! y = scale·(x − mean)/√(var + ε) + bias. Scale and bias are trainable.
//!
//! Spec: https://onnx.ai/onnx/operators/onnx__BatchNormalization.html.
//! Opsets: 9/14/15 (14 adds training_mode, which must be off: training-mode
//! BN is refused; 15 lets scale/bias types differ from X).
//!
//! Tests: `crates/koala-graph/tests/fd_batchnorm.rs`.

use super::{GradCtx, RuleInput};
use crate::attrs;
use anyhow::{bail, Result};

/// BatchNormalization(X, scale, B, mean, var) → Y.
pub fn batch_norm(ctx: &mut GradCtx, r: &RuleInput) -> Result<Vec<Option<String>>> {
    if attrs::int(r.node, "training_mode", 0) != 0
        || r.node.output.iter().skip(1).any(|o| !o.is_empty())
    {
        bail!("BatchNormalization in training mode is not supported; export the model in eval mode (frozen statistics)");
    }
    if r.need(3) || r.need(4) {
        bail!("BatchNormalization running mean/variance ('{}', '{}') cannot be trained; exclude them from the trainable set", r.input(3), r.input(4));
    }
    let dy = r.dy0()?.to_string();
    let (x, scale, mean, var) = (
        r.input(0).to_string(),
        r.input(1).to_string(),
        r.input(3).to_string(),
        r.input(4).to_string(),
    );
    let xs = ctx.shape(&x)?;
    let c = xs[1];
    let eps = attrs::float(r.node, "epsilon", 1e-5) as f64;
    // Per-channel vectors broadcast as [1, C, 1, …].
    let bshape: Vec<usize> = (0..xs.len()).map(|i| if i == 1 { c } else { 1 }).collect();
    let e = ctx.scalar_like(eps, &var)?;
    let ve = ctx.binary("Add", &var, &e)?;
    let sd = ctx.emit_shaped("Sqrt", &[&ve], vec![], ctx.dtype(&var)?, vec![c]);
    let one = ctx.scalar_like(1.0, &var)?;
    let inv_std = ctx.binary("Div", &one, &sd)?;
    let reduce_axes: Vec<i64> = std::iter::once(0).chain(2..xs.len() as i64).collect();
    let mut out = r.none();
    if r.need(0) {
        let k = ctx.binary("Mul", &scale, &inv_std)?;
        let kb = ctx.reshape(&k, &bshape)?;
        out[0] = Some(ctx.binary("Mul", &dy, &kb)?);
    }
    // dscale = Σ dY·(x − mean)·inv_std = inv_std·(Σ dY·x − mean·Σ dY):
    // one full-size product and two per-channel sums instead of building
    // x̂ at full size (two fewer passes over the activation).
    let sum_dy = if r.need(1) || r.need(2) {
        Some(ctx.reduce_sum(&dy, &reduce_axes, false)?)
    } else {
        None
    };
    if r.need(1) {
        let dyx = ctx.binary("Mul", &dy, &x)?;
        let sum_dyx = ctx.reduce_sum(&dyx, &reduce_axes, false)?;
        let sum_dy = sum_dy.clone().expect("computed above");
        let mean_sum = ctx.binary("Mul", &mean, &sum_dy)?;
        let centered = ctx.binary("Sub", &sum_dyx, &mean_sum)?;
        out[1] = Some(ctx.binary("Mul", &centered, &inv_std)?);
    }
    if r.need(2) {
        out[2] = sum_dy;
    }
    Ok(out)
}
