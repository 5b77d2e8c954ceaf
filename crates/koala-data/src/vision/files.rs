//! [`ImageFiles`]: labelled image files on disk, as listed by a class-folder tree ([`ImageFiles::open_folder`])
//! or a CSV file ([`ImageFiles::open_csv`]).

use std::path::{Path, PathBuf};

use image::DynamicImage;

use super::decode::{decode_file, ReadOptions};
use super::source::ImageSource;
use crate::error::Result;

/// Image files with their labels. Only paths are held in memory; [`ImageSource::load`] decodes the file,
/// detecting the format from its content.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    origin: PathBuf,
    class_names: Vec<String>,
    samples: Vec<(PathBuf, i64)>,
    read: ReadOptions,
}

impl ImageFiles {
    pub(crate) fn new(
        origin: &Path,
        class_names: Vec<String>,
        samples: Vec<(PathBuf, i64)>,
    ) -> Self {
        ImageFiles {
            origin: origin.to_path_buf(),
            class_names,
            samples,
            read: ReadOptions::default(),
        }
    }

    /// The same files read with `options` (e.g. [`ReadOptions::ignore_exif`]).
    pub fn with_read_options(mut self, options: ReadOptions) -> Self {
        self.read = options;
        self
    }

    /// How the files are read.
    pub fn read_options(&self) -> ReadOptions {
        self.read
    }

    /// The folder or CSV file the list was read from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The path of sample `index`.
    pub fn path(&self, index: usize) -> &Path {
        &self.samples[index].0
    }
}

impl ImageSource for ImageFiles {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn label(&self, index: usize) -> i64 {
        self.samples[index].1
    }

    fn load(&self, index: usize) -> Result<DynamicImage> {
        decode_file(&self.samples[index].0, self.read)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn describe(&self, index: usize) -> String {
        self.samples[index].0.display().to_string()
    }
}
