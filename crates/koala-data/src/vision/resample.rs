//! Separable triangle-filter resampling from interleaved `u8` pixels straight into normalised planar `f32`.
//!
//! The weights follow Pillow's `precompute_coeffs` (which torchvision's antialiased bilinear resize matches):
//! output pixel `o` is centred at source coordinate `start + (o + 0.5) * scale`, the triangle's support is
//! `max(scale, 1)` so downscaling averages every covered pixel instead of aliasing, and taps are clipped to a
//! source window (the crop box for random crops, the whole image otherwise). Unlike Pillow, intermediate values
//! stay `f32` instead of being rounded to `u8` between the two passes, a difference below 1/255.

/// How one output axis maps onto source coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AxisPlan {
    /// Number of output pixels.
    pub out_len: usize,
    /// Source coordinate of the left (top) edge of output pixel 0.
    pub start: f64,
    /// Source pixels per output pixel.
    pub scale: f64,
    /// Source pixels `lo..hi` may be read; taps outside are dropped and the rest renormalised.
    pub lo: usize,
    /// End (exclusive) of the readable source window.
    pub hi: usize,
}

/// Filter taps of one axis: output `o` reads source `first[o] .. first[o] + count[o]` with weights
/// `weights[o * stride ..]`. Kept between images so steady-state resampling allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct AxisWeights {
    /// The `(plan, mirror)` the taps were computed for: evaluation of same-size images (all of an IDX file)
    /// reuses them instead of recomputing.
    computed_for: Option<(AxisPlan, bool)>,
    first: Vec<usize>,
    count: Vec<usize>,
    stride: usize,
    weights: Vec<f32>,
}

impl AxisWeights {
    /// Recomputes the taps for `plan`; with `mirror`, output `o` gets the taps of `out_len - 1 - o`, which is a
    /// horizontal flip of the result at no extra cost.
    pub(crate) fn compute(&mut self, plan: &AxisPlan, mirror: bool) {
        if self.computed_for == Some((*plan, mirror)) {
            return;
        }
        self.computed_for = Some((*plan, mirror));
        let filter_scale = plan.scale.max(1.0);
        let inv_filter_scale = 1.0 / filter_scale;
        let support = filter_scale; // the triangle filter has support 1
        self.stride = 2 * support.ceil() as usize + 1;
        self.first.clear();
        self.first.resize(plan.out_len, 0);
        self.count.clear();
        self.count.resize(plan.out_len, 0);
        self.weights.clear();
        self.weights.resize(plan.out_len * self.stride, 0.0);
        for o in 0..plan.out_len {
            let slot = if mirror { plan.out_len - 1 - o } else { o };
            let center = plan.start + (o as f64 + 0.5) * plan.scale;
            let lo =
                ((center - support + 0.5).floor().max(plan.lo as f64) as usize).min(plan.hi - 1);
            let hi = ((center + support + 0.5).floor().min(plan.hi as f64) as usize)
                .clamp(lo + 1, lo + self.stride);
            let taps = &mut self.weights[slot * self.stride..slot * self.stride + (hi - lo)];
            let mut total = 0.0;
            for (k, w) in taps.iter_mut().enumerate() {
                let x = ((lo + k) as f64 - center + 0.5) * inv_filter_scale;
                let v = (1.0 - x.abs()).max(0.0);
                *w = v as f32;
                total += v;
            }
            if total > 0.0 {
                let inv_total = 1.0 / total;
                taps.iter_mut()
                    .for_each(|w| *w = (f64::from(*w) * inv_total) as f32);
            } else {
                taps[0] = 1.0; // degenerate window: fall back to the nearest readable pixel
            }
            self.first[slot] = lo;
            self.count[slot] = hi - lo;
        }
    }

    fn taps(&self, o: usize) -> (usize, &[f32]) {
        let start = o * self.stride;
        (self.first[o], &self.weights[start..start + self.count[o]])
    }

    /// The source range any output reads: `min(first) .. max(first + count)`.
    fn span(&self) -> (usize, usize) {
        let lo = self.first.iter().copied().min().unwrap_or(0);
        let hi = self
            .first
            .iter()
            .zip(&self.count)
            .map(|(f, c)| f + c)
            .max()
            .unwrap_or(0);
        (lo, hi)
    }
}

/// Decoded pixels, interleaved, 1 (grey) or 3 (RGB) channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pixels<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub channels: usize,
}

/// Per-output-channel affine map from a 0–255 value to the normalised value: `v * gain + offset`.
#[derive(Debug, Clone)]
pub(crate) struct Normalizer {
    gain: Vec<f32>,
    offset: Vec<f32>,
}

impl Normalizer {
    /// `(v / 255 - mean) / std` per channel.
    pub(crate) fn new(mean: &[f32], std: &[f32]) -> Self {
        Normalizer {
            gain: std.iter().map(|s| 1.0 / (255.0 * s)).collect(),
            offset: mean.iter().zip(std).map(|(m, s)| -m / s).collect(),
        }
    }

    fn channels(&self) -> usize {
        self.gain.len()
    }
}

/// Reusable buffers for [`render`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub x: AxisWeights,
    pub y: AxisWeights,
    rows: Vec<f32>,
    acc: Vec<f32>,
}

/// Luma weights (ITU-R 601, as Pillow's `convert("L")` and torchvision's `rgb_to_grayscale`).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Resamples `src` with the taps in `scratch.x` / `scratch.y` and writes the normalised planar result to
/// `out` (`norm.channels() × y.out_len × x.out_len`).
pub(crate) fn render(src: Pixels<'_>, norm: &Normalizer, scratch: &mut Scratch, out: &mut [f32]) {
    let Scratch { x, y, rows, acc } = scratch;
    let (out_w, out_h, sc) = (x.first.len(), y.first.len(), src.channels);
    let (row_lo, row_hi) = y.span();
    horizontal_pass(src, x, row_lo, row_hi, rows);
    let row_len = out_w * sc;
    acc.resize(row_len, 0.0);
    let plane = out_w * out_h;
    for oy in 0..out_h {
        let (first, weights) = y.taps(oy);
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (k, &w) in weights.iter().enumerate() {
            let row = &rows[(first + k - row_lo) * row_len..][..row_len];
            acc.iter_mut().zip(row).for_each(|(a, &r)| *a += w * r);
        }
        emit_row(acc, sc, norm, &mut out[oy * out_w..], plane, out_w);
    }
}

/// Filters source rows `row_lo..row_hi` horizontally into `rows` (`(row_hi - row_lo) × out_w × channels`).
///
/// This pass cannot be vectorised across outputs (each has its own taps), so it runs on the fewest rows
/// possible (only those the vertical taps read) and keeps its sums in registers, specialised per channel count.
fn horizontal_pass(
    src: Pixels<'_>,
    x: &AxisWeights,
    row_lo: usize,
    row_hi: usize,
    rows: &mut Vec<f32>,
) {
    let (out_w, sc) = (x.first.len(), src.channels);
    debug_assert!(row_hi <= src.height && src.data.len() == src.width * src.height * sc);
    rows.resize((row_hi - row_lo) * out_w * sc, 0.0);
    let stride = src.width * sc;
    for (r, dst) in (row_lo..row_hi).zip(rows.chunks_exact_mut(out_w * sc)) {
        let line = &src.data[r * stride..(r + 1) * stride];
        if sc == 1 {
            for (ox, d) in dst.iter_mut().enumerate() {
                let (first, weights) = x.taps(ox);
                let taps = &line[first..first + weights.len()];
                *d = weights
                    .iter()
                    .zip(taps)
                    .map(|(&w, &v)| w * f32::from(v))
                    .sum();
            }
        } else {
            for (ox, d) in dst.chunks_exact_mut(3).enumerate() {
                let (first, weights) = x.taps(ox);
                let taps = &line[first * 3..(first + weights.len()) * 3];
                let mut sum = [0.0f32; 3];
                for (&w, px) in weights.iter().zip(taps.chunks_exact(3)) {
                    sum[0] += w * f32::from(px[0]);
                    sum[1] += w * f32::from(px[1]);
                    sum[2] += w * f32::from(px[2]);
                }
                d.copy_from_slice(&sum);
            }
        }
    }
}

/// Writes one resampled row (`out_w` pixels of `sc` interleaved source channels, 0–255) to every output
/// channel plane, converting grey ↔ RGB and normalising. `out` starts at the row in plane 0.
fn emit_row(
    acc: &[f32],
    sc: usize,
    norm: &Normalizer,
    out: &mut [f32],
    plane: usize,
    out_w: usize,
) {
    for c in 0..norm.channels() {
        let (g, b) = (norm.gain[c], norm.offset[c]);
        let dst = &mut out[c * plane..c * plane + out_w];
        match (sc, norm.channels()) {
            (1, _) => dst.iter_mut().zip(acc).for_each(|(d, &v)| *d = v * g + b),
            (3, 3) => dst
                .iter_mut()
                .zip(acc.chunks_exact(3))
                .for_each(|(d, px)| *d = px[c] * g + b),
            _ => dst.iter_mut().zip(acc.chunks_exact(3)).for_each(|(d, px)| {
                *d = (LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2]) * g + b;
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the taps of output `o` when resampling `in_len` pixels to `out_len`. Tolerance 1e-6: weights are
    /// computed in f64 and stored as f32 (relative error ≤ 6e-8).
    fn assert_taps(out_len: usize, in_len: usize, o: usize, first: usize, expected: &[f32]) {
        let plan = AxisPlan {
            out_len,
            start: 0.0,
            scale: in_len as f64 / out_len as f64,
            lo: 0,
            hi: in_len,
        };
        let mut w = AxisWeights::default();
        w.compute(&plan, false);
        let (f, taps) = w.taps(o);
        assert_eq!(f, first, "first tap of output {o}");
        let nonzero: Vec<f32> = taps.iter().copied().filter(|&t| t != 0.0).collect();
        assert_eq!(nonzero.len(), expected.len(), "{taps:?}");
        assert!(
            nonzero
                .iter()
                .zip(expected)
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "{taps:?} vs {expected:?}"
        );
    }

    #[test]
    fn same_size_is_identity_taps() {
        // Output o is centred on pixel o: weight 1 there; the neighbour's weight is triangle(1) = 0 exactly.
        for o in 0..5 {
            assert_taps(5, 5, o, o, &[1.0]);
        }
    }

    #[test]
    fn upscale_by_two_matches_hand_computed_bilinear() {
        // 2 → 4: output centres 0.25, 0.75, … in source coordinates, pixel centres 0.5, 1.5.
        // Output 1 (centre 0.75): 0.75 * p0 + 0.25 * p1. Output 0 (centre 0.25): only p0 is inside the image.
        assert_taps(4, 2, 1, 0, &[0.75, 0.25]);
        assert_taps(4, 2, 0, 0, &[1.0]);
    }

    #[test]
    fn downscale_by_two_widens_the_filter() {
        // 4 → 2: support 2, output 0 centred at 1.0 reads pixels 0..3 (centres 0.5, 1.5, 2.5) with triangle
        // weights 1 - |d| / 2 = 0.75, 0.75, 0.25, normalised by their sum 1.75.
        assert_taps(2, 4, 0, 0, &[0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75]);
    }
}
