//! Static facts (element type, shape, small integer values) about every value
//! of a graph once its dynamic dimensions are fixed.
//!
//! Gradient rules need exact shapes (to undo broadcasting, to reshape a
//! gradient back, to size a ConvTranspose). Rather than re-implementing ONNX
//! shape inference for every op, koala runs the forward graph once in ONNX
//! Runtime with every intermediate value exposed as an output (`probe`), on
//! zero inputs of the training batch size. The runtime that will execute the
//! training graph is then, by construction, the authority on the shapes.
//! Small integer tensors (shape arithmetic, Slice starts, Reshape targets)
//! keep their values, so attributes that arrive as computed inputs are known.

use crate::proto::DataType;
use std::collections::HashMap;

/// What is known about one value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueFact {
    /// Element type.
    pub dtype: DataType,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Values of small integer tensors (≤ [`MAX_KEPT_INTS`] elements).
    pub ints: Option<Vec<i64>>,
}

/// Integer tensors up to this many elements keep their values in the facts.
pub const MAX_KEPT_INTS: usize = 64;

/// Facts for all values of a graph, by value name.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    values: HashMap<String, ValueFact>,
    /// Values of small float tensors that rules read as parameters (Resize's
    /// `scales` and `roi`): constants, and values the probe computed.
    floats: HashMap<String, Vec<f64>>,
}

impl Facts {
    /// Records a fact (replacing an earlier one).
    pub fn insert(&mut self, name: &str, fact: ValueFact) {
        self.values.insert(name.to_string(), fact);
    }

    /// The fact for a value, if known.
    pub fn get(&self, name: &str) -> Option<&ValueFact> {
        self.values.get(name)
    }

    /// Records the values of a small float tensor.
    pub fn insert_floats(&mut self, name: &str, values: Vec<f64>) {
        self.floats.insert(name.to_string(), values);
    }

    /// The values of a small float tensor, if known.
    pub fn floats(&self, name: &str) -> Option<&[f64]> {
        self.floats.get(name).map(|v| v.as_slice())
    }

    /// Number of values with facts.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}
