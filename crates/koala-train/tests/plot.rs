//! Plots are checked by decoding the written PNG: right size, each curve's
//! colour present in the panel it belongs to, text drawn (the embedded font
//! works), and bad input reported as errors rather than panics.

use koala_train::metrics::MetricRecord;
use koala_train::plot::{write_comparison, write_plot};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;

/// Colours the plot module assigns (tab10): train / first run, val / second
/// run, test.
const BLUE: [u8; 3] = [31, 119, 180];
const ORANGE: [u8; 3] = [255, 127, 14];
const GREEN: [u8; 3] = [44, 160, 44];

fn record(step: u64, split: &str, loss: f64, accuracy: Option<f64>) -> MetricRecord {
    MetricRecord {
        step,
        epoch: step as f64 / 100.0,
        split: split.to_string(),
        loss,
        accuracy,
        wall_time: step as f64 * 0.1,
        ..Default::default()
    }
}

/// A plausible run: train logged every 10 steps (loss and accuracy), val
/// every 100 steps, test once at the end. `scale` > 1 makes a worse run
/// (higher loss, lower accuracy) so two runs' curves do not overlap.
fn synthetic_run(scale: f64) -> Vec<MetricRecord> {
    let fraction = |step: u64| step as f64 / 500.0;
    let train = (0..=500).step_by(10).map(|step| {
        let (t, wiggle) = (fraction(step), 0.05 * (step as f64).sin());
        record(
            step,
            "train",
            scale * (2.3 - 2.0 * t) + wiggle,
            Some(0.1 + 0.8 * t / scale),
        )
    });
    let val = (0..=500).step_by(100).map(|step| {
        let t = fraction(step);
        record(
            step,
            "val",
            scale * (2.4 - 1.9 * t),
            Some(0.1 + 0.75 * t / scale),
        )
    });
    let test = record(500, "test", 0.6, Some(0.84));
    train.chain(val).chain(std::iter::once(test)).collect()
}

fn load(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("cannot decode {}: {e}", path.display()))
        .to_rgb8()
}

/// Pixels of exactly `color` in the left (loss) and right (accuracy) panel.
fn panel_pixels(img: &image::RgbImage, color: [u8; 3]) -> [usize; 2] {
    let mut counts = [0; 2];
    for (x, _, p) in img.enumerate_pixels() {
        if p.0 == color {
            counts[usize::from(x >= img.width() / 2)] += 1;
        }
    }
    counts
}

/// Asserts how many pixels of a curve's colour each panel holds. Lines are
/// drawn in exact palette colours (text is black/grey, so it never matches).
fn expect_pixels(
    img: &image::RgbImage,
    what: &str,
    color: [u8; 3],
    left: impl RangeBounds<usize> + Debug,
    right: impl RangeBounds<usize> + Debug,
) {
    let [l, r] = panel_pixels(img, color);
    assert!(
        left.contains(&l) && right.contains(&r),
        "{what}: {l} pixels of its colour in the loss panel, {r} in the accuracy panel; expected {left:?} and {right:?}"
    );
}

fn distinct_colors(img: &image::RgbImage) -> usize {
    img.pixels()
        .map(|p| p.0)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Dark pixels in the top title strip: text rendered with the embedded font.
fn title_ink(img: &image::RgbImage) -> usize {
    img.enumerate_pixels()
        .filter(|(_, y, p)| *y < 28 && p.0.iter().all(|&c| c < 100))
        .count()
}

#[test]
fn plot_has_every_split_in_both_panels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    write_plot(&synthetic_run(1.0), "tiny_cnn · KOALA++", &path).unwrap();
    let img = load(&path);
    assert_eq!(img.dimensions(), (1200, 450));
    // Measured: train ~2700 px per panel (2-px line over 50 segments plus
    // legend swatch), val ~1200 (5 segments, dots, swatch), test 97 (one dot
    // 37 + swatch 60). Thresholds leave room for layout tweaks but fail on a
    // missing curve, or a legend swatch (60 px) without its data.
    for (name, color, min) in [
        ("train", BLUE, 1000),
        ("val", ORANGE, 500),
        ("test", GREEN, 80),
    ] {
        expect_pixels(&img, name, color, min.., min..);
    }
    assert!(
        distinct_colors(&img) > 20,
        "image looks blank: {} distinct colours",
        distinct_colors(&img)
    );
    assert!(
        title_ink(&img) > 50,
        "title text not drawn: {} dark pixels in the title strip",
        title_ink(&img)
    );
    // Atomic write leaves only the PNG in the directory (no temp file).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("curves.png")]);
}

#[test]
fn split_without_accuracy_is_only_in_the_loss_panel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    let records: Vec<_> = synthetic_run(1.0)
        .into_iter()
        .filter(|r| r.split != "test")
        .map(|r| {
            if r.split == "train" {
                MetricRecord {
                    accuracy: None,
                    ..r
                }
            } else {
                r
            }
        })
        .collect();
    write_plot(&records, "no train accuracy", &path).unwrap();
    let img = load(&path);
    expect_pixels(&img, "train without accuracy", BLUE, 1000.., 0..=0);
    expect_pixels(&img, "val", ORANGE, 500.., 500..);
}

#[test]
fn nan_and_inf_values_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    let mut records = synthetic_run(1.0);
    records.push(record(510, "train", f64::NAN, Some(f64::INFINITY)));
    records.push(record(520, "train", f64::INFINITY, Some(f64::NAN)));
    records.push(record(530, "val", f64::NEG_INFINITY, None));
    write_plot(&records, "diverged at the end", &path).unwrap();
    let img = load(&path);
    // The finite curves are still drawn on sane axes.
    expect_pixels(&img, "train", BLUE, 1000.., 1000..);
    expect_pixels(&img, "val", ORANGE, 500.., 500..);
}

#[test]
fn only_non_finite_values_give_empty_panels_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    let records = vec![
        record(0, "train", f64::NAN, None),
        record(10, "train", f64::INFINITY, None),
    ];
    write_plot(&records, "nothing finite", &path).unwrap();
    let img = load(&path);
    assert_eq!(img.dimensions(), (1200, 450));
    expect_pixels(&img, "train without finite values", BLUE, 0..=0, 0..=0);
    assert!(
        distinct_colors(&img) > 2,
        "axes and 'no data' text should still be drawn"
    );
}

#[test]
fn single_record_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    write_plot(&[record(0, "val", 2.3, Some(0.1))], "one point", &path).unwrap();
    let img = load(&path);
    // Measured 97 px per panel: legend swatch 60 + the dot marking the lone
    // point 37 (60 without the dot), so 80 requires the dot.
    expect_pixels(&img, "lone val point", ORANGE, 80.., 80..);
}

#[test]
fn empty_records_are_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    let err = write_plot(&[], "empty", &path).unwrap_err().to_string();
    assert!(
        err.contains("no metrics records") && err.contains("curves.png"),
        "unclear error: {err}"
    );
    assert!(!path.exists());
}

#[test]
fn comparison_has_one_colour_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compare.png");
    let runs = vec![
        ("KOALA++".to_string(), synthetic_run(1.0)),
        ("AdamW".to_string(), synthetic_run(1.3)),
    ];
    write_comparison(&runs, &path).unwrap();
    let img = load(&path);
    assert_eq!(img.dimensions(), (1200, 450));
    for (name, color) in [("KOALA++", BLUE), ("AdamW", ORANGE)] {
        // Measured ~2600 / ~1200-1400 px (see plot_has_every_split_in_both_panels).
        expect_pixels(&img, name, color, 1000.., 500..);
    }
    assert!(title_ink(&img) > 50, "title text not drawn");
}

#[test]
fn comparison_tolerates_a_run_without_val() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compare.png");
    let train_only: Vec<_> = synthetic_run(1.0)
        .into_iter()
        .filter(|r| r.split == "train")
        .collect();
    let runs = vec![
        ("train only".to_string(), train_only),
        ("empty".to_string(), Vec::new()),
        ("full".to_string(), synthetic_run(1.2)),
    ];
    write_comparison(&runs, &path).unwrap();
    let img = load(&path);
    expect_pixels(&img, "run without val", BLUE, 1000.., 0..=0);
    expect_pixels(&img, "third run", GREEN, 1000.., 500..);
}

#[test]
fn comparison_without_records_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compare.png");
    let err = write_comparison(&[], &path).unwrap_err().to_string();
    assert!(
        err.contains("no metrics records") && err.contains("compare.png"),
        "unclear error: {err}"
    );
    let err = write_comparison(&[("a".to_string(), Vec::new())], &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 run(s)"), "unclear error: {err}");
    assert!(!path.exists());
}
