//! `GradCtx`: the node-emitting toolbox every gradient rule works with.
//!
//! Rules never build protobufs by hand; they call these helpers, which pick
//! the opset-correct form of each op (e.g. ReduceSum takes `axes` as an input
//! from opset 13 on, an attribute before), give every new value a unique,
//! readable name, and record shape facts for the values they create so later
//! rules can ask for them.

use crate::attrs::{a_int, a_ints};
use crate::facts::{Facts, ValueFact};
use crate::proto::{AttributeProto, DataType, NodeProto, TensorProto};
use crate::tensor;
use anyhow::{anyhow, Result};

/// State shared by all rules while one backward pass is generated.
pub struct GradCtx<'f> {
    facts: &'f mut Facts,
    /// Nodes emitted so far, in execution order.
    pub nodes: Vec<NodeProto>,
    /// Constant tensors emitted so far (become initializers).
    pub initializers: Vec<TensorProto>,
    opset: i64,
    counter: usize,
    scope: String,
}

impl<'f> GradCtx<'f> {
    /// A context for a graph whose default-domain opset is `opset`.
    pub fn new(facts: &'f mut Facts, opset: i64) -> Self {
        GradCtx {
            facts,
            nodes: Vec::new(),
            initializers: Vec::new(),
            opset,
            counter: 0,
            scope: "grad".into(),
        }
    }

    /// The model's default-domain opset version.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Sets the name prefix for values created next (the forward node's name),
    /// so generated names say which node's gradient they belong to.
    pub fn set_scope(&mut self, scope: &str) {
        let clean: String = scope
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.scope = if clean.is_empty() {
            "grad".into()
        } else {
            clean
        };
    }

    /// A new unique value name.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("koala_grad/{}/{}_{}", self.scope, hint, self.counter)
    }

    /// The shape of a value (error naming it when unknown).
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.fact(name).map(|f| f.shape.clone())
    }

    /// The element type of a value.
    pub fn dtype(&self, name: &str) -> Result<DataType> {
        self.fact(name).map(|f| f.dtype)
    }

    /// The values of a small integer tensor (constant or computed from shapes).
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.facts.get(name).and_then(|f| f.ints.clone())
    }

    /// The values of a small float tensor (a constant, or Resize's computed
    /// `scales`/`roi`, which the probe fetches).
    pub fn floats(&self, name: &str) -> Option<Vec<f64>> {
        self.facts.floats(name).map(|v| v.to_vec())
    }

    fn fact(&self, name: &str) -> Result<&ValueFact> {
        self.facts.get(name).ok_or_else(|| {
            anyhow!("no shape is known for value '{name}' (internal: probe missed it)")
        })
    }

    /// Records the shape and type of a value created by a rule.
    pub fn set_fact(&mut self, name: &str, dtype: DataType, shape: Vec<usize>) {
        self.facts.insert(
            name,
            ValueFact {
                dtype,
                shape,
                ints: None,
            },
        );
    }

    /// Emits a node with explicit output names.
    pub fn emit_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        let name = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Emits a single-output node and returns its output name.
    pub fn emit(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.emit_into(op, inputs, &[&out], attrs);
        out
    }

    /// Emits a node with `n` outputs.
    pub fn emit_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n).map(|_| self.fresh(&op.to_lowercase())).collect();
        let refs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
        self.emit_into(op, inputs, &refs, attrs);
        outs
    }

    /// Like [`emit`](Self::emit), recording the output's type and shape.
    pub fn emit_shaped(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        dtype: DataType,
        shape: Vec<usize>,
    ) -> String {
        let out = self.emit(op, inputs, attrs);
        self.set_fact(&out, dtype, shape);
        out
    }

    /// A 1-D int64 constant.
    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const");
        self.initializers
            .push(tensor::from_i64(&name, &[values.len() as i64], values));
        self.facts.insert(
            &name,
            ValueFact {
                dtype: DataType::Int64,
                shape: vec![values.len()],
                ints: Some(values.to_vec()),
            },
        );
        name
    }

    /// A float constant with the element type of `like` (f32 or f64).
    pub fn const_like(&mut self, values: &[f64], dims: &[usize], like: &str) -> Result<String> {
        let dt = self.dtype(like)?;
        self.const_of(values, dims, dt)
    }

    /// A float constant of the given element type.
    pub fn const_of(&mut self, values: &[f64], dims: &[usize], dt: DataType) -> Result<String> {
        let name = self.fresh("const");
        let idims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let t = match dt {
            DataType::Double => tensor::from_f64(&name, &idims, values),
            DataType::Float => tensor::from_f32(
                &name,
                &idims,
                &values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            ),
            other => {
                return Err(anyhow!(
                    "gradients of {other:?} tensors are not supported (float32/float64 only)"
                ))
            }
        };
        self.initializers.push(t);
        self.set_fact(&name, dt, dims.to_vec());
        Ok(name)
    }

    /// A scalar (0-d) constant with the element type of `like`.
    pub fn scalar_like(&mut self, value: f64, like: &str) -> Result<String> {
        self.const_like(&[value], &[], like)
    }

    /// ReduceSum over `axes` (opset-correct form). Empty `axes` returns `x`.
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> Result<String> {
        if axes.is_empty() {
            return Ok(x.to_string());
        }
        let shape = self.shape(x)?;
        let dt = self.dtype(x)?;
        let rank = shape.len() as i64;
        let norm: Vec<usize> = axes
            .iter()
            .map(|&a| {
                if a < 0 {
                    (a + rank) as usize
                } else {
                    a as usize
                }
            })
            .collect();
        let out_shape: Vec<usize> = shape
            .iter()
            .enumerate()
            .filter_map(|(i, &d)| {
                if norm.contains(&i) {
                    keepdims.then_some(1)
                } else {
                    Some(d)
                }
            })
            .collect();
        let keep = a_int("keepdims", keepdims as i64);
        let out = if self.opset >= 13 {
            let ax = self.const_i64(axes);
            self.emit("ReduceSum", &[x, &ax], vec![keep])
        } else {
            self.emit("ReduceSum", &[x], vec![keep, a_ints("axes", axes)])
        };
        self.set_fact(&out, dt, out_shape);
        Ok(out)
    }

    /// Reshape to a static shape.
    pub fn reshape(&mut self, x: &str, shape: &[usize]) -> Result<String> {
        if self.shape(x)? == shape {
            return Ok(x.to_string());
        }
        let dt = self.dtype(x)?;
        let s = self.const_i64(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        Ok(self.emit_shaped("Reshape", &[x, &s], vec![], dt, shape.to_vec()))
    }

    /// Transpose with a permutation (records the permuted shape).
    pub fn transpose(&mut self, x: &str, perm: &[usize]) -> Result<String> {
        let shape = self.shape(x)?;
        let dt = self.dtype(x)?;
        let out_shape = perm.iter().map(|&p| shape[p]).collect();
        let p: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        Ok(self.emit_shaped("Transpose", &[x], vec![a_ints("perm", &p)], dt, out_shape))
    }

    /// Expand `x` (broadcastable) to `shape`.
    pub fn expand(&mut self, x: &str, shape: &[usize]) -> Result<String> {
        if self.shape(x)? == shape {
            return Ok(x.to_string());
        }
        let dt = self.dtype(x)?;
        let s = self.const_i64(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        Ok(self.emit_shaped("Expand", &[x, &s], vec![], dt, shape.to_vec()))
    }

    /// Sums a broadcast gradient back to the shape of the operand it came
    /// from (numpy broadcasting rules), then reshapes to that exact shape.
    pub fn unbroadcast(&mut self, grad: &str, target: &[usize]) -> Result<String> {
        let gshape = self.shape(grad)?;
        if gshape == target {
            return Ok(grad.to_string());
        }
        let lead = gshape.len().saturating_sub(target.len());
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, &t) in target.iter().enumerate() {
            let g = gshape[lead + i];
            if t == 1 && g != 1 {
                axes.push((lead + i) as i64);
            }
        }
        let summed = self.reduce_sum(grad, &axes, true)?;
        self.reshape(&summed, target)
    }

    /// Element-wise binary op between two values of the same dtype; the
    /// output shape is the broadcast of both.
    pub fn binary(&mut self, op: &str, a: &str, b: &str) -> Result<String> {
        let sa = self.shape(a)?;
        let sb = self.shape(b)?;
        let dt = self.dtype(a)?;
        let shape = broadcast_shape(&sa, &sb)
            .ok_or_else(|| anyhow!("cannot broadcast {sa:?} with {sb:?} for {op}"))?;
        Ok(self.emit_shaped(op, &[a, b], vec![], dt, shape))
    }

    /// `x · float(cond)`: passes `x` where `cond` holds, zero elsewhere.
    /// (Cast + Mul rather than Where: ORT's Where kernel is several times
    /// slower than its vectorised Mul on large activations.)
    pub fn mask(&mut self, cond: &str, x: &str) -> Result<String> {
        let cshape = self.shape(cond)?;
        let dt = self.dtype(x)?;
        let m = self.emit_shaped("Cast", &[cond], vec![a_int("to", dt as i64)], dt, cshape);
        self.binary("Mul", x, &m)
    }

    /// A zero tensor shaped and typed like `like`.
    pub fn zeros_like(&mut self, like: &str) -> Result<String> {
        let shape = self.shape(like)?;
        let dt = self.dtype(like)?;
        let s = self.const_i64(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        let value = if dt == DataType::Double {
            tensor::from_f64("value", &[1], &[0.0])
        } else {
            tensor::from_f32("value", &[1], &[0.0])
        };
        Ok(self.emit_shaped(
            "ConstantOfShape",
            &[&s],
            vec![crate::attrs::a_tensor("value", value)],
            dt,
            shape,
        ))
    }

    /// Unsqueeze (opset-correct form).
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> Result<String> {
        let mut shape = self.shape(x)?;
        let dt = self.dtype(x)?;
        let out_rank = (shape.len() + axes.len()) as i64;
        let mut norm: Vec<usize> = axes
            .iter()
            .map(|&a| {
                if a < 0 {
                    (a + out_rank) as usize
                } else {
                    a as usize
                }
            })
            .collect();
        norm.sort();
        for a in norm {
            shape.insert(a, 1);
        }
        let out = if self.opset >= 13 {
            let ax = self.const_i64(axes);
            self.emit("Unsqueeze", &[x, &ax], vec![])
        } else {
            self.emit("Unsqueeze", &[x], vec![a_ints("axes", axes)])
        };
        self.set_fact(&out, dt, shape);
        Ok(out)
    }
}

/// numpy-style broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Normalises a possibly negative axis against a rank.
pub fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64) as usize
    } else {
        axis as usize
    }
}
