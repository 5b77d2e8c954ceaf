//! The two hot reductions — KOALA++'s pass 1 and the KOALA-V/M norms — with explicit
//! AVX2 kernels on x86-64, because the auto-vectorizer packs the five f64 sums of one
//! element into a vector instead of eight elements of one sum, which costs shuffles and
//! made pass 1 compute-bound at ~4 cycles per element.
//!
//! The AVX2 kernels reproduce `kernels::lane_sums4`'s order exactly (element i into lane
//! i mod 8, the tail zero-padded, which adds exact zeros; lanes summed in order), so they
//! return the same bits as the portable code — tested below — and results do not depend on
//! the CPU. They accumulate with FMA: every product is of two f32 values and therefore exact
//! in f64, so the fused multiply-add rounds exactly where the portable multiply-then-add
//! does, with half the instructions (pass 1 is compute-bound, not memory-bound).

use crate::kernels::{lane_sums2, lane_sums4, Sums};

/// KOALA++ pass 1 over one chunk: [h·h_p, h·v_p, h·h, θ·θ, g·g] with h = g + wd·θ in f32.
pub(crate) fn koala_pp_sums(g: &[f32], p: &[f32], hp: &[f32], vp: &[f32], wd: f32) -> Sums {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU supports AVX2 and FMA, checked on the line above.
        return unsafe { avx2::koala_pp_sums(g, p, hp, vp, wd) };
    }
    koala_pp_sums_portable(g, p, hp, vp, wd)
}

/// [‖g‖², ‖g + wd·θ‖², ‖θ‖²] over one chunk (KOALA-V and KOALA-M).
pub(crate) fn norm_sums(g: &[f32], p: &[f32], wd: f32) -> Sums {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU supports AVX2 and FMA, checked on the line above.
        return unsafe { avx2::norm_sums(g, p, wd) };
    }
    norm_sums_portable(g, p, wd)
}

fn koala_pp_sums_portable(g: &[f32], p: &[f32], hp: &[f32], vp: &[f32], wd: f32) -> Sums {
    lane_sums4(g, p, hp, vp, |g, p, hp, vp| {
        let h = f64::from(g + wd * p);
        let (p, g) = (f64::from(p), f64::from(g));
        [h * f64::from(hp), h * f64::from(vp), h * h, p * p, g * g]
    })
}

fn norm_sums_portable(g: &[f32], p: &[f32], wd: f32) -> Sums {
    lane_sums2(g, p, |g, p| {
        let h = f64::from(g + wd * p);
        let (g, p) = (f64::from(g), f64::from(p));
        [g * g, h * h, p * p]
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::kernels::{Sums, LANES};

    /// Whether this CPU runs the kernels below (AVX2 and FMA; every x86-64 CPU since
    /// 2013–2015 has both).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Eight consecutive f32 from `rest`, zero-padded (the tail block).
    fn padded(rest: &[f32]) -> [f32; LANES] {
        let mut block = [0.0; LANES];
        block[..rest.len()].copy_from_slice(rest);
        block
    }

    #[target_feature(enable = "avx2")]
    fn load(block: &[f32; LANES]) -> __m256 {
        // SAFETY: `block` is 8 readable f32; loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(block.as_ptr()) }
    }

    /// Lanes 0–3 and 4–7 of an f32x8, widened exactly to f64.
    #[target_feature(enable = "avx2")]
    fn wide(x: __m256) -> [__m256d; 2] {
        [
            _mm256_cvtps_pd(_mm256_castps256_ps128(x)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)),
        ]
    }

    /// acc += a·b, lane by lane. a and b are widened f32, so a·b is exact and the FMA's
    /// single rounding equals the portable code's multiply-then-add.
    #[target_feature(enable = "avx2,fma")]
    fn mul_acc(acc: &mut [__m256d; 2], a: [__m256d; 2], b: [__m256d; 2]) {
        for i in 0..2 {
            acc[i] = _mm256_fmadd_pd(a[i], b[i], acc[i]);
        }
    }

    /// Adds the eight lanes in lane order, as `lane_sums4` does.
    #[target_feature(enable = "avx2")]
    fn lane_total(acc: [__m256d; 2]) -> f64 {
        let mut lanes = [0.0f64; LANES];
        // SAFETY: `lanes` holds 8 writable f64; storeu has no alignment requirement.
        unsafe {
            _mm256_storeu_pd(lanes.as_mut_ptr(), acc[0]);
            _mm256_storeu_pd(lanes.as_mut_ptr().add(4), acc[1]);
        }
        lanes.iter().fold(0.0, |s, x| s + x)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn koala_pp_sums(g: &[f32], p: &[f32], hp: &[f32], vp: &[f32], wd: f32) -> Sums {
        let n = g.len();
        let (p, hp, vp) = (&p[..n], &hp[..n], &vp[..n]);
        let wd = _mm256_set1_ps(wd);
        let mut acc = [[_mm256_setzero_pd(); 2]; 5];
        let mut block =
            |g: &[f32; LANES], p: &[f32; LANES], hp: &[f32; LANES], vp: &[f32; LANES]| {
                let (g, p) = (load(g), load(p));
                let h = wide(_mm256_add_ps(g, _mm256_mul_ps(wd, p)));
                let (g, p) = (wide(g), wide(p));
                mul_acc(&mut acc[0], h, wide(load(hp)));
                mul_acc(&mut acc[1], h, wide(load(vp)));
                mul_acc(&mut acc[2], h, h);
                mul_acc(&mut acc[3], p, p);
                mul_acc(&mut acc[4], g, g);
            };
        let (gb, gr) = g.as_chunks::<LANES>();
        let (pb, pr) = p.as_chunks::<LANES>();
        let (hb, hr) = hp.as_chunks::<LANES>();
        let (vb, vr) = vp.as_chunks::<LANES>();
        for (((g, p), hp), vp) in gb.iter().zip(pb).zip(hb).zip(vb) {
            block(g, p, hp, vp);
        }
        if !gr.is_empty() {
            block(&padded(gr), &padded(pr), &padded(hr), &padded(vr));
        }
        acc.map(|a| lane_total(a))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn norm_sums(g: &[f32], p: &[f32], wd: f32) -> Sums {
        let n = g.len();
        let p = &p[..n];
        let wd = _mm256_set1_ps(wd);
        let mut acc = [[_mm256_setzero_pd(); 2]; 3];
        let mut block = |g: &[f32; LANES], p: &[f32; LANES]| {
            let (g, p) = (load(g), load(p));
            let h = wide(_mm256_add_ps(g, _mm256_mul_ps(wd, p)));
            let (g, p) = (wide(g), wide(p));
            mul_acc(&mut acc[0], g, g);
            mul_acc(&mut acc[1], h, h);
            mul_acc(&mut acc[2], p, p);
        };
        let (gb, gr) = g.as_chunks::<LANES>();
        let (pb, pr) = p.as_chunks::<LANES>();
        for (g, p) in gb.iter().zip(pb) {
            block(g, p);
        }
        if !gr.is_empty() {
            block(&padded(gr), &padded(pr));
        }
        let [a, b, c] = acc.map(|a| lane_total(a));
        [a, b, c, 0.0, 0.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The AVX2 kernels must return exactly the portable bits (checkpoints and results
    /// must not depend on the CPU), including ragged tails of every length.
    #[test]
    fn avx2_kernels_match_portable_bitwise() {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            for n in (0..40).chain([1000, 32_768 + 5]) {
                let (g, p, hp, vp) = (data(1, n), data(2, n), data(3, n), data(4, n));
                // SAFETY: AVX2 and FMA support checked above.
                let fast = unsafe { avx2::koala_pp_sums(&g, &p, &hp, &vp, 5e-4) };
                let slow = koala_pp_sums_portable(&g, &p, &hp, &vp, 5e-4);
                assert_eq!(fast.map(f64::to_bits), slow.map(f64::to_bits), "n = {n}");
                // SAFETY: AVX2 and FMA support checked above.
                let fast = unsafe { avx2::norm_sums(&g, &p, 0.05) };
                let slow = norm_sums_portable(&g, &p, 0.05);
                assert_eq!(fast.map(f64::to_bits), slow.map(f64::to_bits), "n = {n}");
            }
            return;
        }
        eprintln!("no AVX2+FMA on this CPU: only the portable kernels exist here");
    }

    /// The f64 sums are accurate: compared with an f64 sum in a different order.
    #[test]
    fn sums_match_naive_f64() {
        let n = 10_001;
        let (g, p) = (data(5, n), data(6, n));
        let [gg, hh, pp, ..] = norm_sums(&g, &p, 0.1);
        let naive = |f: &dyn Fn(usize) -> f64| (0..n).map(f).sum::<f64>();
        let h = |i: usize| f64::from(g[i] + 0.1 * p[i]);
        // f64 sums of ~1e4 terms: relative error well below 1e-12.
        for (got, want) in [
            (gg, naive(&|i| f64::from(g[i]).powi(2))),
            (hh, naive(&|i| h(i) * h(i))),
            (pp, naive(&|i| f64::from(p[i]).powi(2))),
        ] {
            assert!(((got - want) / want).abs() < 1e-12, "{got} vs {want}");
        }
    }
}
