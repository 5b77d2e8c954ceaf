//! Reading gradient reference cases: a directory with `case.json` and raw
//! little-endian binaries (the format of koala's PyTorch reference cases,
//! see tests/fixtures/reference/README.md).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One tensor file of a case.
#[derive(Clone, Debug)]
pub struct CaseTensor {
    /// Graph name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Data (float32 files) …
    pub f32: Option<Vec<f32>>,
    /// … or int64 files.
    pub i64: Option<Vec<i64>>,
}

/// Reference gradient of one weight.
#[derive(Clone, Debug)]
pub struct RefGrad {
    /// Initializer name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values (the f64 reference rounded to f32).
    pub values: Vec<f32>,
    /// Per-tensor tolerance (`recommended_rel_l2_tol`, 1e-3 when absent).
    pub tol: f64,
    /// Flagged as numerically zero in the reference.
    pub numerically_zero: bool,
}

/// A loaded case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The directory.
    pub dir: PathBuf,
    /// `loss.type`.
    pub loss_type: String,
    /// `loss.value` (float64 reference).
    pub loss: f64,
    /// Model inputs.
    pub inputs: Vec<CaseTensor>,
    /// Labels (first entry of `labels`).
    pub labels: CaseTensor,
    /// Reference gradients.
    pub grads: Vec<RefGrad>,
    /// `grads_summary.global_l2`.
    pub global_l2: f64,
    /// `tolerance_note`, if any.
    pub tolerance_note: Option<String>,
}

fn field<'a>(v: &'a Value, key: &str, file: &Path) -> Result<&'a Value> {
    v.get(key)
        .with_context(|| format!("{}: missing field '{key}'", file.display()))
}

fn shape_of(v: &Value, what: &str, file: &Path) -> Result<Vec<usize>> {
    field(v, "shape", file)?
        .as_array()
        .with_context(|| format!("{}: '{what}.shape' is not a list", file.display()))?
        .iter()
        .map(|d| {
            d.as_u64().map(|x| x as usize).with_context(|| {
                format!("{}: '{what}.shape' has a non-integer entry", file.display())
            })
        })
        .collect()
}

fn read_f32(path: &Path, n: usize) -> Result<Vec<f32>> {
    let b = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    if b.len() != 4 * n {
        bail!(
            "'{}' has {} bytes, expected {} (float32 × {n})",
            path.display(),
            b.len(),
            4 * n
        );
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

fn read_i64(path: &Path, n: usize) -> Result<Vec<i64>> {
    let b = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    if b.len() != 8 * n {
        bail!(
            "'{}' has {} bytes, expected {} (int64 × {n})",
            path.display(),
            b.len(),
            8 * n
        );
    }
    Ok(b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

fn tensor(dir: &Path, name: &str, v: &Value, file: &Path) -> Result<CaseTensor> {
    let shape = shape_of(v, name, file)?;
    let n = shape.iter().product();
    let rel = field(v, "file", file)?
        .as_str()
        .with_context(|| format!("{}: '{name}.file' is not a string", file.display()))?;
    let dtype = v
        .get("dtype")
        .and_then(|d| d.as_str())
        .unwrap_or(if rel.ends_with(".i64") {
            "int64"
        } else {
            "float32"
        });
    let path = dir.join(rel);
    let (f, i) = match dtype {
        "float32" => (Some(read_f32(&path, n)?), None),
        "int64" => (None, Some(read_i64(&path, n)?)),
        other => bail!(
            "{}: '{name}' has dtype '{other}'; only float32 and int64 are supported",
            file.display()
        ),
    };
    Ok(CaseTensor {
        name: name.into(),
        shape,
        f32: f,
        i64: i,
    })
}

impl Case {
    /// Loads `<dir>/case.json` and the binaries it names.
    pub fn load(dir: &Path) -> Result<Case> {
        let file = dir.join("case.json");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "cannot read '{}': is this a reference case directory?",
                file.display()
            )
        })?;
        let j: Value = serde_json::from_str(&text)
            .with_context(|| format!("'{}' is not valid JSON", file.display()))?;
        let loss = field(&j, "loss", &file)?;
        let loss_type = field(loss, "type", &file)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let loss_value = field(loss, "value", &file)?
            .as_f64()
            .with_context(|| format!("{}: 'loss.value' is not a number", file.display()))?;
        let inputs = field(&j, "inputs", &file)?
            .as_object()
            .with_context(|| format!("{}: 'inputs' is not an object", file.display()))?
            .iter()
            .map(|(k, v)| tensor(dir, k, v, &file))
            .collect::<Result<Vec<_>>>()?;
        let (lname, lval) = field(&j, "labels", &file)?
            .as_object()
            .and_then(|o| o.iter().next())
            .with_context(|| format!("{}: 'labels' is empty", file.display()))?;
        let labels = tensor(dir, lname, lval, &file)?;
        let mut grads = Vec::new();
        for (k, v) in field(&j, "grads", &file)?
            .as_object()
            .with_context(|| format!("{}: 'grads' is not an object", file.display()))?
        {
            let Some(rel) = v.get("file").and_then(|f| f.as_str()) else {
                continue;
            };
            let shape = shape_of(v, k, &file)?;
            let values = read_f32(&dir.join(rel), shape.iter().product())?;
            grads.push(RefGrad {
                name: k.clone(),
                shape,
                values,
                tol: v
                    .get("recommended_rel_l2_tol")
                    .and_then(|t| t.as_f64())
                    .unwrap_or(1e-3),
                numerically_zero: v
                    .get("reference_is_numerically_zero")
                    .and_then(|t| t.as_bool())
                    .unwrap_or(false),
            });
        }
        let global_l2 = j
            .pointer("/grads_summary/global_l2")
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| {
                grads
                    .iter()
                    .flat_map(|g| g.values.iter())
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
                    .sqrt()
            });
        Ok(Case {
            dir: dir.to_path_buf(),
            loss_type,
            loss: loss_value,
            inputs,
            labels,
            grads,
            global_l2,
            tolerance_note: j
                .get("tolerance_note")
                .and_then(|v| v.as_str())
                .map(String::from),
        })
    }
}
