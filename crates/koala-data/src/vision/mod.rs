//! The image pipeline: sources on disk → preprocessing → deterministic batches.

pub mod batch;
pub mod batch_iter;
mod csv_list;
pub mod files;
mod folder;
mod geometry;
pub mod idx;
pub mod loader;
pub mod open;
#[cfg(test)]
mod pillow_reference_tests;
pub mod preprocess;
mod resample;
pub mod source;
pub mod subset;
mod transform;
