//! Opening the user's data set as train and evaluation loaders.

use crate::config::{DataFormat, TrainConfig};
use crate::image_input::ImageInput;
use anyhow::{bail, Context, Result};
use koala_data::{
    ClassCounts, IdxSource, IdxSplit, ImageFiles, ImageSource, Loader, LoaderConfig, Preprocess,
    ReadOptions, Subset,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Train and evaluation loaders plus what they hold.
pub struct Datasets {
    /// Shuffled, augmented training batches (drop_last: the training graph
    /// has a fixed batch size).
    pub train: Loader,
    /// Evaluation batches in order, no augmentation.
    pub eval: Loader,
    /// Class names of the training source.
    pub class_names: Vec<String>,
    /// Name of the evaluation split ("test" or "val").
    pub eval_split: &'static str,
}

fn detect(path: &Path) -> DataFormat {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        DataFormat::Csv
    } else if path.is_dir()
        && std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("-idx"))
            })
            .unwrap_or(false)
    {
        DataFormat::Idx
    } else {
        DataFormat::Folder
    }
}

fn open(
    path: &Path,
    format: DataFormat,
    split: IdxSplit,
    read: ReadOptions,
) -> Result<Arc<dyn ImageSource>> {
    if !path.exists() {
        bail!("data path '{}' does not exist: pass --data <folder with one subfolder per class | file.csv | folder with IDX files>", path.display());
    }
    let format = if format == DataFormat::Auto {
        detect(path)
    } else {
        format
    };
    Ok(match format {
        DataFormat::Idx => Arc::new(
            IdxSource::from_dir(path, split)
                .with_context(|| format!("reading IDX data in '{}'", path.display()))?,
        ),
        DataFormat::Csv => Arc::new(ImageFiles::open_csv(path)?.with_read_options(read)),
        DataFormat::Folder | DataFormat::Auto => {
            Arc::new(ImageFiles::open_folder(path)?.with_read_options(read))
        }
    })
}

/// Evaluation data at `path`, labelled with the training classes (matched by name), so a class missing
/// from the evaluation data does not shift the labels of the classes after it.
fn open_eval(
    path: &Path,
    class_names: &[String],
    read: ReadOptions,
) -> Result<Arc<dyn ImageSource>> {
    let source = open(path, DataFormat::Auto, IdxSplit::Test, read)?;
    Ok(koala_data::with_training_classes(
        source,
        class_names,
        path,
    )?)
}

/// The folder of class folders to train on: `--data` itself, or its `train/` (`training/`)
/// when it holds split folders (returned too). Split folders without a training folder are
/// an error. Prints nothing: shared by the run's data and the export's class names.
fn training_folder(
    cfg: &TrainConfig,
    format: DataFormat,
) -> Result<(PathBuf, Option<koala_data::SplitFolders>)> {
    let splits = match format {
        DataFormat::Folder => koala_data::find_split_folders(&cfg.data)?,
        _ => None,
    };
    let Some(splits) = splits else {
        return Ok((cfg.data.clone(), None));
    };
    let Some(train) = splits.train.clone() else {
        bail!(
            "{}, but no training folder (train/ or training/); pass the folder of class folders to train on with --data",
            splits.describe()
        );
    };
    Ok((train, Some(splits)))
}

/// The training folder and the evaluation folder (with its split name) when `--data` holds split folders
/// (`train/`, `val/`, … each holding class folders) instead of class folders; says which became what.
fn resolve_split_folders(
    cfg: &TrainConfig,
    format: DataFormat,
) -> Result<(PathBuf, Option<(PathBuf, &'static str)>)> {
    let (train, splits) = training_folder(cfg, format)?;
    let Some(splits) = splits else {
        return Ok((train, None));
    };
    eprintln!("{}", splits.describe());
    let eval = match (&cfg.eval_data, splits.eval) {
        (Some(given), Some(found)) => {
            eprintln!(
                "--eval-data '{}' given: '{}' is not used",
                given.display(),
                found.display()
            );
            None
        }
        (None, Some(found)) => Some((found, if splits.eval_is_test { "test" } else { "val" })),
        (_, None) => None,
    };
    Ok((train, eval))
}

/// Prints the classes of `source` and how many samples each has, with warnings on empty classes and strong
/// imbalance: a wrong data root (classes `train`, `val`) shows here before any training.
pub fn print_class_counts(what: &str, source: &dyn ImageSource) {
    let counts = ClassCounts::of(source);
    eprintln!("{what}: {}", counts.summary());
    for w in counts.warnings() {
        eprintln!("warning: {what}: {w}");
    }
}

/// Prints one warning per unreadable file, naming it (once per file, however often it is met).
fn warn_on_skip(loader: Loader) -> Loader {
    loader.on_skip(|s| eprintln!("warning: {s}"))
}

/// [`warn_on_skip`] for evaluation data, read in order in one pass: the warning names the file
/// without an epoch and batch.
fn warn_on_eval_skip(loader: Loader) -> Loader {
    loader.on_skip(|s| eprintln!("warning: {}", s.without_position()))
}

/// The preprocessing for the model's image `input`: ImageNet-normalised unless
/// `--mean`/`--std` say otherwise (greyscale inputs get ImageNet's channel average, and one
/// value each) or the model normalises inside (then mean 0 and std 1 or 1/255, see
/// [`ImageInput::default_std`]), and not normalised at all for a uint8 input, which is fed raw 0–255 pixels
/// because the model normalises inside (normalising twice would be silently wrong). Square
/// sizes get the ImageNet recipe (resize the shorter side, center crop; random resized crop
/// and flip for training). Other sizes (text lines, banners) are resized to exactly H×W,
/// without augmentation: a crop or flip would cut or mirror what such models read.
pub fn preprocess(cfg: &TrainConfig, input: &ImageInput, train: bool) -> Preprocess {
    let size = cfg.image_size;
    let channels = input.channels;
    let mut p = if size.is_square() && channels == 3 {
        Preprocess::imagenet(size.height)
    } else if size.is_square() {
        Preprocess {
            channels,
            ..Preprocess::imagenet(size.height)
        }
    } else {
        Preprocess::plain(size.height, size.width, channels)
    };
    if input.normalised_by_koala() {
        p.mean = cfg.mean.clone().unwrap_or_else(|| input.default_mean());
        p.std = cfg.std.clone().unwrap_or_else(|| input.default_std());
    } else {
        p.mean = vec![0.0; channels];
        p.std = vec![1.0; channels];
    }
    if train && cfg.augment {
        p
    } else {
        p.without_augmentation()
    }
}

/// How the images of `cfg` are read (`--ignore-exif`); recorded in the export's metadata.
pub fn read_options(cfg: &TrainConfig) -> ReadOptions {
    ReadOptions {
        ignore_exif: cfg.ignore_exif,
    }
}

/// The data format of `cfg` (`--format`, else detected from `--data`) and how its images are
/// read (`--ignore-exif`): shared by the run's data and the export's class names.
fn format_and_read(cfg: &TrainConfig) -> (DataFormat, ReadOptions) {
    let format = if cfg.format == DataFormat::Auto {
        detect(&cfg.data)
    } else {
        cfg.format
    };
    (format, read_options(cfg))
}

/// The class names of the training data of `cfg`, in label order (for the export's
/// metadata when only the run's config is at hand).
pub fn class_names(cfg: &TrainConfig) -> Result<Vec<String>> {
    let (format, read) = format_and_read(cfg);
    let (train_path, _) = training_folder(cfg, format)?;
    Ok(open(&train_path, format, IdxSplit::Train, read)?
        .class_names()
        .to_vec())
}

/// Opens the training and evaluation data described by `cfg`, printing the classes and their
/// sample counts.
pub fn open_datasets(cfg: &TrainConfig, input: &ImageInput) -> Result<Datasets> {
    let (format, read) = format_and_read(cfg);
    let (train_path, split_eval) = resolve_split_folders(cfg, format)?;
    let train_src = open(&train_path, format, IdxSplit::Train, read)?;
    let class_names = train_src.class_names().to_vec();
    let (mut train_src, eval_src, eval_split, eval_what): (
        Arc<dyn ImageSource>,
        Arc<dyn ImageSource>,
        &'static str,
        String,
    ) = match (&cfg.eval_data, split_eval, format) {
        (Some(p), _, _) => (
            train_src,
            open_eval(p, &class_names, read)?,
            "test",
            format!("test data '{}'", p.display()),
        ),
        (None, Some((p, split)), _) => (
            train_src,
            open_eval(&p, &class_names, read)?,
            split,
            format!("{split} data '{}'", p.display()),
        ),
        (None, None, DataFormat::Idx) => (
            train_src,
            open(&train_path, format, IdxSplit::Test, read)?,
            "test",
            format!("test data '{}' (t10k files)", train_path.display()),
        ),
        (None, None, _) => {
            let total = train_src.len();
            let (t, v) = koala_data::train_val_split(train_src, cfg.val_fraction, cfg.seed)?;
            if v.is_empty() {
                bail!(
                    "no validation images: --val-fraction {} of the {total} images in '{}' holds out none (it rounds per class). Pass a larger --val-fraction (e.g. 0.25), or --eval-data <folder of class folders>",
                    cfg.val_fraction,
                    train_path.display()
                );
            }
            let what = format!(
                "val data (--val-fraction {} of '{}')",
                cfg.val_fraction,
                train_path.display()
            );
            (Arc::new(t), Arc::new(v), "val", what)
        }
    };
    if let Some(n) = cfg.limit_train {
        let n = n.min(train_src.len());
        train_src = Arc::new(Subset::new(train_src, (0..n).collect())?);
    }
    print_class_counts(
        &format!("training data '{}'", train_path.display()),
        &*train_src,
    );
    print_class_counts(&eval_what, &*eval_src);
    if train_src.len() < cfg.batch_size {
        bail!(
            "the training data has {} samples, fewer than one batch of {}; lower --batch-size",
            train_src.len(),
            cfg.batch_size
        );
    }
    let mut tc = LoaderConfig::train(cfg.batch_size, cfg.seed);
    tc.drop_last = true;
    let train = warn_on_skip(Loader::new(train_src, preprocess(cfg, input, true), tc)?);
    let eval = warn_on_eval_skip(Loader::new(
        eval_src,
        preprocess(cfg, input, false),
        LoaderConfig::eval(cfg.batch_size),
    )?);
    Ok(Datasets {
        train,
        eval,
        class_names,
        eval_split,
    })
}

/// The data of `koala eval --data PATH`: like the evaluation data of `koala finetune --data PATH` (a folder
/// of split folders gives its `val/`, else `test/` folder; an IDX folder its t10k files), with its classes
/// and sample counts printed and a warning naming each unreadable file, its class names checked against the
/// ones the model records (`recorded_classes`). Returns the loader, a counter of
/// the unreadable files met and the folder evaluated (`PATH/val` for split folders), for the summary line.
pub fn open_eval_data(
    path: &Path,
    read: ReadOptions,
    preprocess: Preprocess,
    batch_size: usize,
    recorded_classes: Option<&[String]>,
) -> Result<(Loader, Arc<AtomicUsize>, PathBuf)> {
    let mut path = path.to_path_buf();
    if let Some(splits) = koala_data::find_split_folders(&path)? {
        let Some(eval) = splits.eval.clone() else {
            bail!(
                "{}, but no val/ or test/ folder to evaluate on; pass the folder of class folders to evaluate with --data",
                splits.describe()
            );
        };
        eprintln!(
            "'{}' holds data splits, not class folders: evaluating on '{}'",
            splits.root.display(),
            eval.display()
        );
        path = eval;
    }
    let source = koala_data::open_source_with(&path, IdxSplit::Test, read)?;
    print_class_counts(&format!("data '{}'", path.display()), &*source);
    if let Some(classes) = recorded_classes {
        crate::preprocess_metadata::check_classes(classes, source.class_names())?;
    }
    let unreadable = Arc::new(AtomicUsize::new(0));
    let counter = unreadable.clone();
    let loader =
        Loader::new(source, preprocess, LoaderConfig::eval(batch_size))?.on_skip(move |s| {
            counter.fetch_add(1, Ordering::Relaxed);
            eprintln!("warning: {}", s.without_position());
        });
    Ok((loader, unreadable, path))
}
