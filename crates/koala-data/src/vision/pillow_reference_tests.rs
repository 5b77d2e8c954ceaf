//! Resampling checked against Pillow, the library torchvision uses for PIL images, so that a model fine-tuned
//! here sees the same pixels it saw in PyTorch. References: `tests/fixtures/pillow_resize/reference.json`,
//! written by `gen.py` next to it (Pillow 13.0).
//!
//! Tolerance: 1.01 in 0–255 units. Pillow rounds to `u8` after its horizontal pass (error ≤ 0.5, carried
//! through the vertical pass whose non-negative weights sum to 1) and again at the end (≤ 0.5); we keep `f32`
//! throughout. Its 22-bit fixed-point weights add < 0.01.

use image::{DynamicImage, GrayImage, RgbImage};
use serde_json::Value;

use super::geometry::{crop_plans, CropBox};
use super::preprocess::{Preprocess, Resize};
use super::resample::{render, Normalizer, Pixels, Scratch};

const TOLERANCE: f32 = 1.01;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pillow_resize/reference.json"
    );
    let text = std::fs::read_to_string(path).expect("reference fixture present in the repository");
    let json: Value = serde_json::from_str(&text).expect("fixture is valid JSON");
    json["cases"].as_array().expect("cases array").clone()
}

fn case(name: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("case {name} in fixture"))
}

fn u8s(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("byte") as u8)
        .collect()
}

fn usize_at(v: &Value, i: usize) -> usize {
    v[i].as_u64().expect("integer") as usize
}

/// The source image of a case and its channel count.
fn source(c: &Value) -> (DynamicImage, usize) {
    let s = &c["src"];
    let (w, h) = (
        s["width"].as_u64().unwrap() as u32,
        s["height"].as_u64().unwrap() as u32,
    );
    let data = u8s(&s["data"]);
    match s["channels"].as_u64().unwrap() {
        1 => (
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, data).unwrap()),
            1,
        ),
        _ => (
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, data).unwrap()),
            3,
        ),
    }
}

/// Identity normalisation scaled back to 0–255, so outputs compare directly with Pillow's bytes.
fn byte_scale(channels: usize, out_w: u32, out_h: u32, resize: Resize) -> Preprocess {
    Preprocess {
        height: out_h,
        width: out_w,
        channels,
        resize,
        random_resized_crop: None,
        hflip_prob: 0.0,
        mean: vec![0.0; channels],
        std: vec![1.0 / 255.0; channels],
    }
}

/// Compares planar `ours` with Pillow's interleaved `expected`.
fn assert_matches_pillow(name: &str, ours: &[f32], expected: &[u8], channels: usize) {
    let plane = expected.len() / channels;
    let mut worst = 0.0f32;
    for (i, &e) in expected.iter().enumerate() {
        let (pixel, c) = (i / channels, i % channels);
        worst = worst.max((ours[c * plane + pixel] - f32::from(e)).abs());
    }
    assert!(
        worst <= TOLERANCE,
        "{name}: max |ours - pillow| = {worst} > {TOLERANCE}"
    );
}

fn check_eval_case(name: &str) {
    let c = case(name);
    let (image, channels) = source(&c);
    let op = &c["op"];
    let (out_w, out_h) = (
        usize_at(&op["out"], 0) as u32,
        usize_at(&op["out"], 1) as u32,
    );
    let resize = match op["kind"].as_str().unwrap() {
        "eval_exact" => Resize::Exact {
            width: usize_at(&op["resize"], 0) as u32,
            height: usize_at(&op["resize"], 1) as u32,
        },
        _ => Resize::ShorterSide(op["shorter_side"].as_u64().unwrap() as u32),
    };
    let pre = byte_scale(channels, out_w, out_h, resize);
    let mut out = vec![0.0; pre.sample_len()];
    pre.apply_eval(&image, &mut out).unwrap();
    assert_matches_pillow(name, &out, &u8s(&c["expected"]), channels);
}

#[test]
fn upscale_gray_28_to_96_matches_pillow() {
    check_eval_case("gray_28_to_96_exact");
}

#[test]
fn shorter_side_resize_and_center_crop_match_pillow() {
    check_eval_case("rgb_37x23_shorter20_crop16");
}

#[test]
fn strong_downscale_matches_pillow() {
    check_eval_case("rgb_37x23_to_9x5_exact");
}

#[test]
fn crop_box_resize_and_flip_match_pillow() {
    let c = case("rgb_crop_box_to_16_flipped");
    let (image, channels) = source(&c);
    let rgb = image.as_rgb8().expect("rgb source");
    let op = &c["op"];
    let field = |k: &str| op[k].as_u64().unwrap() as usize;
    let b = CropBox {
        top: field("top"),
        left: field("left"),
        height: field("height"),
        width: field("width"),
    };
    let (px, py) = crop_plans(b, usize_at(&op["out"], 0), usize_at(&op["out"], 1));
    let mut scratch = Scratch::default();
    scratch.x.compute(&px, true);
    scratch.y.compute(&py, false);
    let mut out = vec![0.0; channels * px.out_len * py.out_len];
    let pixels = Pixels {
        data: rgb.as_raw(),
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        channels,
    };
    render(
        pixels,
        &Normalizer::new(&[0.0; 3], &[1.0 / 255.0; 3]),
        &mut scratch,
        &mut out,
    );
    assert_matches_pillow(
        "rgb_crop_box_to_16_flipped",
        &out,
        &u8s(&c["expected"]),
        channels,
    );
}
