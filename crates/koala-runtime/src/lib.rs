//! koala-runtime: ONNX Runtime for koala, through the `ort` crate (2.0.0-rc.15).
//!
//! # Getting the library
//!
//! `ort` is built with `load-dynamic`: it links nothing and loads `libonnxruntime` at run time.
//! koala uses ONNX Runtime **1.31.1** from the PyPI wheel `onnxruntime==1.31.1`, and finds it
//! without a manual step ([`provision`]):
//!
//! 1. `ORT_DYLIB_PATH`, if set, names the library to use. It must exist; a missing file is an
//!    error (not a silent fallback).
//! 2. The cache file `<cache>/onnxruntime-1.31.1/libonnxruntime.so.1.31.1`, where `<cache>` is
//!    `$KOALA_CACHE_DIR`, else `$XDG_CACHE_HOME/koala`, else `~/.cache/koala`.
//! 3. Otherwise `python3 -m pip download --no-deps --only-binary=:all: onnxruntime==1.31.1`
//!    into a temporary directory; the library is extracted from the wheel (a zip file) into the
//!    cache file, atomically (temporary file + rename, safe when several processes do it at once).
//!
//! [`init`] then opens the file, checks that it exports `OrtGetApiBase` and reports version
//! ≥ 1.31 (what `ort`'s `api-31` needs), and creates the process-wide environment. It is
//! idempotent, and [`Session`] calls it implicitly. When nothing works, the error lists every
//! source tried with its outcome and says what to do.
//!
//! `ort` allows one environment per process, so code elsewhere that needs `ort` directly must
//! take [`environment`] from here rather than call `ort::init()` itself.
//!
//! Environment variables: `ORT_DYLIB_PATH` (library override), `KOALA_CACHE_DIR` (cache root),
//! `XDG_CACHE_HOME` and `HOME` (default cache root).
//!
//! # Running models
//!
//! * [`Session::run`] — borrowed inputs, owned outputs; for tests and evaluation.
//! * [`Session::run_into`] — borrowed inputs, outputs written into caller buffers; no copies.
//! * [`Runner`] — a session whose input and output buffers are bound once; one C call per run,
//!   no allocation on koala's side. This is the trainer's per-step path.
//!
//! A training loop, sketched (names as koala-graph's training graphs use them):
//!
//! ```no_run
//! use koala_runtime::{Runner, Session, SessionOptions};
//! # fn main() -> koala_runtime::Result<()> {
//! let session = Session::from_file("train.onnx".as_ref(), &SessionOptions::default())?;
//! let mut runner = Runner::new(session, &[("batch", 32)])?;
//! let (data, loss) = (runner.input_index("data")?, runner.output_index("loss")?);
//! for _step in 0..100 {
//!     runner.input_mut(data).f32s_mut()?.fill(0.0); // write the batch in place
//!     runner.run()?;
//!     let _loss = runner.output(loss).f32s()?[0];
//!     let (inputs, outputs) = runner.io_mut(); // update weights from gradients in place
//!     # let _ = (inputs, outputs);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # The rc.15 pitfall
//!
//! In `ort` 2.0.0-rc.15, `IoBinding::bind_input` with a borrowed `TensorRef` deadlocks. A
//! borrowed tensor may alias, so `bind_input` clones it; the clone (`Tensor::to`) copies through
//! a cached identity session while holding the global lock of that cache, and binds *its* input
//! with a borrowed view too, which clones again and takes the same non-reentrant lock.
//! (Checked on tiny_cnn: binding a borrowed input never returns, an owned one binds in
//! microseconds, and `bind_output` of a `TensorRefMut` over a Rust buffer does work.)
//! koala therefore never binds inputs through
//! `IoBinding`. The zero-copy paths call ONNX Runtime's C API directly (`ort::api()`):
//! `CreateTensorWithDataAsOrtValue` wraps a Rust buffer without copying, and `Run` writes into
//! preallocated output values in place. See `raw.rs` for the full reasoning.

mod arena;
mod error;
mod library;
pub mod memory;
mod options;
pub mod provision;
mod raw;
mod runner;
mod session;
mod tensor;

pub use arena::{Arena, ArenaStats};
pub use error::{Direction, Error, Result};
pub use library::{environment, init, init_with, ort_version};
pub use options::{physical_cores, OptimizationLevel, SessionOptions};
pub use provision::{resolve_dylib, ProvisionError, ResolveEnv};
pub use runner::{HostTensor, Runner};
pub use session::Session;
pub use tensor::{Dim, ElementType, OwnedTensor, TensorData, TensorView, TensorViewMut, ValueInfo};
