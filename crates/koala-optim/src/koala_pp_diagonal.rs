//! KOALA++ with a diagonal (per-coordinate) covariance scale, `diagonal = "second-moment"`:
//! a koala extension (issue 10).
//!
//! **Why.** The paper's filter starts from P₀ = σ·I and adds Q·I each step, so inside a
//! tensor every coordinate gets the same prior variance and the step is, up to KOALA++'s
//! low-rank corrections, a Polyak-sized gradient step. AdamW's advantage in fine-tuning is
//! its per-coordinate normalisation by √(running mean of g²).
//!
//! **Math.** Run the unchanged KOALA++ filter (spec §5.3, per-tensor or joint innovation)
//! in the coordinates φ = D^(−1/2)·θ, i.e. with P₀ = σ·D and Q·D in θ-coordinates, where
//! ```text
//! m   ← β₂·m + (1 − β₂)·h²           (h = g + wd·θ, element-wise; m starts at 0)
//! m̂   = m / (1 − β₂ⁿ)                 (n: the tensor's update count, Adam's bias correction)
//! d   = 1 / (√m̂ + ε),   s = √d        (Adam's denominator; s scales gradients into φ)
//! h_φ = s ⊙ h                         (the gradient in φ-coordinates, kept as "H")
//! v, S, λ, α, w: spec §5.3 with h_φ in place of h (v is kept in φ-coordinates)
//! θ   ← θ − η·ℓ·s ⊙ (v + Q·h_φ) / S    (the φ-step mapped back: Δθ = D^(1/2)·Δφ)
//! ```
//! The first step is Adam-like: m̂ = h², d = 1/(|h| + ε), so within a tensor the step is a
//! sign step; with per-tensor innovation and R small it is θ − η·ℓ·sign(h)/‖h‖₁.
//! D changes between steps while the stored H and v are in the previous step's
//! φ-coordinates; that drift is ignored (β₂ = 0.999 makes D change slowly after the first
//! steps). The invariant of spec §5.3 holds in φ: h_φ·Δφ = h·Δθ = −η·ℓ·(1 − R/S).
//!
//! **Cost.** One more vector (m) and one scalar (n) per tensor; both passes read m, pass 2
//! writes it, and every element costs a square root and a division twice: the optimizer
//! step is ≈ 2× the plain fused one, still well under 1 % of a fine-tuning step.

use crate::kernels::{simd_kernel, Sums};
use crate::koala_pp::Pass2;
use crate::state::StateLayout;

/// Vector, scalar and global slots of the fused path with the diagonal scale.
pub(crate) static FUSED_DIAGONAL_LAYOUT: StateLayout = StateLayout {
    kind: "koala-pp/fused-second-moment",
    vectors: &["v", "H", "m"],
    scalars: &["S", "x", "y", "n"],
    globals: &["R"],
    scratch: 0,
};

/// The scalar slot holding the tensor's update count n (bias correction).
pub(crate) const N: usize = 3;

/// Constants of the element-wise scale at one step of one tensor.
#[derive(Clone, Copy)]
pub(crate) struct Scale {
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// 1 / (1 − β₂ⁿ) for this step's n.
    pub inv_bias_correction: f32,
    pub eps: f32,
}

impl Scale {
    /// The scale for a tensor's `n`-th update (n ≥ 1).
    pub(crate) fn new(beta2: f64, eps: f64, n: f64) -> Self {
        Scale {
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            inv_bias_correction: (1.0 / (1.0 - beta2.powf(n))) as f32,
            eps: eps as f32,
        }
    }

    /// (new m, s = 1/√(√m̂ + ε)) for one element; pass 1 and pass 2 call this same
    /// function so that the dot products describe exactly the vectors pass 2 writes.
    #[inline(always)]
    fn at(&self, h: f32, m: f32) -> (f32, f32) {
        let m = self.beta2 * m + self.one_minus_beta2 * h * h;
        let s = 1.0 / ((m * self.inv_bias_correction).sqrt() + self.eps).sqrt();
        (m, s)
    }
}

simd_kernel! {
/// Pass 1 over one chunk: [h_φ·h_p, h_φ·v_p, h_φ·h_φ, θ·θ, g·g] with h = g + wd·θ and
/// h_φ = s·h in f32, products summed in f64 in element order.
pub(crate) fn diagonal_sums(g: &[f32], p: &[f32], hp: &[f32], vp: &[f32], m: &[f32], wd: f32, k: &Scale) -> Sums {
    let mut acc = [0.0f64; 5];
    for ((((g, p), hp), vp), m) in g.iter().zip(p).zip(hp).zip(vp).zip(m) {
        let h = g + wd * p;
        let (_, s) = k.at(h, *m);
        let hf = f64::from(s * h);
        let (p, g) = (f64::from(*p), f64::from(*g));
        acc[0] += hf * f64::from(*hp);
        acc[1] += hf * f64::from(*vp);
        acc[2] += hf * hf;
        acc[3] += p * p;
        acc[4] += g * g;
    }
    acc
}
}

simd_kernel! {
/// Pass 2 over one chunk: m and s as in pass 1; h_φ = s·h;
/// v = c_v·v_p + c_h·h_φ + c_p·h_p; θ ← θ + step·s·(v + Q·h_φ); v, h_φ and m overwrite
/// v_p, h_p and the old m in place.
pub(crate) fn diagonal_pass2(p: &mut [f32], v: &mut [f32], h: &mut [f32], m: &mut [f32], g: &[f32], c: &Pass2, k: &Scale) {
    for ((((p, v), h), m), g) in p.iter_mut().zip(v).zip(h).zip(m).zip(g) {
        let raw = g + c.wd * *p;
        let (m_new, s) = k.at(raw, *m);
        let hi = s * raw;
        let vi = c.c_v * *v + c.c_h * hi + c.c_p * *h;
        *p += c.step * s * (vi + c.q * hi);
        *v = vi;
        *h = hi;
        *m = m_new;
    }
}
}
