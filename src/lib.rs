//! koala: fine-tune ONNX models with KOALA++ on stock ONNX Runtime.
//!
//! This crate is a thin facade over the workspace crates.
pub use koala_data as data;
pub use koala_graph as graph;
pub use koala_optim as optim;
pub use koala_runtime as runtime;
pub use koala_train as train;
