//! Parser for the reference test vectors (`koala-test-vectors/1`, see
//! `tests/fixtures/koala-vectors/README.md`).
//!
//! Public so that the crate's tests, and anyone with a directory of vectors in the same
//! format, can replay them. Every error names the file and the JSON field (e.g.
//! `steps[3].grads.W[2]`) so a broken or hand-edited file is easy to fix.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{KoalaMConfig, KoalaPPConfig, KoalaPPVariant, KoalaVConfig, OptimizerConfig};
use crate::state::TensorSpec;

/// The format tag this parser reads.
pub const FORMAT: &str = "koala-test-vectors/1";

/// A problem with a vectors file, naming the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{}: field `{field}`: {problem}", file.display())]
pub struct VectorError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
}

/// Which optimizer a case exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorAlgorithm {
    KoalaPP(KoalaPPVariant),
    KoalaV,
    KoalaM,
}

/// One reference trajectory.
#[derive(Clone, Debug)]
pub struct VectorCase {
    pub file: PathBuf,
    pub case_id: String,
    pub algorithm: VectorAlgorithm,
    /// The optimizer configuration matching `hyperparameters` (KOALA++: fused path).
    pub config: OptimizerConfig,
    pub tensors: Vec<TensorSpec>,
    pub initial_params: Vec<Vec<f64>>,
    pub steps: Vec<VectorStep>,
}

/// One step of a trajectory; per-tensor lists are in `tensors` order.
#[derive(Clone, Debug)]
pub struct VectorStep {
    pub k: u64,
    pub lr: f64,
    pub loss: f64,
    pub loss_var: f64,
    /// R used in this step (after the EMA update when online).
    pub r_used: f64,
    /// `None`: no gradient (the tensor must be skipped).
    pub grads: Vec<Option<Vec<f64>>>,
    /// Parameters at which the gradients were taken (after KOALA-M's predict).
    pub params_eval: Vec<Vec<f64>>,
    pub params_after: Vec<Vec<f64>>,
    pub skipped: Vec<bool>,
    pub expected: ExpectedState,
}

/// Optimizer state after a step, per algorithm.
#[derive(Clone, Debug)]
pub enum ExpectedState {
    /// Per tensor (v, H, S); `None` before the tensor's first non-skipped step.
    KoalaPP(Vec<Option<KoalaPPTensor>>),
    KoalaV {
        sigma_after_update: f64,
    },
    KoalaM {
        /// Row-major [P00, P01, P10, P11].
        p_after: [f64; 4],
        velocity_after: Vec<Vec<f64>>,
        wavg_after: Vec<Vec<f64>>,
        /// q_w right after this step's predict.
        qw: f64,
    },
}

/// KOALA++ per-tensor state.
#[derive(Clone, Debug)]
pub struct KoalaPPTensor {
    pub v: Vec<f64>,
    pub h: Vec<f64>,
    pub s: f64,
}

/// Parses every `*.json` file of `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<VectorCase>, VectorError> {
    let dir_error = |problem: String| VectorError {
        file: dir.to_path_buf(),
        field: "(directory)".into(),
        problem,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| dir_error(format!("cannot list: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| dir_error(format!("cannot list: {e}")))?
            .path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    files.iter().map(|f| load_case(f)).collect()
}

/// Parses one case file.
pub fn load_case(file: &Path) -> Result<VectorCase, VectorError> {
    let root_error = |problem: String| VectorError {
        file: file.to_path_buf(),
        field: "(file)".into(),
        problem,
    };
    let text = std::fs::read(file).map_err(|e| root_error(format!("cannot read: {e}")))?;
    let value: Value =
        serde_json::from_slice(&text).map_err(|e| root_error(format!("not valid JSON: {e}")))?;
    parse_case(file, &value)
}

/// Parses a case from an already decoded JSON value (`file` is used in errors).
pub fn parse_case(file: &Path, value: &Value) -> Result<VectorCase, VectorError> {
    let root = Node {
        value,
        path: String::new(),
        file,
    };
    let format = root.get("format")?.str()?;
    if format != FORMAT {
        return Err(root
            .get("format")?
            .error(format!("is `{format}`, expected `{FORMAT}`")));
    }
    let algorithm = parse_algorithm(&root)?;
    let tensors = root
        .get("tensors")?
        .array()?
        .iter()
        .map(|t| {
            let shape = t.get("shape")?.array()?;
            Ok(TensorSpec::new(
                t.get("name")?.str()?,
                shape
                    .iter()
                    .map(Node::usize)
                    .collect::<Result<Vec<_>, _>>()?,
            ))
        })
        .collect::<Result<Vec<_>, VectorError>>()?;
    let config = parse_config(&root, algorithm)?;
    let initial_params = per_tensor_vectors(&root.get("initial_params")?, &tensors)?;
    let steps_node = root.get("steps")?;
    let steps = steps_node
        .array()?
        .iter()
        .map(|s| parse_step(s, &tensors, algorithm))
        .collect::<Result<Vec<_>, _>>()?;
    let num_steps = root.get("num_steps")?.usize()?;
    if num_steps != steps.len() {
        return Err(steps_node.error(format!(
            "has {} entries but `num_steps` is {num_steps}",
            steps.len()
        )));
    }
    Ok(VectorCase {
        file: file.to_path_buf(),
        case_id: root.get("case_id")?.str()?.to_string(),
        algorithm,
        config,
        tensors,
        initial_params,
        steps,
    })
}

fn parse_algorithm(root: &Node) -> Result<VectorAlgorithm, VectorError> {
    let node = root.get("algorithm")?;
    match node.str()? {
        "KOALA++" => {
            let variant = root.get("variant")?;
            match variant.str()? {
                "symmetric" => Ok(VectorAlgorithm::KoalaPP(KoalaPPVariant::Symmetric)),
                "vanilla" => Ok(VectorAlgorithm::KoalaPP(KoalaPPVariant::Vanilla)),
                other => {
                    Err(variant.error(format!("is `{other}`, expected `symmetric` or `vanilla`")))
                }
            }
        }
        "KOALA-V" => Ok(VectorAlgorithm::KoalaV),
        "KOALA-M" => Ok(VectorAlgorithm::KoalaM),
        other => Err(node.error(format!(
            "is `{other}`, expected `KOALA++`, `KOALA-V` or `KOALA-M`"
        ))),
    }
}

fn parse_config(root: &Node, algorithm: VectorAlgorithm) -> Result<OptimizerConfig, VectorError> {
    let h = root.get("hyperparameters")?;
    let f = |key: &str| h.get(key)?.f64();
    let skip_eps = root.get("skip_eps")?.f64()?;
    let r = h.get("r")?.opt_f64()?;
    Ok(match algorithm {
        VectorAlgorithm::KoalaPP(variant) => OptimizerConfig::KoalaPlusPlus(KoalaPPConfig {
            sigma: f("sigma")?,
            q: f("q")?,
            r,
            alpha_r: f("alpha_r")?,
            r_init: f("r_init")?,
            weight_decay: f("weight_decay")?,
            lr: f("lr0")?,
            variant,
            skip_eps,
            ..KoalaPPConfig::default()
        }),
        VectorAlgorithm::KoalaV => OptimizerConfig::KoalaV(KoalaVConfig {
            sigma: f("sigma")?,
            q: f("q")?,
            r,
            alpha_r: f("alpha_r")?,
            r_init: f("r_init")?,
            weight_decay: f("weight_decay")?,
            lr: f("lr0")?,
            skip_eps,
        }),
        VectorAlgorithm::KoalaM => OptimizerConfig::KoalaM(KoalaMConfig {
            sw: f("sw")?,
            sc: f("sc")?,
            sv: f("sv")?,
            a: f("a")?,
            qw: f("qw")?,
            qv: f("qv")?,
            qw_ema_alpha: f("qw_ema_alpha")?,
            r,
            alpha_r: f("alpha_r")?,
            r_init: f("r_init")?,
            weight_decay: f("weight_decay")?,
            lr: f("lr0")?,
            skip_eps,
        }),
    })
}

fn parse_step(
    s: &Node,
    tensors: &[TensorSpec],
    algorithm: VectorAlgorithm,
) -> Result<VectorStep, VectorError> {
    let grads_node = s.get("grads")?;
    let grads = tensors
        .iter()
        .map(|t| {
            let g = grads_node.get(&t.name)?;
            if g.is_null() {
                Ok(None)
            } else {
                g.f64s_len(t.numel()).map(Some)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let skipped_node = s.get("skipped")?;
    let skipped = tensors
        .iter()
        .map(|t| skipped_node.get(&t.name)?.bool())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VectorStep {
        k: s.get("k")?.u64()?,
        lr: s.get("lr")?.f64()?,
        loss: s.get("loss")?.f64()?,
        loss_var: s.get("loss_var")?.f64()?,
        r_used: s.get("r_used")?.f64()?,
        grads,
        params_eval: per_tensor_vectors(&s.get("params_eval")?, tensors)?,
        params_after: per_tensor_vectors(&s.get("params_after")?, tensors)?,
        skipped,
        expected: parse_expected(s, tensors, algorithm)?,
    })
}

fn parse_expected(
    s: &Node,
    tensors: &[TensorSpec],
    algorithm: VectorAlgorithm,
) -> Result<ExpectedState, VectorError> {
    Ok(match algorithm {
        VectorAlgorithm::KoalaPP(_) => {
            let node = s.get("state_after")?;
            let states = tensors
                .iter()
                .map(|t| {
                    let st = node.get(&t.name)?;
                    if no_state_yet(&st)? {
                        return Ok(None);
                    }
                    Ok(Some(KoalaPPTensor {
                        v: st.get("v")?.f64s_len(t.numel())?,
                        h: st.get("H")?.f64s_len(t.numel())?,
                        s: st.get("S")?.f64()?,
                    }))
                })
                .collect::<Result<Vec<_>, VectorError>>()?;
            ExpectedState::KoalaPP(states)
        }
        VectorAlgorithm::KoalaV => ExpectedState::KoalaV {
            sigma_after_update: s.get("sigma_after_update")?.f64()?,
        },
        VectorAlgorithm::KoalaM => {
            let p = s.get("P_after")?;
            let row = |i: usize| p.index(i)?.f64s_len(2);
            let (r0, r1) = (row(0)?, row(1)?);
            ExpectedState::KoalaM {
                p_after: [r0[0], r0[1], r1[0], r1[1]],
                velocity_after: per_tensor_vectors(&s.get("velocity_after")?, tensors)?,
                wavg_after: per_tensor_vectors(&s.get("wavg_after")?, tensors)?,
                qw: s.get("predict")?.get("qw")?.f64()?,
            }
        }
    })
}

/// Whether a KOALA++ `state_after[name]` entry says "no state yet". The README writes it as
/// `null`; the reference generator writes `{"v": null, "H": null, "S": null}` when a tensor's
/// first gradient is zero. Both mean the same, so both are accepted. A partly null entry is
/// neither form and is an error naming the null fields, since it would otherwise be reported
/// as a confusing "must be an array" on one of them.
fn no_state_yet(st: &Node) -> Result<bool, VectorError> {
    if st.is_null() {
        return Ok(true);
    }
    let Value::Object(map) = st.value else {
        return Ok(false);
    };
    const FIELDS: [&str; 3] = ["v", "H", "S"];
    let null: Vec<&str> = FIELDS
        .into_iter()
        .filter(|f| map.get(*f).is_some_and(Value::is_null))
        .collect();
    match null.len() {
        0 => Ok(false),
        3 => Ok(true),
        _ => Err(st.error(format!(
            "has null {} but not all of v, H, S: write the entry as null (or all three null) \
             before the tensor's first non-skipped step, or give every field a value",
            null.join(", ")
        ))),
    }
}

/// `{name: [numel floats]}` in tensor order.
fn per_tensor_vectors(node: &Node, tensors: &[TensorSpec]) -> Result<Vec<Vec<f64>>, VectorError> {
    tensors
        .iter()
        .map(|t| node.get(&t.name)?.f64s_len(t.numel()))
        .collect()
}

/// A JSON value together with its path, for error messages.
struct Node<'a> {
    value: &'a Value,
    path: String,
    file: &'a Path,
}

impl<'a> Node<'a> {
    fn error(&self, problem: impl Into<String>) -> VectorError {
        VectorError {
            file: self.file.to_path_buf(),
            field: if self.path.is_empty() {
                "(root)".into()
            } else {
                self.path.clone()
            },
            problem: problem.into(),
        }
    }

    fn child(&self, value: &'a Value, path: String) -> Node<'a> {
        Node {
            value,
            path,
            file: self.file,
        }
    }

    fn get(&self, key: &str) -> Result<Node<'a>, VectorError> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        match self.value {
            Value::Object(map) => match map.get(key) {
                Some(v) => Ok(self.child(v, path)),
                None => Err(self.child(&Value::Null, path).error("is missing")),
            },
            _ => Err(self.error("must be an object")),
        }
    }

    fn index(&self, i: usize) -> Result<Node<'a>, VectorError> {
        let path = format!("{}[{i}]", self.path);
        match self.value {
            Value::Array(items) => match items.get(i) {
                Some(v) => Ok(self.child(v, path)),
                None => Err(self.child(&Value::Null, path).error("is missing")),
            },
            _ => Err(self.error("must be an array")),
        }
    }

    fn array(&self) -> Result<Vec<Node<'a>>, VectorError> {
        match self.value {
            Value::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, v)| self.child(v, format!("{}[{i}]", self.path)))
                .collect()),
            _ => Err(self.error("must be an array")),
        }
    }

    fn is_null(&self) -> bool {
        self.value.is_null()
    }

    fn f64(&self) -> Result<f64, VectorError> {
        self.value
            .as_f64()
            .ok_or_else(|| self.error("must be a number"))
    }

    fn opt_f64(&self) -> Result<Option<f64>, VectorError> {
        if self.is_null() {
            Ok(None)
        } else {
            self.f64().map(Some)
        }
    }

    fn u64(&self) -> Result<u64, VectorError> {
        self.value
            .as_u64()
            .ok_or_else(|| self.error("must be a non-negative integer"))
    }

    fn usize(&self) -> Result<usize, VectorError> {
        usize::try_from(self.u64()?).map_err(|_| self.error("is too large"))
    }

    fn bool(&self) -> Result<bool, VectorError> {
        self.value
            .as_bool()
            .ok_or_else(|| self.error("must be true or false"))
    }

    fn str(&self) -> Result<&'a str, VectorError> {
        self.value
            .as_str()
            .ok_or_else(|| self.error("must be a string"))
    }

    /// An array of exactly `len` numbers.
    fn f64s_len(&self, len: usize) -> Result<Vec<f64>, VectorError> {
        let items = self.array()?;
        if items.len() != len {
            return Err(self.error(format!(
                "has {} numbers, expected {len} (numel of the tensor)",
                items.len()
            )));
        }
        items.iter().map(Node::f64).collect()
    }
}
