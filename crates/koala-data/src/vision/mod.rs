//! The image pipeline: sources on disk → preprocessing → deterministic batches.

pub mod batch;
pub mod batch_iter;
pub mod class_counts;
mod csv_list;
pub mod decode;
pub mod files;
mod folder;
mod geometry;
pub mod idx;
pub mod loader;
pub mod open;
#[cfg(test)]
mod pillow_reference_tests;
pub mod preprocess;
pub mod relabel;
mod resample;
pub mod source;
pub mod splits;
pub mod subset;
mod transform;
