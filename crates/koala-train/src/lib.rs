//! koala-train: the fine-tuning loop (schedules, evaluation, metrics,
//! checkpoints, resume, export) on top of koala-graph, koala-optim and
//! koala-data.

pub mod causal_lm;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod generate;
pub mod grad_pipeline;
pub mod image_classification;
pub mod image_input;
pub mod image_size;
pub mod interrupt;
pub mod lora;
pub mod metrics;
pub mod optim_setup;
pub mod plot;
pub mod preflight;
pub mod preprocess_metadata;
pub mod progress;
pub mod run_lock;
pub mod schedule;
pub mod task;
pub mod tract_check;
pub mod trainer;

pub use config::TrainConfig;
pub use task::{BestMetric, Direction, Task, TaskKind};
pub use trainer::{finetune, resume, RunSummary};
