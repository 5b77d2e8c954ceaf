//! Where in the source image each output pixel comes from: the evaluation resize + center crop, and
//! torchvision's `RandomResizedCrop` box sampling, expressed as one [`AxisPlan`] per axis.

use rand_chacha::rand_core::RngCore;

use super::preprocess::{RandomResizedCrop, Resize};
use super::resample::AxisPlan;
use crate::seeding::{uniform_below, uniform_range};

/// A crop box in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// The size an image of `src_w × src_h` has after `resize`, as torchvision computes it: for
/// [`Resize::ShorterSide`] the longer side is `int(size * long / short)`.
pub(crate) fn resized_size(src_w: usize, src_h: usize, resize: Resize) -> (usize, usize) {
    match resize {
        Resize::Exact { height, width } => (width as usize, height as usize),
        Resize::ShorterSide(s) => {
            let s = s as usize;
            let long_of =
                |long: usize, short: usize| (s as f64 * long as f64 / short as f64) as usize;
            if src_w <= src_h {
                (s, long_of(src_h, src_w))
            } else {
                (long_of(src_w, src_h), s)
            }
        }
    }
}

/// torchvision's center-crop offset `int(round((size - crop) / 2))`; Python rounds halves to even.
pub(crate) fn center_offset(size: usize, crop: usize) -> usize {
    ((size as f64 - crop as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as usize
}

/// Plans for "resize the whole image to `resized`, then take `out` pixels starting at the center offset".
fn resize_then_center_crop(src_len: usize, resized: usize, out: usize) -> AxisPlan {
    let scale = src_len as f64 / resized as f64;
    let offset = center_offset(resized, out);
    AxisPlan {
        out_len: out,
        start: offset as f64 * scale,
        scale,
        lo: 0,
        hi: src_len,
    }
}

/// `(x, y)` plans of the evaluation geometry: [`Resize`] then a center crop to `out_w × out_h`.
pub(crate) fn eval_plans(
    src_w: usize,
    src_h: usize,
    resize: Resize,
    out_w: usize,
    out_h: usize,
) -> (AxisPlan, AxisPlan) {
    let (rw, rh) = resized_size(src_w, src_h, resize);
    (
        resize_then_center_crop(src_w, rw, out_w),
        resize_then_center_crop(src_h, rh, out_h),
    )
}

/// `(x, y)` plans that resize the crop box `b` to `out_w × out_h`, reading only pixels inside the box (torchvision
/// crops before resizing).
pub(crate) fn crop_plans(b: CropBox, out_w: usize, out_h: usize) -> (AxisPlan, AxisPlan) {
    let axis = |start: usize, len: usize, out: usize| AxisPlan {
        out_len: out,
        start: start as f64,
        scale: len as f64 / out as f64,
        lo: start,
        hi: start + len,
    };
    (axis(b.left, b.width, out_w), axis(b.top, b.height, out_h))
}

/// Samples a crop box like torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a random area fraction
/// in `scale` and log-uniform aspect ratio in `ratio`; if none fits, a center crop clamped to `ratio`.
pub(crate) fn random_resized_crop_box(
    src_w: usize,
    src_h: usize,
    params: &RandomResizedCrop,
    rng: &mut (impl RngCore + ?Sized),
) -> CropBox {
    let area = (src_w * src_h) as f64;
    let (log_r0, log_r1) = (params.ratio[0].ln(), params.ratio[1].ln());
    for _ in 0..10 {
        let target_area = area * uniform_range(rng, params.scale[0], params.scale[1]);
        let aspect = uniform_range(rng, log_r0, log_r1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as usize;
        let h = (target_area / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= src_w && 0 < h && h <= src_h {
            let top = uniform_below(rng, (src_h - h + 1) as u64) as usize;
            let left = uniform_below(rng, (src_w - w + 1) as u64) as usize;
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    fallback_center_box(src_w, src_h, params)
}

/// torchvision's fallback: the largest centered box whose aspect ratio is within `ratio`.
fn fallback_center_box(src_w: usize, src_h: usize, params: &RandomResizedCrop) -> CropBox {
    let in_ratio = src_w as f64 / src_h as f64;
    let (w, h) = if in_ratio < params.ratio[0] {
        (
            src_w,
            ((src_w as f64 / params.ratio[0]).round_ties_even() as usize).clamp(1, src_h),
        )
    } else if in_ratio > params.ratio[1] {
        (
            ((src_h as f64 * params.ratio[1]).round_ties_even() as usize).clamp(1, src_w),
            src_h,
        )
    } else {
        (src_w, src_h)
    };
    CropBox {
        top: (src_h - h) / 2,
        left: (src_w - w) / 2,
        height: h,
        width: w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeding::{rng_for, Stream};

    #[test]
    fn shorter_side_resize_truncates_long_side_like_torchvision() {
        // 640 × 480 to shorter side 256: long = int(256 * 640 / 480) = int(341.33) = 341.
        assert_eq!(resized_size(640, 480, Resize::ShorterSide(256)), (341, 256));
        assert_eq!(resized_size(480, 640, Resize::ShorterSide(256)), (256, 341));
        assert_eq!(resized_size(28, 28, Resize::ShorterSide(109)), (109, 109));
    }

    #[test]
    fn center_offset_rounds_half_to_even() {
        assert_eq!(center_offset(5, 2), 2); // round(1.5) = 2
        assert_eq!(center_offset(7, 2), 2); // round(2.5) = 2
        assert_eq!(center_offset(256, 224), 16);
        assert_eq!(center_offset(4, 4), 0);
    }

    #[test]
    fn random_boxes_stay_inside_and_respect_ranges() {
        let params = RandomResizedCrop::default();
        let mut rng = rng_for(3, Stream::Augment, 0, 0);
        for _ in 0..1000 {
            let b = random_resized_crop_box(120, 80, &params, &mut rng);
            assert!(b.left + b.width <= 120 && b.top + b.height <= 80, "{b:?}");
            assert!(b.width > 0 && b.height > 0);
        }
    }

    #[test]
    fn fallback_box_is_centered_and_ratio_clamped() {
        // scale of 1 with ratio exactly 2 cannot fit a 10 × 10 image → fallback: h = 10, w = round(10 * 2) → clamp
        // to 10? No: in_ratio 1 < 2 = min ratio → w = 10, h = round(10 / 2) = 5, top = 2.
        let params = RandomResizedCrop {
            scale: [1.0, 1.0],
            ratio: [2.0, 2.0],
        };
        let b = random_resized_crop_box(10, 10, &params, &mut rng_for(0, Stream::Augment, 0, 0));
        assert_eq!(
            b,
            CropBox {
                top: 2,
                left: 0,
                height: 5,
                width: 10
            }
        );
    }
}
