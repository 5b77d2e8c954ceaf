//! koala-graph: ONNX model IO, checks, trainable selection, loss heads and
//! the backward-graph compiler that turns an inference model into a
//! training graph of standard ONNX operators.

pub mod attrs;
pub mod backward;
pub mod facts;
pub mod loss;
pub mod lower;
pub mod model;
pub mod nchwc;
pub mod probe;
pub mod proto;
pub mod tensor;
pub mod trainable;
pub mod training;
pub mod upgrade;

pub use backward::{BackwardOptions, ConvWeightGrad, ExecutionTarget};
pub use loss::LossSpec;
pub use model::Model;
pub use trainable::TrainableSpec;
pub use training::{build, TrainingGraph, TrainingSpec};
pub mod check;
pub mod classifier_output;
pub mod export;
pub mod fold;
pub mod gradcheck;
pub mod head;
pub mod lm_signature;
pub mod lora;
pub mod recompute;
pub mod reference;
pub mod step;
pub mod tied;
pub mod transposed_matmul;
