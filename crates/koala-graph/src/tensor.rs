//! Reading and writing tensor payloads of `TensorProto`s.
//!
//! ONNX stores numbers either in `raw_data` (little-endian bytes) or in the
//! typed repeated fields; exporters use both, so every reader here accepts
//! both and every writer uses `raw_data` (compact, and what ORT prefers).

use crate::proto::{DataType, TensorProto};
use anyhow::{bail, Result};

/// Number of elements described by `dims` (1 for a scalar). Saturates
/// instead of overflowing, so absurd dims from a corrupt file compare unequal
/// to any real payload size (an error) rather than panicking.
pub fn numel(dims: &[i64]) -> usize {
    dims.iter()
        .fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
}

/// The element type of a tensor, or an error naming it.
pub fn data_type(t: &TensorProto) -> Result<DataType> {
    DataType::try_from(t.data_type)
        .map_err(|_| anyhow::anyhow!("tensor '{}' has unknown data type {}", t.name, t.data_type))
}

/// True when the tensor's data lives outside the model file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == crate::proto::DataLocation::External as i32
}

fn check_raw_len(t: &TensorProto, elem: usize) -> Result<()> {
    let want = numel(&t.dims).saturating_mul(elem);
    if t.raw_data.len() != want {
        bail!(
            "tensor '{}' has {} bytes of raw data but its shape {:?} needs {} bytes; the file is corrupt or truncated",
            t.name,
            t.raw_data.len(),
            t.dims,
            want
        );
    }
    Ok(())
}

/// Decodes a float tensor (f32, f64 or f16 are converted to f32).
pub fn to_f32(t: &TensorProto) -> Result<Vec<f32>> {
    if is_external(t) {
        bail!(
            "tensor '{}' still refers to external data; load the model with its data files",
            t.name
        );
    }
    let n = numel(&t.dims);
    let v: Vec<f32> = match data_type(t)? {
        DataType::Float => {
            if !t.raw_data.is_empty() || t.float_data.is_empty() && n > 0 {
                check_raw_len(t, 4)?;
                t.raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            } else {
                t.float_data.clone()
            }
        }
        DataType::Double => {
            if !t.raw_data.is_empty() || t.double_data.is_empty() && n > 0 {
                check_raw_len(t, 8)?;
                t.raw_data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect()
            } else {
                t.double_data.iter().map(|&x| x as f32).collect()
            }
        }
        DataType::Float16 => {
            let bits: Vec<u16> = if !t.raw_data.is_empty() {
                check_raw_len(t, 2)?;
                t.raw_data
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            } else {
                t.int32_data.iter().map(|&x| x as u16).collect()
            };
            bits.into_iter().map(f16_to_f32).collect()
        }
        other => bail!(
            "tensor '{}' has type {:?}, expected a float type",
            t.name,
            other
        ),
    };
    if v.len() != n {
        bail!(
            "tensor '{}' holds {} values but its shape {:?} needs {}",
            t.name,
            v.len(),
            t.dims,
            n
        );
    }
    Ok(v)
}

/// Decodes an integer tensor (int64, int32, uint8, int8, bool) to i64.
pub fn to_i64(t: &TensorProto) -> Result<Vec<i64>> {
    if is_external(t) {
        bail!("tensor '{}' still refers to external data", t.name);
    }
    let n = numel(&t.dims);
    let raw = !t.raw_data.is_empty();
    let v: Vec<i64> = match data_type(t)? {
        DataType::Int64 if raw => {
            check_raw_len(t, 8)?;
            t.raw_data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect()
        }
        DataType::Int64 => t.int64_data.clone(),
        DataType::Int32 if raw => {
            check_raw_len(t, 4)?;
            t.raw_data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect()
        }
        DataType::Int32
        | DataType::Int16
        | DataType::Int8
        | DataType::Uint8
        | DataType::Uint16
        | DataType::Bool
            if !raw =>
        {
            t.int32_data.iter().map(|&x| x as i64).collect()
        }
        DataType::Uint8 | DataType::Bool => {
            check_raw_len(t, 1)?;
            t.raw_data.iter().map(|&x| x as i64).collect()
        }
        DataType::Int8 => {
            check_raw_len(t, 1)?;
            t.raw_data.iter().map(|&x| x as i8 as i64).collect()
        }
        DataType::Float | DataType::Double => to_f32(t)?.into_iter().map(|x| x as i64).collect(),
        other => bail!(
            "tensor '{}' has type {:?}, expected an integer type",
            t.name,
            other
        ),
    };
    if v.len() != n {
        bail!(
            "tensor '{}' holds {} values but its shape {:?} needs {}",
            t.name,
            v.len(),
            t.dims,
            n
        );
    }
    Ok(v)
}

/// IEEE half → single conversion (only needed for reading f16 weights).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: renormalise
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

fn with_raw(name: &str, dims: &[i64], dt: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: dt as i32,
        raw_data,
        ..Default::default()
    }
}

/// A float32 tensor with raw little-endian data.
pub fn from_f32(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    with_raw(
        name,
        dims,
        DataType::Float,
        data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// A float64 tensor with raw little-endian data.
pub fn from_f64(name: &str, dims: &[i64], data: &[f64]) -> TensorProto {
    with_raw(
        name,
        dims,
        DataType::Double,
        data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// An int64 tensor with raw little-endian data.
pub fn from_i64(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    with_raw(
        name,
        dims,
        DataType::Int64,
        data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// Frees a tensor's values (name, type and dims stay), for copies of a model that only
/// need its structure once another owner holds the values.
pub fn release_values(t: &mut TensorProto) {
    t.raw_data = Vec::new();
    t.float_data = Vec::new();
    t.double_data = Vec::new();
    t.int32_data = Vec::new();
    t.int64_data = Vec::new();
}

/// Writes f32 values into an existing tensor of the same element count,
/// keeping its name, dims and element type (f32, f64 or f16 weights stay in
/// their own type so an exported model keeps the user's precision).
pub fn overwrite_f32(t: &mut TensorProto, data: &[f32]) -> Result<()> {
    let n = numel(&t.dims);
    if n != data.len() {
        bail!(
            "cannot write {} values into tensor '{}' of shape {:?}",
            data.len(),
            t.name,
            t.dims
        );
    }
    let dt = data_type(t)?;
    t.float_data.clear();
    t.double_data.clear();
    t.int32_data.clear();
    t.raw_data = match dt {
        DataType::Float => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DataType::Double => data
            .iter()
            .flat_map(|&x| (x as f64).to_le_bytes())
            .collect(),
        other => bail!(
            "tensor '{}' has type {:?}; only float32/float64 weights can be updated",
            t.name,
            other
        ),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
    }

    #[test]
    fn raw_and_typed_payloads_agree() {
        let t = from_f32("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(to_f32(&t).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        let typed = TensorProto {
            dims: vec![2],
            data_type: DataType::Float as i32,
            float_data: vec![5.0, 6.0],
            ..Default::default()
        };
        assert_eq!(to_f32(&typed).unwrap(), vec![5.0, 6.0]);
        let i = from_i64("i", &[3], &[-1, 0, 7]);
        assert_eq!(to_i64(&i).unwrap(), vec![-1, 0, 7]);
    }

    #[test]
    fn truncated_raw_data_is_an_error_naming_the_tensor() {
        let mut t = from_f32("w", &[4], &[1.0; 4]);
        t.raw_data.truncate(10);
        let e = to_f32(&t).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("10 bytes"), "{e}");
    }
}
