//! Preprocessing against hand-computed values. Values are compared with a tolerance of 1e-5 (normalised units,
//! magnitudes ≤ 3): the arithmetic is a handful of f32 operations per value, with errors of a few ulps.
//! Resampling itself is checked against Pillow in the crate's unit tests (`pillow_reference_tests`).

mod common;

use common::assert_mentions;
use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use koala_data::{DataError, Preprocess, RandomResizedCrop, Resize, IMAGENET_MEAN, IMAGENET_STD};

const TOL: f32 = 1e-5;

fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= TOL, "value {i}: {a} vs expected {e}");
    }
}

/// Greyscale `w × h` image with pixel (x, y) = 10 * y + x.
fn ramp(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| Luma([(10 * y + x) as u8])))
}

/// `[0, 1]` output, no augmentation, resize to `resize` then center crop `out_w × out_h`.
fn unit(channels: usize, out_w: u32, out_h: u32, resize: Resize) -> Preprocess {
    Preprocess {
        resize,
        ..Preprocess::plain(out_h, out_w, channels)
    }
}

fn run_eval(pre: &Preprocess, image: &DynamicImage) -> Vec<f32> {
    let mut out = vec![f32::NAN; pre.sample_len()];
    pre.apply_eval(image, &mut out).unwrap();
    out
}

#[test]
fn constant_image_normalises_to_imagenet_formula() {
    let image = DynamicImage::ImageLuma8(GrayImage::from_pixel(9, 7, Luma([128])));
    let pre = Preprocess::imagenet(4); // shorter side 4 * 256 / 224 = 4, crop 4
    let out = run_eval(&pre, &image);
    let expected: Vec<f32> = (0..3)
        .flat_map(|c| [(128.0 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]; 16])
        .collect();
    assert_close(&out, &expected);
}

#[test]
fn center_crop_takes_the_torchvision_window() {
    // 7 × 5 kept at its size, crop 4 × 2: left = round(1.5) = 2, top = round(1.5) = 2.
    let pre = unit(
        1,
        4,
        2,
        Resize::Exact {
            width: 7,
            height: 5,
        },
    );
    let expected: Vec<f32> = (2..4)
        .flat_map(|y| (2..6).map(move |x| (10 * y + x) as f32 / 255.0))
        .collect();
    assert_close(&run_eval(&pre, &ramp(7, 5)), &expected);

    // Width 10, crop 5: (10 - 5) / 2 = 2.5 rounds half to even → left 2 (round-half-up would give 3).
    let pre = unit(
        1,
        5,
        1,
        Resize::Exact {
            width: 10,
            height: 1,
        },
    );
    let expected: Vec<f32> = (2..7).map(|x| x as f32 / 255.0).collect();
    assert_close(&run_eval(&pre, &ramp(10, 1)), &expected);
}

#[test]
fn horizontal_flip_mirrors_columns() {
    let pre = Preprocess {
        hflip_prob: 1.0,
        ..unit(
            1,
            3,
            2,
            Resize::Exact {
                width: 3,
                height: 2,
            },
        )
    };
    let mut out = vec![0.0; pre.sample_len()];
    pre.apply_train(&ramp(3, 2), 7, &mut out).unwrap();
    let expected = [2.0, 1.0, 0.0, 12.0, 11.0, 10.0].map(|v| v / 255.0);
    assert_close(&out, &expected);
    // hflip_prob only applies in training: evaluation keeps the orientation.
    assert_close(
        &run_eval(&pre, &ramp(3, 2)),
        &[0.0, 1.0, 2.0, 10.0, 11.0, 12.0].map(|v| v / 255.0),
    );
}

#[test]
fn gray_is_replicated_to_rgb_with_per_channel_normalisation() {
    let pre = Preprocess {
        mean: vec![0.0, 0.5, 0.25],
        std: vec![1.0, 0.5, 2.0],
        ..unit(
            3,
            2,
            1,
            Resize::Exact {
                width: 2,
                height: 1,
            },
        )
    };
    let out = run_eval(&pre, &ramp(2, 1));
    let v = [0.0f32, 1.0 / 255.0];
    let expected = [
        v[0],
        v[1],
        (v[0] - 0.5) / 0.5,
        (v[1] - 0.5) / 0.5,
        (v[0] - 0.25) / 2.0,
        (v[1] - 0.25) / 2.0,
    ];
    assert_close(&out, &expected);
}

#[test]
fn rgb_is_converted_to_luma_for_one_channel_models() {
    let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(2, 2, Rgb([100, 150, 200])));
    let out = run_eval(
        &unit(
            1,
            2,
            2,
            Resize::Exact {
                width: 2,
                height: 2,
            },
        ),
        &image,
    );
    // 0.299 * 100 + 0.587 * 150 + 0.114 * 200 = 140.75
    assert_close(&out, &[140.75 / 255.0; 4]);
}

#[test]
fn alpha_is_dropped() {
    let image = DynamicImage::ImageRgba8(RgbaImage::from_pixel(2, 2, Rgba([10, 20, 30, 0])));
    let out = run_eval(
        &unit(
            3,
            1,
            1,
            Resize::Exact {
                width: 1,
                height: 1,
            },
        ),
        &image,
    );
    assert_close(&out, &[10.0 / 255.0, 20.0 / 255.0, 30.0 / 255.0]);
}

#[test]
fn random_resized_crop_is_seeded_and_stays_in_range() {
    let image = DynamicImage::ImageLuma8(GrayImage::from_fn(40, 30, |x, y| {
        Luma([((x * 7 + y * 3) % 256) as u8])
    }));
    let pre = Preprocess {
        hflip_prob: 0.5,
        ..Preprocess::plain(8, 8, 1)
    };
    let pre = Preprocess {
        random_resized_crop: Some(RandomResizedCrop::default()),
        ..pre
    };
    let run = |seed| {
        let mut out = vec![0.0; 64];
        pre.apply_train(&image, seed, &mut out).unwrap();
        out
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    // Bilinear weights are non-negative and sum to 1, so outputs stay within the source range [0, 255] / 255.
    assert!(run(3).iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn wrong_buffer_and_bad_settings_are_reported() {
    let pre = Preprocess::imagenet(8);
    let err = pre
        .apply_eval(&ramp(4, 4), &mut [0.0; 10])
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["output buffer", "192"]);

    let field = |p: Preprocess| match p.validate() {
        Err(DataError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(
        field(Preprocess {
            channels: 2,
            ..pre.clone()
        }),
        "channels"
    );
    assert_eq!(
        field(Preprocess {
            mean: vec![0.5],
            ..pre.clone()
        }),
        "mean"
    );
    assert_eq!(
        field(Preprocess {
            std: vec![1.0, 0.0, 1.0],
            ..pre.clone()
        }),
        "std"
    );
    assert_eq!(
        field(Preprocess {
            resize: Resize::ShorterSide(7),
            ..pre.clone()
        }),
        "resize.shorter_side"
    );
    assert_eq!(
        field(Preprocess {
            hflip_prob: 1.5,
            ..pre.clone()
        }),
        "hflip_prob"
    );
    let rrc = Some(RandomResizedCrop {
        scale: [0.5, 0.1],
        ratio: [1.0, 1.0],
    });
    assert_eq!(
        field(Preprocess {
            random_resized_crop: rrc,
            ..pre
        }),
        "random_resized_crop.scale"
    );
}

#[test]
fn config_round_trips_through_serde() {
    let pre = Preprocess::imagenet(224);
    let json = serde_json::to_string(&pre).unwrap();
    assert_eq!(serde_json::from_str::<Preprocess>(&json).unwrap(), pre);
    assert_eq!(pre.resize, Resize::ShorterSide(256));
    let hand: Preprocess = serde_json::from_str(
        r#"{"height": 96, "width": 96, "channels": 3, "resize": {"shorter_side": 109},
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}"#,
    )
    .unwrap();
    assert_eq!(hand, Preprocess::imagenet(96).without_augmentation());
    assert!(serde_json::from_str::<Preprocess>(r#"{"height": 1, "wdth": 1}"#).is_err());
}
