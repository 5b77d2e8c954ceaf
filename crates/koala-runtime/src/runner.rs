//! A session with its input and output buffers bound once, for loops that rerun one shape.
//!
//! A training step feeds ~160 tensors in (data, labels, weights) and gets ~160 out (loss,
//! per-sample loss, gradients). [`Runner`] owns one Rust buffer per tensor, wraps each in an
//! `OrtValue` once, and keeps the name and value pointer arrays that ONNX Runtime's `Run` takes.
//! A step is then: write the inputs in place ([`Runner::input_mut`]), call [`Runner::run`] (one
//! C call, no allocation on koala's side, no copies), read the outputs in place
//! ([`Runner::output`]). [`Runner::io_mut`] lends inputs mutably and outputs immutably at once,
//! so an optimizer can update weights from gradients without copying either.

use std::ffi::c_char;

use ort::sys::OrtValue;

use crate::error::{Direction, Error, Result};
use crate::raw::{self, RawValue, RunArgs};
use crate::session::Session;
use crate::tensor::{ElementType, RawParts, TensorData, TensorView, TensorViewMut, ValueInfo};

/// A tensor buffer owned by a [`Runner`] and shared in place with ONNX Runtime.
pub struct HostTensor {
    // Declared before `data`: fields drop in declaration order, and the OrtValue must be
    // released before the buffer it points into is freed.
    value: RawValue,
    name: String,
    shape: Vec<usize>,
    data: TensorData,
}

macro_rules! host_accessors {
    ($($get:ident, $get_mut:ident, $variant:ident, $t:ty);*) => {
        impl HostTensor {
            $(
                #[doc = concat!("The `", stringify!($t), "` elements, or an error naming the tensor if it holds another type.")]
                pub fn $get(&self) -> Result<&[$t]> {
                    match &self.data {
                        TensorData::$variant(v) => Ok(v),
                        _ => Err(self.type_error(ElementType::$variant)),
                    }
                }

                #[doc = concat!("The `", stringify!($t), "` elements, mutably (the buffer ONNX Runtime reads or writes).")]
                pub fn $get_mut(&mut self) -> Result<&mut [$t]> {
                    if !matches!(self.data, TensorData::$variant(_)) {
                        return Err(self.type_error(ElementType::$variant));
                    }
                    match &mut self.data {
                        TensorData::$variant(v) => Ok(v),
                        _ => unreachable!("checked just above"),
                    }
                }
            )*
        }
    };
}

host_accessors!(f32s, f32s_mut, F32, f32; f64s, f64s_mut, F64, f64; i64s, i64s_mut, I64, i64; u8s, u8s_mut, U8, u8);

impl HostTensor {
    /// Allocates a zeroed buffer for `info` with a concrete `shape` and wraps it.
    fn new(
        session: &Session,
        info: &ValueInfo,
        shape: Vec<usize>,
        shape_scratch: &mut Vec<i64>,
    ) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        let mut data = match info.element_type {
            ElementType::F32 => TensorData::F32(vec![0.0; n]),
            ElementType::F64 => TensorData::F64(vec![0.0; n]),
            ElementType::I64 => TensorData::I64(vec![0; n]),
            ElementType::U8 => TensorData::U8(vec![0; n]),
            ref other => {
                return Err(Error::TypeMismatch {
                    direction: Direction::Input,
                    name: info.name.clone(),
                    expected: other.to_string(),
                    got: "a koala buffer (koala buffers hold f32, f64, i64 or u8)".into(),
                })
            }
        };
        let parts = raw_parts(&mut data, &shape);
        // SAFETY: the buffer is a heap allocation owned by the returned HostTensor, never
        // reallocated (only slices of it are lent out), and freed after `value` (field order).
        let value = unsafe { session.wrap_parts(&parts, shape_scratch) }?;
        Ok(HostTensor {
            value,
            name: info.name.clone(),
            shape,
            data,
        })
    }

    /// The graph name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        match self.data {
            TensorData::F32(_) => ElementType::F32,
            TensorData::F64(_) => ElementType::F64,
            TensorData::I64(_) => ElementType::I64,
            TensorData::U8(_) => ElementType::U8,
        }
    }

    /// The data, whatever its type.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// A borrowed view, e.g. to pass to [`Session::run_into`] of another session.
    pub fn view(&self) -> TensorView<'_> {
        match &self.data {
            TensorData::F32(v) => TensorView::f32(v, &self.shape),
            TensorData::F64(v) => TensorView::f64(v, &self.shape),
            TensorData::I64(v) => TensorView::i64(v, &self.shape),
            TensorData::U8(v) => TensorView::u8(v, &self.shape),
        }
    }

    /// A mutable view.
    pub fn view_mut(&mut self) -> TensorViewMut<'_> {
        match &mut self.data {
            TensorData::F32(v) => TensorViewMut::f32(v, &self.shape),
            TensorData::F64(v) => TensorViewMut::f64(v, &self.shape),
            TensorData::I64(v) => TensorViewMut::i64(v, &self.shape),
            TensorData::U8(v) => TensorViewMut::u8(v, &self.shape),
        }
    }

    fn type_error(&self, asked: ElementType) -> Error {
        Error::TypeMismatch {
            direction: Direction::Input,
            name: self.name.clone(),
            expected: self.element_type().to_string(),
            got: format!("a request for {asked} data"),
        }
    }
}

fn raw_parts<'a>(data: &mut TensorData, shape: &'a [usize]) -> RawParts<'a> {
    let (ptr, len, bytes, element_type) = match data {
        TensorData::F32(v) => (
            v.as_mut_ptr().cast(),
            v.len(),
            size_of_val(v.as_slice()),
            ElementType::F32,
        ),
        TensorData::F64(v) => (
            v.as_mut_ptr().cast(),
            v.len(),
            size_of_val(v.as_slice()),
            ElementType::F64,
        ),
        TensorData::I64(v) => (
            v.as_mut_ptr().cast(),
            v.len(),
            size_of_val(v.as_slice()),
            ElementType::I64,
        ),
        TensorData::U8(v) => (
            v.as_mut_ptr().cast(),
            v.len(),
            size_of_val(v.as_slice()),
            ElementType::U8,
        ),
    };
    RawParts {
        ptr,
        len,
        bytes,
        shape,
        element_type,
    }
}

/// A [`Session`] with every input and the selected outputs bound to buffers it owns.
///
/// Shapes are fixed when the runner is made: dynamic dimensions are resolved from `dims`
/// (symbolic name → size, e.g. `("batch", 32)`). koala's training graphs are specialised to
/// the batch size, so this is no restriction there; a different batch size (say, the last
/// partial batch of an epoch) needs its own runner or [`Session::run_into`].
pub struct Runner {
    session: Session,
    inputs: Vec<HostTensor>,
    outputs: Vec<HostTensor>,
    /// Positions of the bound outputs in [`Session::outputs`].
    output_positions: Vec<usize>,
    in_names: Vec<*const c_char>,
    in_values: Vec<*const OrtValue>,
    out_names: Vec<*const c_char>,
    out_values: Vec<*mut OrtValue>,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTensor")
            .field("name", &self.name)
            .field("element_type", &self.element_type())
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("session", &self.session)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers point into heap storage owned by this Runner (name strings in the
// session, OrtValues and buffers in the HostTensors), which moves with it; `&mut self` on `run`
// keeps calls exclusive.
unsafe impl Send for Runner {}

impl Runner {
    /// Binds every input and every output.
    pub fn new(session: Session, dims: &[(&str, usize)]) -> Result<Runner> {
        let all: Vec<String> = session.outputs().iter().map(|o| o.name.clone()).collect();
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        Runner::with_outputs(session, dims, &names)
    }

    /// Binds every input and only the named outputs (ONNX Runtime then skips work that only
    /// other outputs need).
    pub fn with_outputs(
        session: Session,
        dims: &[(&str, usize)],
        outputs: &[&str],
    ) -> Result<Runner> {
        let mut shape_scratch = Vec::new();
        let mut inputs = Vec::with_capacity(session.inputs().len());
        for info in session.inputs() {
            let shape = concrete_shape(Direction::Input, info, dims)?;
            inputs.push(HostTensor::new(&session, info, shape, &mut shape_scratch)?);
        }
        let mut bound = Vec::with_capacity(outputs.len());
        let mut output_positions = Vec::with_capacity(outputs.len());
        for name in outputs {
            let pos = session.output_index(name)?;
            if output_positions.contains(&pos) {
                return Err(Error::DuplicateTensor {
                    direction: Direction::Output,
                    name: name.to_string(),
                });
            }
            let info = &session.outputs()[pos];
            let shape = concrete_shape(Direction::Output, info, dims)?;
            bound.push(HostTensor::new(&session, info, shape, &mut shape_scratch)?);
            output_positions.push(pos);
        }
        let in_names = session.input_cnames.iter().map(|c| c.as_ptr()).collect();
        let out_names = output_positions
            .iter()
            .map(|&p| session.output_cnames[p].as_ptr())
            .collect();
        let in_values = inputs.iter().map(|t| t.value.ptr().cast_const()).collect();
        let out_values = bound.iter().map(|t| t.value.ptr()).collect();
        Ok(Runner {
            session,
            inputs,
            outputs: bound,
            output_positions,
            in_names,
            in_values,
            out_names,
            out_values,
        })
    }

    /// Runs the model: reads the input buffers, overwrites the output buffers.
    pub fn run(&mut self) -> Result<()> {
        let args = RunArgs {
            in_names: &self.in_names,
            in_values: &self.in_values,
            out_names: &self.out_names,
            out_values: &mut self.out_values,
        };
        // SAFETY: names point into the session's CStrings and values into our HostTensors, all
        // owned by `self`; `&mut self` means no Rust reference into the buffers is alive.
        unsafe { raw::run(&mut self.session.inner, args) }.map_err(|e| self.session.run_error(e))
    }

    /// The session (for its input and output descriptions).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Gives the session back, dropping the buffers.
    pub fn into_session(self) -> Session {
        self.session
    }

    /// Position of an input in [`Runner::inputs`] (the model's input order).
    pub fn input_index(&self, name: &str) -> Result<usize> {
        self.session.input_index(name)
    }

    /// Position of a bound output in [`Runner::outputs`].
    pub fn output_index(&self, name: &str) -> Result<usize> {
        let pos = self.session.output_index(name)?;
        self.output_positions
            .iter()
            .position(|&p| p == pos)
            .ok_or_else(|| Error::UnknownTensor {
                direction: Direction::Output,
                name: name.to_string(),
                available: self
                    .outputs
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The input buffers, in the model's input order.
    pub fn inputs(&self) -> &[HostTensor] {
        &self.inputs
    }

    /// The bound output buffers, in the order they were asked for.
    pub fn outputs(&self) -> &[HostTensor] {
        &self.outputs
    }

    /// One input buffer, mutably, by index (from [`Runner::input_index`]).
    ///
    /// # Panics
    /// If `index` is out of range, like slice indexing: indices come from
    /// [`Runner::input_index`], which reports unknown names as errors.
    pub fn input_mut(&mut self, index: usize) -> &mut HostTensor {
        &mut self.inputs[index]
    }

    /// One output buffer by index (from [`Runner::output_index`]).
    ///
    /// # Panics
    /// If `index` is out of range, like slice indexing.
    pub fn output(&self, index: usize) -> &HostTensor {
        &self.outputs[index]
    }

    /// Inputs mutably and outputs immutably at the same time (e.g. to update weights from
    /// gradients in place between two runs).
    pub fn io_mut(&mut self) -> (&mut [HostTensor], &[HostTensor]) {
        (&mut self.inputs, &self.outputs)
    }
}

/// The concrete shape of a tensor: fixed dims as declared, symbolic ones from `dims`.
fn concrete_shape(
    direction: Direction,
    info: &ValueInfo,
    dims: &[(&str, usize)],
) -> Result<Vec<usize>> {
    use crate::tensor::Dim;
    info.dims
        .iter()
        .enumerate()
        .map(|(axis, dim)| match dim {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbolic(sym) => dims
                .iter()
                .find(|(name, _)| name == sym)
                .map(|&(_, n)| n)
                .ok_or_else(|| Error::ShapeMismatch {
                    direction,
                    name: info.name.clone(),
                    detail: format!(
                        "axis {axis} of {} is the dynamic dimension {sym:?}; give its size in dims, e.g. ({sym:?}, 32)",
                        info.dims_display()
                    ),
                }),
            Dim::Unknown => Err(Error::ShapeMismatch {
                direction,
                name: info.name.clone(),
                detail: format!(
                    "axis {axis} of {} is dynamic and unnamed, so a runner cannot size its buffer; \
                     give the model a fixed or named dimension there, or use Session::run_into",
                    info.dims_display()
                ),
            }),
        })
        .collect()
}
