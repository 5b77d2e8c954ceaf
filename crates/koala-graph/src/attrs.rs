//! Reading and building node attributes.

use crate::proto::{AttributeProto, AttributeType, NodeProto, TensorProto};

/// Looks up an attribute by name.
pub fn get<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// An INT attribute, or `default`.
pub fn int(node: &NodeProto, name: &str, default: i64) -> i64 {
    get(node, name).map(|a| a.i).unwrap_or(default)
}

/// A FLOAT attribute, or `default`.
pub fn float(node: &NodeProto, name: &str, default: f32) -> f32 {
    get(node, name).map(|a| a.f).unwrap_or(default)
}

/// An INTS attribute, if present.
pub fn ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    get(node, name).map(|a| a.ints.clone())
}

/// A STRING attribute, or `default`.
pub fn string(node: &NodeProto, name: &str, default: &str) -> String {
    get(node, name)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_else(|| default.to_string())
}

/// Builds an INT attribute.
pub fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// Builds a FLOAT attribute.
pub fn a_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

/// Builds an INTS attribute.
pub fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// Builds a FLOATS attribute.
pub fn a_floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats: v.to_vec(),
        ..Default::default()
    }
}

/// Builds a STRING attribute.
pub fn a_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Builds a TENSOR attribute.
pub fn a_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}
