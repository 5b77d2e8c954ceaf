//! Tensor descriptions and borrowed/owned tensor buffers exchanged with a session.
//!
//! Buffers are plain Rust slices in row-major (C) order plus a shape; ONNX Runtime reads and
//! writes them in place (see [`crate::Session::run_into`]).

use std::ffi::c_void;
use std::fmt;

use ort::sys::ONNXTensorElementDataType as OnnxType;

/// Element type of a tensor, one variant per ONNX `TensorProto.DataType` that ONNX Runtime
/// reports (numbering: the ONNX spec, `onnx/onnx.proto`, `TensorProto.DataType`).
///
/// koala's buffers ([`TensorView`], [`crate::HostTensor`]) hold `f32`, `f64`, `i64` or `u8` (see
/// [`ElementType::is_buffer_type`]); the other variants describe what a model declares (token
/// ids as int32, attention masks as bool, fp16/bf16 weights) so callers can match on a type
/// instead of on ONNX Runtime's spelling of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float (ONNX `FLOAT`, 1).
    F32,
    /// 8-bit unsigned integer (ONNX `UINT8`, 2).
    U8,
    /// 8-bit signed integer (ONNX `INT8`, 3).
    I8,
    /// 16-bit unsigned integer (ONNX `UINT16`, 4).
    U16,
    /// 16-bit signed integer (ONNX `INT16`, 5).
    I16,
    /// 32-bit signed integer (ONNX `INT32`, 6).
    I32,
    /// 64-bit signed integer (ONNX `INT64`, 7).
    I64,
    /// String (ONNX `STRING`, 8).
    String,
    /// Boolean (ONNX `BOOL`, 9).
    Bool,
    /// IEEE half precision (ONNX `FLOAT16`, 10).
    F16,
    /// 64-bit float (ONNX `DOUBLE`, 11).
    F64,
    /// 32-bit unsigned integer (ONNX `UINT32`, 12).
    U32,
    /// 64-bit unsigned integer (ONNX `UINT64`, 13).
    U64,
    /// Complex of two f32 (ONNX `COMPLEX64`, 14).
    Complex64,
    /// Complex of two f64 (ONNX `COMPLEX128`, 15).
    Complex128,
    /// Brain float 16 (ONNX `BFLOAT16`, 16).
    BF16,
    /// Anything else ONNX Runtime reports (8/4/2-bit floats and integers, named as ORT names
    /// them), or a value that is not a tensor (sequence, map, optional).
    Other(std::string::String),
}

impl ElementType {
    pub(crate) fn from_ort(ty: ort::value::TensorElementType) -> ElementType {
        use ort::value::TensorElementType as T;
        match ty {
            T::Float32 => ElementType::F32,
            T::Uint8 => ElementType::U8,
            T::Int8 => ElementType::I8,
            T::Uint16 => ElementType::U16,
            T::Int16 => ElementType::I16,
            T::Int32 => ElementType::I32,
            T::Int64 => ElementType::I64,
            T::String => ElementType::String,
            T::Bool => ElementType::Bool,
            T::Float16 => ElementType::F16,
            T::Float64 => ElementType::F64,
            T::Uint32 => ElementType::U32,
            T::Uint64 => ElementType::U64,
            T::Complex64 => ElementType::Complex64,
            T::Complex128 => ElementType::Complex128,
            T::Bfloat16 => ElementType::BF16,
            other => ElementType::Other(other.to_string()),
        }
    }

    /// The ONNX `TensorProto.DataType` number (e.g. 1 for `FLOAT`, 7 for `INT64`), or `None`
    /// for [`ElementType::Other`]. koala-graph turns it into its `DataType` with `try_from`.
    pub fn onnx_data_type(&self) -> Option<i32> {
        Some(match self {
            ElementType::F32 => 1,
            ElementType::U8 => 2,
            ElementType::I8 => 3,
            ElementType::U16 => 4,
            ElementType::I16 => 5,
            ElementType::I32 => 6,
            ElementType::I64 => 7,
            ElementType::String => 8,
            ElementType::Bool => 9,
            ElementType::F16 => 10,
            ElementType::F64 => 11,
            ElementType::U32 => 12,
            ElementType::U64 => 13,
            ElementType::Complex64 => 14,
            ElementType::Complex128 => 15,
            ElementType::BF16 => 16,
            ElementType::Other(_) => return None,
        })
    }

    /// Whether koala's buffers can hold this type (`f32`, `f64`, `i64`, `u8`): the types its
    /// training graphs use for weights, images (float, or raw 0–255 bytes for models that
    /// normalise inside), token ids and labels.
    pub fn is_buffer_type(&self) -> bool {
        self.onnx().is_some()
    }

    /// The ONNX C enum, for the types koala buffers can hold.
    pub(crate) fn onnx(&self) -> Option<OnnxType> {
        match self {
            ElementType::F32 => Some(OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
            ElementType::F64 => Some(OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE),
            ElementType::I64 => Some(OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64),
            ElementType::U8 => Some(OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8),
            _ => None,
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ElementType::F32 => "f32",
            ElementType::U8 => "u8",
            ElementType::I8 => "i8",
            ElementType::U16 => "u16",
            ElementType::I16 => "i16",
            ElementType::I32 => "i32",
            ElementType::I64 => "i64",
            ElementType::String => "string",
            ElementType::Bool => "bool",
            ElementType::F16 => "f16",
            ElementType::F64 => "f64",
            ElementType::U32 => "u32",
            ElementType::U64 => "u64",
            ElementType::Complex64 => "complex64",
            ElementType::Complex128 => "complex128",
            ElementType::BF16 => "bf16",
            ElementType::Other(name) => name,
        };
        f.write_str(name)
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
    /// `u8` data (raw image bytes for models with a uint8 input).
    U8 {
        /// Elements, row-major.
        data: &'a [u8],
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
    /// `u8` data.
    U8 {
        /// Elements, row-major.
        data: &'a mut [u8],
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

view_constructors!(f32, F32, f32; f64, F64, f64; i64, I64, i64; u8, U8, u8);

/// Owned tensor data.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `u8` elements.
    U8(Vec<u8>),
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
            TensorData::U8(_) => ElementType::U8,
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

    /// The `u8` elements, or `None` for another type.
    pub fn as_u8(&self) -> Option<&[u8]> {
        match &self.data {
            TensorData::U8(v) => Some(v),
            _ => None,
        }
    }
}
