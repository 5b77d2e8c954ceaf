//! PNG plots of training curves: one run's loss and accuracy per split
//! (`write_plot`), and several runs side by side (`write_comparison`, e.g.
//! KOALA++ vs AdamW).
//!
//! Text is drawn with an embedded DejaVu Sans (see `assets/`) through
//! plotters' `ab_glyph` font backend, so plotting works on machines without
//! system fonts or fontconfig. The image is rendered into an in-memory RGB
//! buffer and encoded with the `image` crate (plotters' own encoder would pull
//! in a second `image` version), then written atomically so a viewer never
//! sees a half-written PNG while training redraws it.

use crate::metrics::MetricRecord;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

/// Image size in pixels: two panels side by side.
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 450;
/// Font family every text element uses; the embedded font is registered
/// under this name (ab_glyph knows no other fonts).
const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Series with at most this many points also get a dot per point: sparse
/// curves (one val evaluation per epoch, a single point) stay visible.
const MAX_MARKED_POINTS: usize = 60;

/// Line colours (matplotlib's "tab10"): distinguishable, and familiar to
/// readers of ML plots.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws loss (left panel) and top-1 accuracy (right panel) against step, one
/// line per split, and writes a PNG atomically.
///
/// Non-finite values are skipped; a split without accuracy simply has no line
/// in the right panel. Fails if `records` is empty (nothing to draw means the
/// metrics file is probably the wrong one).
pub fn write_plot(records: &[MetricRecord], title: &str, path: &Path) -> Result<()> {
    if records.is_empty() {
        bail!(
            "no metrics records to plot into '{}': the metrics file is empty; train for at least one logging interval first",
            path.display()
        );
    }
    let splits = split_names(records);
    let series = |value: fn(&MetricRecord) -> Option<f64>| -> Vec<Series> {
        splits
            .iter()
            .map(|s| {
                let of_split = records.iter().filter(|r| &r.split == s);
                Series::new(s, split_color(&splits, s), of_split, value)
            })
            .collect()
    };
    let loss = Panel::loss("loss", series(|r| Some(r.loss)));
    let accuracy = Panel::accuracy("top-1 accuracy", series(|r| r.accuracy));
    write_png(title, &[loss, accuracy], path)
}

/// Draws the comparison of several runs (e.g. KOALA++ vs AdamW): train loss
/// (left panel) and val top-1 accuracy (right panel) against step, one colour
/// per run.
///
/// A run without val records only appears in the loss panel. Fails if there
/// are no runs or none of them has a record.
pub fn write_comparison(runs: &[(String, Vec<MetricRecord>)], path: &Path) -> Result<()> {
    if runs.iter().all(|(_, records)| records.is_empty()) {
        bail!(
            "no metrics records to compare into '{}': {} run(s) given, none with records; pass runs that have a non-empty metrics.jsonl",
            path.display(),
            runs.len()
        );
    }
    // The evaluation split is "val" for a held-out part of the training data
    // and "test" for separate evaluation data (e.g. IDX t10k files).
    let eval_split = if runs.iter().flat_map(|(_, r)| r).any(|r| r.split == "val") {
        "val"
    } else {
        "test"
    };
    let series = |split: &str, value: fn(&MetricRecord) -> Option<f64>| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, (name, records))| {
                Series::new(
                    name,
                    PALETTE[i % PALETTE.len()],
                    records.iter().filter(|r| r.split == split),
                    value,
                )
            })
            .collect()
    };
    let loss = Panel::loss("train loss", series("train", |r| Some(r.loss)));
    let caption = if eval_split == "val" {
        "val top-1 accuracy"
    } else {
        "test top-1 accuracy"
    };
    let accuracy = Panel::accuracy(caption, series(eval_split, |r| r.accuracy));
    let title = runs
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(" vs ");
    write_png(&title, &[loss, accuracy], path)
}

/// One curve: a legend label, a colour and finite (step, value) points
/// sorted by step.
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

impl Series {
    /// Collects `value` of each record, dropping missing and non-finite
    /// values (a diverged step logs NaN loss; it must not break the axes).
    fn new<'a>(
        label: &str,
        color: RGBColor,
        records: impl Iterator<Item = &'a MetricRecord>,
        value: fn(&MetricRecord) -> Option<f64>,
    ) -> Self {
        let mut points: Vec<(f64, f64)> = records
            .filter_map(|r| {
                value(r)
                    .filter(|v| v.is_finite())
                    .map(|v| (r.step as f64, v))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Series {
            label: label.to_string(),
            color,
            points,
        }
    }
}

/// One chart: its caption, y-axis label, where the legend goes (away from
/// where the curves usually are) and its curves.
struct Panel {
    caption: &'static str,
    y_label: &'static str,
    /// Values are fractions: keep the y range inside [0, 1].
    unit_range: bool,
    legend: SeriesLabelPosition,
    series: Vec<Series>,
}

impl Panel {
    /// Loss panel: free y range; legend top right, away from a falling curve.
    fn loss(caption: &'static str, series: Vec<Series>) -> Self {
        let legend = SeriesLabelPosition::UpperRight;
        Panel {
            caption,
            y_label: "loss",
            unit_range: false,
            legend,
            series,
        }
    }

    /// Accuracy panel: y within [0, 1]; legend bottom right, away from a
    /// rising curve.
    fn accuracy(caption: &'static str, series: Vec<Series>) -> Self {
        let legend = SeriesLabelPosition::LowerRight;
        Panel {
            caption,
            y_label: "top-1 accuracy",
            unit_range: true,
            legend,
            series,
        }
    }
}

/// Split names in a stable, conventional order (train, val, test, then any
/// other in order of first appearance), so colours do not change between
/// redraws of the same run.
fn split_names(records: &[MetricRecord]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in records {
        if !names.contains(&r.split) {
            names.push(r.split.clone());
        }
    }
    let rank = |s: &String| {
        ["train", "val", "test"]
            .iter()
            .position(|k| k == s)
            .unwrap_or(3)
    };
    names.sort_by_key(rank); // stable: unknown splits keep first-appearance order
    names
}

/// train, val and test always get the first three palette colours; other
/// splits follow.
fn split_color(splits: &[String], split: &str) -> RGBColor {
    let i = match split {
        "train" => 0,
        "val" => 1,
        "test" => 2,
        _ => {
            3 + splits
                .iter()
                .filter(|s| !["train", "val", "test"].contains(&s.as_str()))
                .position(|s| s == split)
                .unwrap_or(0)
        }
    };
    PALETTE[i % PALETTE.len()]
}

/// Renders the panels side by side under `title` and writes the PNG
/// atomically.
fn write_png(title: &str, panels: &[Panel; 2], path: &Path) -> Result<()> {
    let png = render_png(title, panels)
        .with_context(|| format!("cannot draw plot '{}'", path.display()))?;
    koala_graph::model::write_atomic(path, &png)
        .with_context(|| format!("cannot write plot '{}'", path.display()))
}

/// Draws into an RGB buffer and encodes it as PNG bytes.
fn render_png(title: &str, panels: &[Panel; 2]) -> Result<Vec<u8>> {
    register_font()?;
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 22))?;
        for (area, panel) in body.split_evenly((1, 2)).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present()?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        WIDTH,
        HEIGHT,
        image::ExtendedColorType::Rgb8,
    )
    .context("cannot encode the plot as PNG")?;
    Ok(png)
}

/// Registers the embedded font once per process (ab_glyph has no system
/// font lookup, so text fails without it).
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font assets/DejaVuSans.ttf is not a valid TrueType font; rebuild koala-train from an intact source tree"))
    }
}

/// Draws one panel: axes, curves (with dots when sparse), legend, or a
/// "no data" note when no curve has a point.
fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, panel: &Panel) -> Result<()> {
    let (xs, ys) = axis_ranges(&panel.series, panel.unit_range);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(xs.clone(), ys.clone())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&|x| format_step(*x, xs.end - xs.start))
        .draw()?;
    let mut drawn = 0;
    for s in panel.series.iter().filter(|s| !s.points.is_empty()) {
        draw_series(&mut chart, s)?;
        drawn += 1;
    }
    if drawn == 0 {
        let centre = ((xs.start + xs.end) / 2.0, (ys.start + ys.end) / 2.0);
        let style = TextStyle::from((FONT, 18).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .plotting_area()
            .draw(&Text::new("no data", centre, style))?;
    } else {
        chart
            .configure_series_labels()
            .position(panel.legend.clone())
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws one curve and registers its legend entry.
fn draw_series(chart: &mut Chart<'_, '_>, s: &Series) -> Result<()> {
    let color = s.color;
    chart
        .draw_series(LineSeries::new(
            s.points.iter().copied(),
            color.stroke_width(2),
        ))?
        .label(s.label.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    if s.points.len() <= MAX_MARKED_POINTS {
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    Ok(())
}

/// Step-axis tick labels: whole numbers once the range is wide enough that
/// ticks fall on integers (plotters would print "1000.0" or "1e3").
fn format_step(x: f64, span: f64) -> String {
    if span >= 10.0 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.1}")
    }
}

/// x and y ranges covering every point, padded so curves do not sit on the
/// frame; a degenerate range (one point, constant value, no data) is widened
/// so plotters gets a non-empty axis.
fn axis_ranges(
    series: &[Series],
    unit_range: bool,
) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = min_max(points().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = min_max(points().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let mut xs = pad(x_lo, x_hi, 0.02);
    if xs.end - xs.start < 2.0 {
        xs = (x_lo - 1.0)..(x_hi + 1.0); // steps are integers: keep a step either side
    }
    let mut ys = pad(y_lo, y_hi, 0.05);
    if unit_range {
        ys = ys.start.max(0.0)..ys.end.min(1.0);
        if ys.end <= ys.start {
            ys = 0.0..1.0; // accuracy outside [0, 1]: show the full range
        }
    }
    (xs, ys)
}

/// Minimum and maximum of `values`, or None when there are none.
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Widens [lo, hi] by `frac` of its span on each side; a zero span is
/// widened by 10% of the value (or by 1 around zero).
fn pad(lo: f64, hi: f64, frac: f64) -> std::ops::Range<f64> {
    let span = hi - lo;
    let margin = if span > 0.0 {
        span * frac
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        1.0
    };
    (lo - margin)..(hi + margin)
}
