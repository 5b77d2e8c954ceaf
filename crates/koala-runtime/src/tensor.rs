//! Tensor descriptions and borrowed/owned tensor buffers exchanged with a session.
//!
//! Buffers are plain Rust slices in row-major (C) order plus a shape; ONNX Runtime reads and
//! writes them in place (see [`crate::Session::run_into`]).

use std::ffi::c_void;
use std::fmt;

use ort::sys::ONNXTensorElementDataType as OnnxType;

/// Element type of a tensor. koala's buffers hold `f32`, `f64` or `i64`; a model may declare
/// others, which [`ElementType::Other`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// Any other ONNX type (named as ONNX Runtime names it), or a non-tensor value.
    Other(String),
}

impl ElementType {
    pub(crate) fn from_ort(ty: ort::value::TensorElementType) -> ElementType {
        use ort::value::TensorElementType as T;
        match ty {
            T::Float32 => ElementType::F32,
            T::Float64 => ElementType::F64,
            T::Int64 => ElementType::I64,
            other => ElementType::Other(other.to_string()),
        }
    }

    /// The ONNX C enum, for the three types koala buffers can hold.
    pub(crate) fn onnx(&self) -> Option<OnnxType> {
        match self {
            ElementType::F32 => Some(OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
            ElementType::F64 => Some(OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE),
            ElementType::I64 => Some(OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64),
            ElementType::Other(_) => None,
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElementType::F32 => f.write_str("f32"),
            ElementType::F64 => f.write_str("f64"),
            ElementType::I64 => f.write_str("i64"),
            ElementType::Other(name) => f.write_str(name),
        }
    }
}

/// One dimension of a declared model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A dynamic size with a symbolic name (e.g. `batch`).
    Symbolic(String),
    /// A dynamic size without a name.
    Unknown,
}

impl Dim {
    /// Whether a concrete size is allowed here.
    pub fn admits(&self, size: usize) -> bool {
        match self {
            Dim::Fixed(n) => *n == size,
            Dim::Symbolic(_) | Dim::Unknown => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Name, element type and declared shape of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    /// The graph name.
    pub name: String,
    /// The element type.
    pub element_type: ElementType,
    /// The declared dimensions (empty for a scalar).
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    pub(crate) fn from_outlet(outlet: &ort::value::Outlet) -> ValueInfo {
        use ort::value::ValueType;
        let (element_type, dims) = match outlet.dtype() {
            ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } => {
                let dims = shape
                    .iter()
                    .zip(dimension_symbols.iter())
                    .map(|(&n, sym)| match usize::try_from(n) {
                        Ok(n) => Dim::Fixed(n),
                        Err(_) if !sym.is_empty() => Dim::Symbolic(sym.clone()),
                        Err(_) => Dim::Unknown,
                    })
                    .collect();
                (ElementType::from_ort(*ty), dims)
            }
            other => (ElementType::Other(format!("{other:?}")), Vec::new()),
        };
        ValueInfo {
            name: outlet.name().to_string(),
            element_type,
            dims,
        }
    }

    /// The shape if every dimension is fixed.
    pub fn fixed_shape(&self) -> Option<Vec<usize>> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Whether a concrete shape fits the declared one.
    pub fn admits_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.dims.len() && self.dims.iter().zip(shape).all(|(d, &n)| d.admits(n))
    }

    /// The declared shape in brackets, e.g. `[batch, 3, 16, 16]`.
    pub fn dims_display(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// A borrowed input buffer: row-major data and its shape.
#[derive(Debug, Clone, Copy)]
pub enum TensorView<'a> {
    /// `f32` data.
    F32 {
        /// Elements, row-major.
        data: &'a [f32],
        /// Dimensions.
        shape: &'a [usize],
    },
    /// `f64` data.
    F64 {
        /// Elements, row-major.
        data: &'a [f64],
        /// Dimensions.
        shape: &'a [usize],
    },
    /// `i64` data.
    I64 {
        /// Elements, row-major.
        data: &'a [i64],
        /// Dimensions.
        shape: &'a [usize],
    },
}

/// A borrowed output buffer that ONNX Runtime writes into.
#[derive(Debug)]
pub enum TensorViewMut<'a> {
    /// `f32` data.
    F32 {
        /// Elements, row-major.
        data: &'a mut [f32],
        /// Dimensions.
        shape: &'a [usize],
    },
    /// `f64` data.
    F64 {
        /// Elements, row-major.
        data: &'a mut [f64],
        /// Dimensions.
        shape: &'a [usize],
    },
    /// `i64` data.
    I64 {
        /// Elements, row-major.
        data: &'a mut [i64],
        /// Dimensions.
        shape: &'a [usize],
    },
}

/// Raw parts of a buffer as ONNX Runtime needs them: pointer, byte length, shape, type.
pub(crate) struct RawParts<'a> {
    pub ptr: *mut c_void,
    pub len: usize,
    pub bytes: usize,
    pub shape: &'a [usize],
    pub element_type: ElementType,
}

macro_rules! view_constructors {
    ($($ctor:ident, $variant:ident, $t:ty);*) => {
        impl<'a> TensorView<'a> {
            $(
                #[doc = concat!("A `", stringify!($t), "` view.")]
                pub fn $ctor(data: &'a [$t], shape: &'a [usize]) -> Self {
                    TensorView::$variant { data, shape }
                }
            )*

            pub(crate) fn raw(&self) -> RawParts<'a> {
                match *self {
                    $(TensorView::$variant { data, shape } => RawParts {
                        ptr: data.as_ptr() as *mut c_void,
                        len: data.len(),
                        bytes: std::mem::size_of_val(data),
                        shape,
                        element_type: ElementType::$variant,
                    },)*
                }
            }
        }

        impl<'a> TensorViewMut<'a> {
            $(
                #[doc = concat!("A mutable `", stringify!($t), "` view.")]
                pub fn $ctor(data: &'a mut [$t], shape: &'a [usize]) -> Self {
                    TensorViewMut::$variant { data, shape }
                }
            )*

            pub(crate) fn raw(&mut self) -> RawParts<'_> {
                match self {
                    $(TensorViewMut::$variant { data, shape } => RawParts {
                        ptr: data.as_mut_ptr() as *mut c_void,
                        len: data.len(),
                        bytes: std::mem::size_of_val(*data),
                        shape,
                        element_type: ElementType::$variant,
                    },)*
                }
            }
        }
    };
}

view_constructors!(f32, F32, f32; f64, F64, f64; i64, I64, i64);

/// Owned tensor data.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
    /// `i64` elements.
    I64(Vec<i64>),
}

/// An owned output, as returned by [`crate::Session::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    /// The output's graph name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: TensorData,
}

impl OwnedTensor {
    /// The element type.
    pub fn element_type(&self) -> ElementType {
        match self.data {
            TensorData::F32(_) => ElementType::F32,
            TensorData::F64(_) => ElementType::F64,
            TensorData::I64(_) => ElementType::I64,
        }
    }

    /// The `f32` elements, or `None` for another type.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The `f64` elements, or `None` for another type.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.data {
            TensorData::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The `i64` elements, or `None` for another type.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }
}
