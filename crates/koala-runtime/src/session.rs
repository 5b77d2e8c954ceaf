//! An ONNX Runtime session with inputs and outputs exchanged as Rust buffers.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::path::Path;

use ort::memory::MemoryInfo;
use ort::sys::OrtValue;
use ort::value::TensorRef;

use crate::error::{Direction, Error, Result};
use crate::options::SessionOptions;
use crate::raw::{self, RawValue, RunArgs};
use crate::tensor::{
    ElementType, OwnedTensor, RawParts, TensorData, TensorView, TensorViewMut, ValueInfo,
};

/// A loaded model, ready to run.
///
/// Create it with [`Session::from_file`] or [`Session::from_bytes`] (both load ONNX Runtime on
/// first use, see [`crate::init`]). For a training loop that reruns the same shapes, wrap it in a
/// [`crate::Runner`], which binds its buffers once.
pub struct Session {
    pub(crate) inner: ort::session::Session,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    input_index: HashMap<String, usize>,
    output_index: HashMap<String, usize>,
    /// NUL-terminated names, made once, whose pointers are handed to `Run`.
    pub(crate) input_cnames: Vec<CString>,
    pub(crate) output_cnames: Vec<CString>,
    /// CPU memory description for the values koala creates over its buffers.
    pub(crate) memory: MemoryInfo<'static>,
    /// What the model was loaded from, for error messages.
    pub(crate) origin: String,
    /// Buffers reused by every [`Session::run_into`], so a call allocates nothing on our side
    /// once they have grown to the model's size.
    scratch: Scratch,
}

/// Per-call working storage of [`Session::run_into`]; empty between calls (no dangling pointers).
#[derive(Default)]
struct Scratch {
    in_names: Vec<*const c_char>,
    in_values: Vec<*const OrtValue>,
    out_names: Vec<*const c_char>,
    out_values: Vec<*mut OrtValue>,
    /// Keeps the wrapped buffers' `OrtValue`s alive until `Run` returns.
    values: Vec<RawValue>,
    shape: Vec<i64>,
    seen_inputs: Vec<bool>,
    seen_outputs: Vec<bool>,
}

impl Scratch {
    fn clear(&mut self) {
        self.in_names.clear();
        self.in_values.clear();
        self.out_names.clear();
        self.out_values.clear();
        self.values.clear();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("origin", &self.origin)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers in `Scratch` are only set during a `&mut self` call and cleared before
// it returns; everything else is `Send` (`ort` marks its session and memory info `Send`).
unsafe impl Send for Session {}

impl Session {
    /// Loads an ONNX model file.
    pub fn from_file(path: &Path, opts: &SessionOptions) -> Result<Session> {
        std::fs::metadata(path).map_err(|source| Error::ModelFile {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = format!("model {}", path.display());
        let inner = builder(opts, &origin)?
            .commit_from_file(path)
            .map_err(|e| Error::ort(format!("loading {origin}"), e))?;
        Session::wrap(inner, origin)
    }

    /// Loads an ONNX model from bytes in memory.
    pub fn from_bytes(bytes: &[u8], opts: &SessionOptions) -> Result<Session> {
        let origin = format!("in-memory model ({} bytes)", bytes.len());
        let inner = builder(opts, &origin)?
            .commit_from_memory(bytes)
            .map_err(|e| Error::ort(format!("loading {origin}"), e))?;
        Session::wrap(inner, origin)
    }

    fn wrap(inner: ort::session::Session, origin: String) -> Result<Session> {
        let inputs: Vec<ValueInfo> = inner.inputs().iter().map(ValueInfo::from_outlet).collect();
        let outputs: Vec<ValueInfo> = inner.outputs().iter().map(ValueInfo::from_outlet).collect();
        let cnames = |infos: &[ValueInfo]| -> Result<Vec<CString>> {
            infos
                .iter()
                .map(|i| {
                    CString::new(i.name.as_str()).map_err(|_| Error::Ort {
                        context: format!("loading {origin}"),
                        message: format!("tensor name {:?} contains a NUL byte", i.name),
                    })
                })
                .collect()
        };
        let index = |infos: &[ValueInfo]| -> HashMap<String, usize> {
            infos
                .iter()
                .enumerate()
                .map(|(i, v)| (v.name.clone(), i))
                .collect()
        };
        let memory = MemoryInfo::default();
        Ok(Session {
            input_cnames: cnames(&inputs)?,
            output_cnames: cnames(&outputs)?,
            input_index: index(&inputs),
            output_index: index(&outputs),
            inputs,
            outputs,
            inner,
            memory,
            origin,
            scratch: Scratch::default(),
        })
    }

    /// ONNX Runtime's counters for this session's CPU arena (peak bytes of live tensors,
    /// bytes reserved), or `None` where ORT reports none. For memory diagnostics: the arena
    /// holds a run's activations and temporaries, not the buffers koala binds.
    pub fn arena_stats(&self) -> Option<crate::ArenaStats> {
        crate::arena::stats(&self.inner)
    }

    /// The model's inputs, in graph order.
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.inputs
    }

    /// The model's outputs, in graph order.
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.outputs
    }

    /// Position of an input in [`Session::inputs`], or an error listing the inputs.
    pub fn input_index(&self, name: &str) -> Result<usize> {
        lookup(&self.input_index, &self.inputs, Direction::Input, name)
    }

    /// Position of an output in [`Session::outputs`], or an error listing the outputs.
    pub fn output_index(&self, name: &str) -> Result<usize> {
        lookup(&self.output_index, &self.outputs, Direction::Output, name)
    }

    /// Runs the model on borrowed inputs and writes the requested outputs into caller-owned
    /// buffers, without copying either.
    ///
    /// Every graph input must be given; any subset of outputs may be requested (ONNX Runtime
    /// skips work only they need). Each buffer's type and shape are checked against the model
    /// first, and an error names the tensor, the expected and the actual type or shape.
    ///
    /// Why this goes through ONNX Runtime's C API rather than `ort`'s `IoBinding` (whose
    /// `bind_input` deadlocks on borrowed tensors in rc.15): see the crate docs.
    /// After the scratch vectors have grown once, a call allocates nothing on koala's side;
    /// ONNX Runtime still creates one small `OrtValue` header per tensor. [`crate::Runner`]
    /// avoids even that by creating them once.
    pub fn run_into(
        &mut self,
        inputs: &[(&str, TensorView<'_>)],
        outputs: &mut [(&str, TensorViewMut<'_>)],
    ) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.run_into_with(&mut scratch, inputs, outputs);
        scratch.clear();
        self.scratch = scratch;
        result
    }

    fn run_into_with(
        &mut self,
        s: &mut Scratch,
        inputs: &[(&str, TensorView<'_>)],
        outputs: &mut [(&str, TensorViewMut<'_>)],
    ) -> Result<()> {
        reset_flags(&mut s.seen_inputs, self.inputs.len());
        reset_flags(&mut s.seen_outputs, self.outputs.len());
        for (name, view) in inputs {
            let parts = view.raw();
            let idx = self.checked_index(Direction::Input, name, &parts, &mut s.seen_inputs)?;
            // SAFETY: `view` borrows the data for the whole call; ORT only reads inputs.
            let value = unsafe { self.wrap_parts(&parts, &mut s.shape) }?;
            s.in_names.push(self.input_cnames[idx].as_ptr());
            s.in_values.push(value.ptr().cast_const());
            s.values.push(value);
        }
        self.check_all_inputs_given(&s.seen_inputs)?;
        for (name, view) in outputs.iter_mut() {
            let parts = view.raw();
            let idx = self.checked_index(Direction::Output, name, &parts, &mut s.seen_outputs)?;
            // SAFETY: `view` borrows the data mutably (exclusively) for the whole call.
            let value = unsafe { self.wrap_parts(&parts, &mut s.shape) }?;
            s.out_names.push(self.output_cnames[idx].as_ptr());
            s.out_values.push(value.ptr());
            s.values.push(value);
        }
        let args = RunArgs {
            in_names: &s.in_names,
            in_values: &s.in_values,
            out_names: &s.out_names,
            out_values: &mut s.out_values,
        };
        // SAFETY: names point into `self.*_cnames`, values into `s.values`, both alive here.
        unsafe { raw::run(&mut self.inner, args) }.map_err(|e| self.run_error(e))
    }

    /// The graph position of a named buffer, after checking that the name exists, was not
    /// given before in this call (`seen`), and that the buffer fits the declaration.
    fn checked_index(
        &self,
        direction: Direction,
        name: &str,
        parts: &RawParts<'_>,
        seen: &mut [bool],
    ) -> Result<usize> {
        let (idx, infos) = match direction {
            Direction::Input => (self.input_index(name)?, &self.inputs),
            Direction::Output => (self.output_index(name)?, &self.outputs),
        };
        mark_once(seen, idx, direction, name)?;
        check_buffer(direction, &infos[idx], parts)?;
        Ok(idx)
    }

    /// Wraps a buffer as an `OrtValue` without copying.
    ///
    /// # Safety
    /// The buffer behind `parts` must outlive the returned value's use.
    pub(crate) unsafe fn wrap_parts(
        &self,
        parts: &RawParts<'_>,
        shape: &mut Vec<i64>,
    ) -> Result<RawValue> {
        shape.clear();
        shape.extend(parts.shape.iter().map(|&d| d as i64));
        let onnx = parts
            .element_type
            .onnx()
            .expect("views only hold f32, f64, i64 or u8");
        // SAFETY: forwarded from the caller.
        unsafe { RawValue::over(&self.memory, parts.ptr, parts.bytes, shape, onnx) }
            .map_err(|e| Error::ort(format!("wrapping a buffer for {}", self.origin), e))
    }

    pub(crate) fn run_error(&self, e: ort::Error) -> Error {
        Error::ort(format!("running {}", self.origin), e)
    }

    fn check_all_inputs_given(&self, seen: &[bool]) -> Result<()> {
        if seen.iter().all(|&s| s) {
            return Ok(());
        }
        let missing: Vec<&str> = self
            .inputs
            .iter()
            .zip(seen)
            .filter(|(_, &s)| !s)
            .map(|(i, _)| i.name.as_str())
            .collect();
        Err(Error::MissingInputs {
            names: missing.join(", "),
        })
    }

    /// Runs the model and returns every output as an owned tensor (convenient for tests and
    /// evaluation; allocates). Inputs are passed to `ort` as `TensorRef` views, which is the
    /// rc.15 way to avoid copies without `IoBinding::bind_input`.
    pub fn run(&mut self, inputs: &[(&str, TensorView<'_>)]) -> Result<Vec<OwnedTensor>> {
        let mut seen = vec![false; self.inputs.len()];
        let mut values: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        for (name, view) in inputs {
            self.checked_index(Direction::Input, name, &view.raw(), &mut seen)?;
            values.push((name.to_string(), self.tensor_ref(name, view)?));
        }
        self.check_all_inputs_given(&seen)?;
        let context = format!("running {}", self.origin);
        let outputs = self
            .inner
            .run(values)
            .map_err(|e| Error::ort(&context, e))?;
        outputs
            .iter()
            .map(|(name, value)| owned_output(name, &value).map_err(|e| Error::ort(&context, e)))
            .collect()
    }

    fn tensor_ref<'v>(
        &self,
        name: &str,
        view: &TensorView<'v>,
    ) -> Result<ort::session::SessionInputValue<'v>> {
        let made = match *view {
            TensorView::F32 { data, shape } => {
                TensorRef::from_array_view((shape, data)).map(Into::into)
            }
            TensorView::F64 { data, shape } => {
                TensorRef::from_array_view((shape, data)).map(Into::into)
            }
            TensorView::I64 { data, shape } => {
                TensorRef::from_array_view((shape, data)).map(Into::into)
            }
            TensorView::U8 { data, shape } => {
                TensorRef::from_array_view((shape, data)).map(Into::into)
            }
        };
        made.map_err(|e| Error::ort(format!("input {name:?} of {}", self.origin), e))
    }
}

/// Copies one ORT-allocated output into an [`OwnedTensor`].
fn owned_output(name: &str, value: &ort::value::DynValue) -> Result<OwnedTensor, ort::Error> {
    let ty = value
        .dtype()
        .tensor_type()
        .map(ElementType::from_ort)
        .unwrap_or_else(|| ElementType::Other("non-tensor".into()));
    let (shape, data) = match ty {
        ElementType::F32 => {
            let (shape, data) = value.try_extract_tensor::<f32>()?;
            (shape, TensorData::F32(data.to_vec()))
        }
        ElementType::F64 => {
            let (shape, data) = value.try_extract_tensor::<f64>()?;
            (shape, TensorData::F64(data.to_vec()))
        }
        ElementType::I64 => {
            let (shape, data) = value.try_extract_tensor::<i64>()?;
            (shape, TensorData::I64(data.to_vec()))
        }
        ElementType::U8 => {
            let (shape, data) = value.try_extract_tensor::<u8>()?;
            (shape, TensorData::U8(data.to_vec()))
        }
        other => {
            return Err(ort::Error::new(format!(
            "output {name:?} has element type {other}; koala reads only f32, f64, i64 and u8 outputs"
        )))
        }
    };
    Ok(OwnedTensor {
        name: name.to_string(),
        shape: shape.iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// A session builder with koala's environment and the given options.
fn builder(opts: &SessionOptions, origin: &str) -> Result<ort::session::builder::SessionBuilder> {
    let environment = crate::library::environment()?;
    let context = || format!("configuring a session for {origin}");
    let builder =
        ort::session::Session::builder(environment).map_err(|e| Error::ort(context(), e))?;
    opts.apply(builder, &context())
}

fn lookup(
    index: &HashMap<String, usize>,
    infos: &[ValueInfo],
    direction: Direction,
    name: &str,
) -> Result<usize> {
    index
        .get(name)
        .copied()
        .ok_or_else(|| Error::UnknownTensor {
            direction,
            name: name.to_string(),
            available: infos
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn reset_flags(flags: &mut Vec<bool>, len: usize) {
    flags.clear();
    flags.resize(len, false);
}

fn mark_once(seen: &mut [bool], idx: usize, direction: Direction, name: &str) -> Result<()> {
    if std::mem::replace(&mut seen[idx], true) {
        return Err(Error::DuplicateTensor {
            direction,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks a buffer against the model's declaration: element type, own length versus own shape,
/// and shape versus the declared dimensions (dynamic dimensions accept any size).
pub(crate) fn check_buffer(
    direction: Direction,
    info: &ValueInfo,
    parts: &RawParts<'_>,
) -> Result<()> {
    if parts.element_type != info.element_type {
        return Err(Error::TypeMismatch {
            direction,
            name: info.name.clone(),
            expected: info.element_type.to_string(),
            got: parts.element_type.to_string(),
        });
    }
    let needed: usize = parts.shape.iter().product();
    if needed != parts.len {
        return Err(Error::ShapeMismatch {
            direction,
            name: info.name.clone(),
            detail: format!(
                "the buffer holds {} elements but its shape {:?} needs {needed}",
                parts.len, parts.shape
            ),
        });
    }
    if !info.admits_shape(parts.shape) {
        return Err(Error::ShapeMismatch {
            direction,
            name: info.name.clone(),
            detail: format!(
                "the model expects shape {}, the buffer has shape {:?}",
                info.dims_display(),
                parts.shape
            ),
        });
    }
    Ok(())
}
