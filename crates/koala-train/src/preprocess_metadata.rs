//! The preprocessing an exported classifier was trained with, recorded in the ONNX file's
//! `metadata_props` under `koala.*` keys, and read back by `koala eval` and `koala finetune`.
//!
//! Without it, evaluating an exported file means re-typing `--mean/--std/--image-size` exactly
//! as in training; a forgotten flag silently evaluates with other statistics (issue 8, fault
//! 2: 100 % in the run, 50 % in `eval`). Keys (values are plain text; README "What koala
//! records in the exported file"):
//!
//! | key | example |
//! |---|---|
//! | `koala.version` | `0.1.0` |
//! | `koala.preprocess.image_size` | `16x16` (height × width fed to the model) |
//! | `koala.preprocess.resize` | `shorter_side=18` or `exact=48x192` |
//! | `koala.preprocess.crop` | `center=16x16` |
//! | `koala.preprocess.interpolation` | `bilinear_antialias` |
//! | `koala.preprocess.pixel_scale` | `1/255` (float input) or `1` (uint8: raw bytes) |
//! | `koala.preprocess.mean`, `koala.preprocess.std` | `0.5,0.5,0.5` (`none` for uint8) |
//! | `koala.preprocess.channel_order` | `RGB` or `L` (greyscale) |
//! | `koala.input.name`, `koala.input.layout`, `koala.input.dtype` | `input`, `NHWC`, `uint8` |
//! | `koala.classes` | `["cat","dog"]` (JSON, in label order) |
//! | `koala.output` | `logits` (the output trained, when the model has several or ends in Softmax) |
//! | `koala.preprocess.exif_orientation` | `applied` (photos turned upright) or `ignored` (`--ignore-exif`) |
//!
//! Writing replaces earlier `koala.*` entries and keeps every other entry the model had.

use crate::image_input::ImageInput;
use crate::image_size::ImageSize;
use anyhow::{bail, Result};
use koala_data::{InputLayout, PixelType, Preprocess, ReadOptions, Resize};
use koala_graph::proto::StringStringEntryProto;
use koala_graph::Model;

/// Prefix of every key koala writes.
pub const PREFIX: &str = "koala.";

/// Key names.
pub mod keys {
    pub const VERSION: &str = "koala.version";
    pub const IMAGE_SIZE: &str = "koala.preprocess.image_size";
    pub const RESIZE: &str = "koala.preprocess.resize";
    pub const CROP: &str = "koala.preprocess.crop";
    pub const INTERPOLATION: &str = "koala.preprocess.interpolation";
    pub const PIXEL_SCALE: &str = "koala.preprocess.pixel_scale";
    pub const MEAN: &str = "koala.preprocess.mean";
    pub const STD: &str = "koala.preprocess.std";
    pub const CHANNEL_ORDER: &str = "koala.preprocess.channel_order";
    pub const INPUT_NAME: &str = "koala.input.name";
    pub const INPUT_LAYOUT: &str = "koala.input.layout";
    pub const INPUT_DTYPE: &str = "koala.input.dtype";
    pub const CLASSES: &str = "koala.classes";
    pub const OUTPUT: &str = "koala.output";
    pub const EXIF_ORIENTATION: &str = "koala.preprocess.exif_orientation";
}

/// The `koala.output` entry: the output a run trained, recorded when choosing it took a
/// decision (several outputs, or a Softmax walked back to its logits), so `koala eval` and a
/// second `finetune` score and train the same output without `--output` again.
pub fn output_entry(
    model_outputs: usize,
    choice: &koala_graph::classifier_output::ClassifierOutput,
) -> Option<(String, String)> {
    (model_outputs > 1 || choice.through.is_some())
        .then(|| (keys::OUTPUT.to_string(), choice.output.clone()))
}

/// The `koala.preprocess.exif_orientation` entry of a run that read its images with `read`:
/// `applied` (photos turned upright by their EXIF Orientation tag) or `ignored`
/// (`--ignore-exif`). Recorded because a rotated photo fed the other way round is a different
/// image: a run trained with `--ignore-exif` scores 0 % when evaluated with the default.
pub fn exif_orientation_entry(read: ReadOptions) -> (String, String) {
    (
        keys::EXIF_ORIENTATION.to_string(),
        exif_word(read.ignore_exif).to_string(),
    )
}

/// `ignored` / `applied`: the recorded value and the word of the report line.
fn exif_word(ignore_exif: bool) -> &'static str {
    if ignore_exif {
        "ignored"
    } else {
        "applied"
    }
}

/// Reads a recorded `applied` / `ignored` value as `ignore_exif`.
fn parse_exif_orientation(v: &str) -> std::result::Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "applied" => Ok(false),
        "ignored" => Ok(true),
        _ => Err("expected 'applied' or 'ignored'".into()),
    }
}

/// The `(key, value)` entries describing the evaluation preprocessing `pre` (the loader's,
/// without augmentation), the model input and the class names in label order.
pub fn entries(
    pre: &Preprocess,
    input: &ImageInput,
    class_names: &[String],
) -> Vec<(String, String)> {
    let size = format!("{}x{}", pre.height, pre.width);
    let resize = match pre.resize {
        Resize::ShorterSide(s) => format!("shorter_side={s}"),
        Resize::Exact { height, width } => format!("exact={height}x{width}"),
    };
    let raw = input.pixels == PixelType::U8;
    let list = |v: &[f32]| {
        if raw {
            "none".to_string()
        } else {
            join(v)
        }
    };
    let mut out = vec![
        (keys::VERSION, env!("CARGO_PKG_VERSION").to_string()),
        (keys::IMAGE_SIZE, size.clone()),
        (keys::RESIZE, resize),
        (keys::CROP, format!("center={size}")),
        (keys::INTERPOLATION, "bilinear_antialias".to_string()),
        (
            keys::PIXEL_SCALE,
            if raw { "1" } else { "1/255" }.to_string(),
        ),
        (keys::MEAN, list(&pre.mean)),
        (keys::STD, list(&pre.std)),
        (
            keys::CHANNEL_ORDER,
            if pre.channels == 1 { "L" } else { "RGB" }.to_string(),
        ),
        (keys::INPUT_NAME, input.name.clone()),
        (
            keys::INPUT_LAYOUT,
            match input.layout {
                InputLayout::Nchw => "NCHW",
                InputLayout::Nhwc => "NHWC",
            }
            .to_string(),
        ),
        (
            keys::INPUT_DTYPE,
            if raw { "uint8" } else { "float32" }.to_string(),
        ),
    ];
    if !class_names.is_empty() {
        out.push((
            keys::CLASSES,
            serde_json::to_string(class_names).expect("strings serialise"),
        ));
    }
    out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Writes `entries` into `model`'s `metadata_props`, replacing any earlier `koala.*` entry and
/// keeping the others in their order.
pub fn write(model: &mut Model, entries: &[(String, String)]) {
    let props = &mut model.proto.metadata_props;
    props.retain(|p| !p.key.starts_with(PREFIX));
    props.extend(entries.iter().map(|(k, v)| StringStringEntryProto {
        key: k.clone(),
        value: v.clone(),
    }));
}

/// What a model's metadata says about its preprocessing (each `None` when absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    pub image_size: Option<ImageSize>,
    /// `Some(None)`: recorded as `none` (a uint8 model normalises inside).
    pub mean: Option<Option<Vec<f32>>>,
    pub std: Option<Option<Vec<f32>>>,
    pub class_names: Option<Vec<String>>,
    /// The output the run trained (`koala.output`).
    pub output: Option<String>,
    /// `Some(true)`: the run read its images with `--ignore-exif`.
    pub ignore_exif: Option<bool>,
}

impl Recorded {
    /// Reads the `koala.*` entries of `model`. A value koala cannot parse is reported and
    /// ignored (the default or a flag then applies), naming the key.
    pub fn of_model(model: &Model) -> Recorded {
        let get = |k: &str| {
            model
                .proto
                .metadata_props
                .iter()
                .find(|p| p.key == k)
                .map(|p| p.value.trim().to_string())
        };
        let warn = |k: &str, v: &str, e: String| {
            eprintln!("warning: ignoring the model's metadata {k} = '{v}': {e}");
        };
        let mut r = Recorded::default();
        if let Some(v) = get(keys::IMAGE_SIZE) {
            match v.parse::<ImageSize>() {
                Ok(s) => r.image_size = Some(s),
                Err(e) => warn(keys::IMAGE_SIZE, &v, e),
            }
        }
        for (k, slot) in [(keys::MEAN, &mut r.mean), (keys::STD, &mut r.std)] {
            if let Some(v) = get(k) {
                match parse_list(&v) {
                    Ok(l) => *slot = Some(l),
                    Err(e) => warn(k, &v, e),
                }
            }
        }
        if let Some(v) = get(keys::CLASSES) {
            match serde_json::from_str::<Vec<String>>(&v) {
                Ok(c) => r.class_names = Some(c),
                Err(e) => warn(keys::CLASSES, &v, e.to_string()),
            }
        }
        r.output = get(keys::OUTPUT).filter(|o| !o.is_empty());
        if let Some(v) = get(keys::EXIF_ORIENTATION) {
            match parse_exif_orientation(&v) {
                Ok(b) => r.ignore_exif = Some(b),
                Err(e) => warn(keys::EXIF_ORIENTATION, &v, e),
            }
        }
        r
    }

    /// Whether the model carries any koala preprocessing entry.
    pub fn is_empty(&self) -> bool {
        *self == Recorded::default()
    }
}

/// `0.5,0.5,0.5` → values; `none` → `None`.
fn parse_list(v: &str) -> std::result::Result<Option<Vec<f32>>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    v.split(',')
        .map(|t| {
            t.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("'{t}' is not a number"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Some)
}

fn join(v: &[f32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Where a resolved setting came from, for the one-line report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Metadata,
    ModelInput,
    Default,
    /// The model normalises its float input inside (Sub/Div constants): mean 0, std 1 or 1/255.
    InGraph,
    /// uint8 input: the model normalises; koala feeds raw bytes.
    RawBytes,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Metadata => "model metadata",
            Source::ModelInput => "model input shape",
            Source::Default => "default",
            Source::InGraph => "the model normalises inside",
            Source::RawBytes => "uint8 input, the model normalises",
        })
    }
}

/// The preprocessing settings of one command, each with its source.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub image_size: (ImageSize, Source),
    /// Empty for a uint8 input.
    pub mean: (Vec<f32>, Source),
    pub std: (Vec<f32>, Source),
    /// How images are read (EXIF orientation applied or ignored).
    pub read: (ReadOptions, Source),
}

impl Resolved {
    /// The report line, e.g. `preprocessing: image size 16 (model metadata), mean 0.5,0.5,0.5
    /// (model metadata), std 0.5,0.5,0.5 (flag)`.
    pub fn describe(&self) -> String {
        let list = |v: &[f32]| if v.is_empty() { "none".into() } else { join(v) };
        format!(
            "preprocessing: image size {} ({}), mean {} ({}), std {} ({}), EXIF orientation {} ({})",
            self.image_size.0,
            self.image_size.1,
            list(&self.mean.0),
            self.mean.1,
            list(&self.std.0),
            self.std.1,
            exif_word(self.read.0.ignore_exif),
            self.read.1
        )
    }
}

/// Flag values of a command (None: not given).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub image_size: Option<ImageSize>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// `Some(true)`: `--ignore-exif`; `Some(false)`: `--apply-exif`.
    pub ignore_exif: Option<bool>,
}

/// How images are read: flag > the model's metadata > default (EXIF orientation applied).
fn resolve_read(flags: &Flags, recorded: &Recorded) -> (ReadOptions, Source) {
    let (ignore_exif, source) = match (flags.ignore_exif, recorded.ignore_exif) {
        (Some(b), _) => (b, Source::Flag),
        (None, Some(b)) => (b, Source::Metadata),
        (None, None) => (false, Source::Default),
    };
    (ReadOptions { ignore_exif }, source)
}

/// Resolves image size, mean and std with the precedence flag > metadata > default (the
/// model's fixed input size, else 224; ImageNet statistics, or the range the model's own
/// normalisation expects, see [`ImageInput::default_std`]). A uint8 input gets no mean/std.
pub fn resolve(flags: &Flags, recorded: &Recorded, input: &ImageInput) -> Result<Resolved> {
    let image_size = match (flags.image_size, recorded.image_size, input.fixed_size) {
        (Some(s), _, _) => (s, Source::Flag),
        (None, Some(s), _) => (s, Source::Metadata),
        (None, None, Some((h, w))) => (
            ImageSize {
                height: h,
                width: w,
            },
            Source::ModelInput,
        ),
        (None, None, None) => (ImageSize::square(224), Source::Default),
    };
    let read = resolve_read(flags, recorded);
    if !input.normalised_by_koala() {
        if flags.mean.is_some() || flags.std.is_some() {
            eprintln!("note: --mean/--std are ignored: input '{}' is uint8, so koala feeds raw 0–255 pixels and the model normalises them", input.name);
        }
        return Ok(Resolved {
            image_size,
            mean: (Vec::new(), Source::RawBytes),
            std: (Vec::new(), Source::RawBytes),
            read,
        });
    }
    let default_source = match input.in_graph {
        crate::image_input::InGraphNormalisation::None => Source::Default,
        _ => Source::InGraph,
    };
    let pick = |flag: &Option<Vec<f32>>, rec: &Option<Option<Vec<f32>>>, default: Vec<f32>| match (
        flag, rec,
    ) {
        (Some(v), _) => (v.clone(), Source::Flag),
        (None, Some(Some(v))) => (v.clone(), Source::Metadata),
        _ => (default, default_source),
    };
    let mean = pick(&flags.mean, &recorded.mean, input.default_mean());
    let std = pick(&flags.std, &recorded.std, input.default_std());
    for (name, (v, src)) in [("mean", &mean), ("std", &std)] {
        if v.len() != input.channels {
            bail!(
                "the {name} ({src}) has {} values but input '{}' has {} channel(s); pass --{name} with {} value(s)",
                v.len(),
                input.name,
                input.channels,
                input.channels
            );
        }
    }
    Ok(Resolved {
        image_size,
        mean,
        std,
        read,
    })
}

/// ImageNet's mean for RGB; its channel average for greyscale (as timm does).
pub fn default_mean(channels: usize) -> Vec<f32> {
    per_channels(&koala_data::IMAGENET_MEAN, channels)
}

/// ImageNet's std for RGB; its channel average for greyscale.
pub fn default_std(channels: usize) -> Vec<f32> {
    per_channels(&koala_data::IMAGENET_STD, channels)
}

fn per_channels(rgb: &[f32; 3], channels: usize) -> Vec<f32> {
    if channels == 1 {
        vec![rgb.iter().sum::<f32>() / 3.0]
    } else {
        rgb.to_vec()
    }
}

/// Checks the class names the model was trained with against the evaluation data's. Bare
/// integer labels (IDX, a CSV of numbers) carry no names and are not compared.
pub fn check_classes(recorded: &[String], data: &[String]) -> Result<()> {
    let numeric = data.iter().all(|c| c.parse::<u64>().is_ok());
    if numeric || recorded == data {
        return Ok(());
    }
    bail!(
        "the model was trained on classes {recorded:?} (its metadata koala.classes, in label order) but the data's classes are {data:?}; labels would mean different classes. Evaluate on data with the same class folders"
    )
}

/// `koala finetune` on an image classifier: a fixed input size and batch come from the
/// model's input shape unless given ([`crate::preflight::sizes_from_model`], as `koala check`
/// does). On a model that carries koala's metadata (a previous koala export), image size,
/// mean and std come from it unless given (`given.image_size`: on the command line or in the
/// config file; mean/std: `cfg.mean`/`cfg.std` set), so a second fine-tuning round
/// preprocesses as the first did. Prints one line saying what was used and why. A model that
/// cannot be read, or is not an image classifier, is left to the run to report.
pub fn adopt_for_finetune(
    cfg: &mut crate::TrainConfig,
    given: crate::preflight::SizesGiven,
) -> Result<()> {
    let Ok(model) = Model::load(&cfg.model) else {
        return Ok(());
    };
    // As `koala check` does: the model's fixed input size and batch where not given (for a
    // language model: its default batch).
    for note in crate::preflight::sizes_from_model(&model, cfg, given) {
        eprintln!("{note}");
    }
    if crate::task::create_kind(cfg, &model) != crate::TaskKind::ImageClassification {
        return Ok(());
    }
    let image_size_given = given.image_size;
    let recorded = Recorded::of_model(&model);
    let Ok(input) = ImageInput::of_model(&model) else {
        return Ok(());
    };
    if recorded.is_empty() {
        return Ok(());
    }
    if let (None, Some(o)) = (&cfg.output, &recorded.output) {
        eprintln!("output: '{o}' (model metadata koala.output; --output overrides it)");
        cfg.output = Some(o.clone());
    }
    let flags = Flags {
        image_size: image_size_given.then_some(cfg.image_size),
        mean: cfg.mean.clone(),
        std: cfg.std.clone(),
        // `--ignore-exif` or the config's `ignore_exif = true`; false is "not given".
        ignore_exif: cfg.ignore_exif.then_some(true),
    };
    let r = resolve(&flags, &recorded, &input)?;
    cfg.image_size = r.image_size.0;
    cfg.ignore_exif = r.read.0.ignore_exif;
    if input.normalised_by_koala() {
        cfg.mean = Some(r.mean.0.clone());
        cfg.std = Some(r.std.0.clone());
    }
    eprintln!(
        "{} (the model records koala's preprocessing; flags override it)",
        r.describe()
    );
    Ok(())
}

/// Whether the TOML config file at `path` sets `image_size` (so it counts as given).
pub fn config_sets_image_size(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("image_size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(pixels: PixelType, fixed: Option<(u32, u32)>) -> ImageInput {
        ImageInput {
            name: "x".into(),
            layout: InputLayout::Nchw,
            pixels,
            channels: 3,
            fixed_size: fixed,
            note: None,
            in_graph: crate::image_input::InGraphNormalisation::None,
            in_graph_constants: Vec::new(),
        }
    }

    #[test]
    fn precedence_is_flag_then_metadata_then_default() {
        let rec = Recorded {
            image_size: Some(ImageSize::square(32)),
            mean: Some(Some(vec![0.5; 3])),
            std: Some(Some(vec![0.25; 3])),
            class_names: None,
            output: None,
            ignore_exif: None,
        };
        let flags = Flags {
            std: Some(vec![0.1; 3]),
            ..Flags::default()
        };
        let r = resolve(&flags, &rec, &input(PixelType::F32, Some((16, 16)))).unwrap();
        assert_eq!(r.image_size, (ImageSize::square(32), Source::Metadata));
        assert_eq!(r.mean, (vec![0.5; 3], Source::Metadata));
        assert_eq!(r.std, (vec![0.1; 3], Source::Flag));
        let r = resolve(
            &Flags::default(),
            &Recorded::default(),
            &input(PixelType::F32, Some((16, 16))),
        )
        .unwrap();
        assert_eq!(r.image_size, (ImageSize::square(16), Source::ModelInput));
        assert_eq!(
            r.mean,
            (koala_data::IMAGENET_MEAN.to_vec(), Source::Default)
        );
        assert!(
            r.describe().contains("std 0.229,0.224,0.225 (default)"),
            "{}",
            r.describe()
        );
        let raw = resolve(&flags, &rec, &input(PixelType::U8, None)).unwrap();
        assert!(raw.mean.0.is_empty() && raw.mean.1 == Source::RawBytes);
    }

    #[test]
    fn class_lists_must_match_unless_the_data_is_numeric() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_classes(&names(&["cat", "dog"]), &names(&["cat", "dog"])).is_ok());
        assert!(check_classes(&names(&["cat", "dog"]), &names(&["0", "1"])).is_ok());
        let e = check_classes(&names(&["cat", "dog"]), &names(&["dog", "cat"])).unwrap_err();
        assert!(
            e.to_string().contains("[\"cat\", \"dog\"]")
                && e.to_string().contains("[\"dog\", \"cat\"]"),
            "{e}"
        );
    }

    #[test]
    fn the_output_is_recorded_only_when_it_was_a_choice() {
        let choice = |through: Option<&str>| koala_graph::classifier_output::ClassifierOutput {
            output: "probs".into(),
            logits: "logits".into(),
            through: through.map(String::from),
            reason: String::new(),
        };
        let entry = Some((keys::OUTPUT.to_string(), "probs".to_string()));
        assert_eq!(output_entry(2, &choice(None)), entry);
        assert_eq!(output_entry(1, &choice(Some("Softmax softmax"))), entry);
        assert_eq!(output_entry(1, &choice(None)), None);
    }

    #[test]
    fn the_exif_choice_is_recorded_and_read_back_and_a_flag_overrides_it() {
        let mut model = Model {
            proto: Default::default(),
            source: None,
        };
        let ignored = exif_orientation_entry(ReadOptions { ignore_exif: true });
        assert_eq!(
            ignored,
            (keys::EXIF_ORIENTATION.to_string(), "ignored".to_string())
        );
        write(&mut model, &[ignored]);
        let rec = Recorded::of_model(&model);
        assert_eq!(rec.ignore_exif, Some(true));
        let input = input(PixelType::F32, Some((16, 16)));
        let r = resolve(&Flags::default(), &rec, &input).unwrap();
        assert_eq!(
            r.read,
            (ReadOptions { ignore_exif: true }, Source::Metadata)
        );
        assert!(
            r.describe()
                .ends_with("EXIF orientation ignored (model metadata)"),
            "{}",
            r.describe()
        );
        let apply = Flags {
            ignore_exif: Some(false),
            ..Flags::default()
        };
        let r = resolve(&apply, &rec, &input).unwrap();
        assert_eq!(r.read, (ReadOptions { ignore_exif: false }, Source::Flag));
        let r = resolve(&Flags::default(), &Recorded::default(), &input).unwrap();
        assert_eq!(r.read, (ReadOptions::default(), Source::Default));
        assert!(r.describe().ends_with("EXIF orientation applied (default)"));
        assert_eq!(parse_exif_orientation("Applied"), Ok(false));
        assert!(parse_exif_orientation("upright").is_err());
    }

    #[test]
    fn parse_list_reads_numbers_and_none() {
        assert_eq!(parse_list("0.5, 0.25,1"), Ok(Some(vec![0.5, 0.25, 1.0])));
        assert_eq!(parse_list("none"), Ok(None));
        assert!(parse_list("0.5,abc").is_err());
    }
}
