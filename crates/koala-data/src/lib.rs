//! Data pipelines for koala: on-disk image data sets turned into deterministic NCHW `f32` batches with `i64`
//! labels, ready to feed an ONNX model.
//!
//! ```no_run
//! use std::sync::Arc;
//! use koala_data::{Cursor, ImageFiles, Loader, LoaderConfig, Preprocess};
//!
//! let source = Arc::new(ImageFiles::open_folder("data/pets")?);
//! let train = Loader::new(source, Preprocess::imagenet(224), LoaderConfig::train(32, 42))?;
//! for batch in train.iter(Cursor::new(0, 0), 10) {
//!     // batch.images: [N, 3, 224, 224] f32, batch.labels: [N] i64
//!     # let _ = batch;
//! }
//! # Ok::<(), koala_data::DataError>(())
//! ```
//!
//! Sources ([`ImageFiles`] from a class-folder tree or a CSV list, [`IdxSource`], or any [`ImageSource`]) only list samples; a
//! [`Loader`] decodes them in parallel with a [`Preprocess`] and prefetches batches on a background thread.

pub mod cursor;
pub mod epoch_plan;
pub mod error;
pub mod prefetch;
mod seeding;
pub mod text;
pub mod vision;

pub use cursor::Cursor;
pub use epoch_plan::EpochPlan;
pub use error::{DataError, Result};
pub use prefetch::{Collate, Prefetch, Prefetched};
pub use text::batch::{TextBatch, TextBatchIter, TextLoader, TextLoaderConfig};
pub use text::dataset::{
    TextCounts, TextDataset, TextExample, TextFormat, TextOptions, IGNORE_INDEX,
};
pub use text::tokenizer::TextTokenizer;
pub use vision::batch::{
    to_model_input, Batch, InputLayout, LoaderStats, ModelPixels, PixelType, SkippedSample,
};
pub use vision::batch_iter::BatchIter;
pub use vision::class_counts::ClassCounts;
pub use vision::decode::ReadOptions;
pub use vision::files::ImageFiles;
pub use vision::idx::{
    IdxSource, IdxSplit, FASHION_MNIST_CLASSES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC,
};
pub use vision::loader::{Loader, LoaderConfig, SkipCallback};
pub use vision::open::{open_source, open_source_with};
pub use vision::preprocess::{Preprocess, RandomResizedCrop, Resize, IMAGENET_MEAN, IMAGENET_STD};
pub use vision::relabel::with_training_classes;
pub use vision::source::{ImageSource, IMAGE_EXTENSIONS};
pub use vision::splits::{find_split_folders, SplitFolders};
pub use vision::subset::{train_val_split, Subset};
