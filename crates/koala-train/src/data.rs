//! Opening the user's data set as train and evaluation loaders.

use crate::config::{DataFormat, TrainConfig};
use crate::image_input::ImageInput;
use anyhow::{bail, Context, Result};
use koala_data::{
    IdxSource, IdxSplit, ImageFiles, ImageSource, Loader, LoaderConfig, Preprocess, Subset,
};
use std::path::Path;
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

fn open(path: &Path, format: DataFormat, split: IdxSplit) -> Result<Arc<dyn ImageSource>> {
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
        DataFormat::Csv => Arc::new(ImageFiles::open_csv(path)?),
        DataFormat::Folder | DataFormat::Auto => Arc::new(ImageFiles::open_folder(path)?),
    })
}

/// The preprocessing for the model's image `input`: ImageNet-normalised unless
/// `--mean`/`--std` say otherwise (greyscale inputs get ImageNet's channel average, and one
/// value each), and not normalised at all for a uint8 input, which is fed raw 0–255 pixels
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
        p.mean = cfg
            .mean
            .clone()
            .unwrap_or_else(|| crate::preprocess_metadata::default_mean(channels));
        p.std = cfg
            .std
            .clone()
            .unwrap_or_else(|| crate::preprocess_metadata::default_std(channels));
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

/// The class names of the training data of `cfg`, in label order (for the export's
/// metadata when only the run's config is at hand).
pub fn class_names(cfg: &TrainConfig) -> Result<Vec<String>> {
    let format = if cfg.format == DataFormat::Auto {
        detect(&cfg.data)
    } else {
        cfg.format
    };
    Ok(open(&cfg.data, format, IdxSplit::Train)?
        .class_names()
        .to_vec())
}

/// Opens the training and evaluation data described by `cfg`.
pub fn open_datasets(cfg: &TrainConfig, input: &ImageInput) -> Result<Datasets> {
    let format = if cfg.format == DataFormat::Auto {
        detect(&cfg.data)
    } else {
        cfg.format
    };
    let train_src = open(&cfg.data, format, IdxSplit::Train)?;
    let class_names = train_src.class_names().to_vec();
    let (mut train_src, eval_src, eval_split): (
        Arc<dyn ImageSource>,
        Arc<dyn ImageSource>,
        &'static str,
    ) = match (&cfg.eval_data, format) {
        (Some(p), _) => (
            train_src,
            open(p, DataFormat::Auto, IdxSplit::Test)?,
            "test",
        ),
        (None, DataFormat::Idx) => (train_src, open(&cfg.data, format, IdxSplit::Test)?, "test"),
        (None, _) => {
            let (t, v) = koala_data::train_val_split(train_src, cfg.val_fraction, cfg.seed)?;
            (Arc::new(t), Arc::new(v), "val")
        }
    };
    if let Some(n) = cfg.limit_train {
        let n = n.min(train_src.len());
        train_src = Arc::new(Subset::new(train_src, (0..n).collect())?);
    }
    if train_src.len() < cfg.batch_size {
        bail!(
            "the training data has {} samples, fewer than one batch of {}; lower --batch-size",
            train_src.len(),
            cfg.batch_size
        );
    }
    let mut tc = LoaderConfig::train(cfg.batch_size, cfg.seed);
    tc.drop_last = true;
    let train = Loader::new(train_src, preprocess(cfg, input, true), tc)?
        .on_skip(|s| eprintln!("warning: skipped unreadable sample {s}"));
    let eval = Loader::new(
        eval_src,
        preprocess(cfg, input, false),
        LoaderConfig::eval(cfg.batch_size),
    )?
    .on_skip(|s| eprintln!("warning: skipped unreadable sample {s}"));
    Ok(Datasets {
        train,
        eval,
        class_names,
        eval_split,
    })
}
