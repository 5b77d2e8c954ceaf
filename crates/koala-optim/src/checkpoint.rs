//! Saving and loading optimizer state for exact resume.
//!
//! Two files: a safetensors file with every per-tensor state vector (key
//! `<tensor name>/<slot>`, f32, the tensor's shape) and a JSON file with the scalars, the
//! configuration (for provenance), a `format_version` and a hash of the safetensors file
//! that ties the pair together. Each file is written to a temporary name and renamed, the
//! safetensors file first, so a crash never leaves a half-written file under the real name
//! and a mismatched pair is detected on load.
//!
//! Loading goes into a state freshly created by `init` of the same optimizer: the fresh
//! state defines what must be in the files, everything is checked before anything is
//! overwritten, and f64 scalars round-trip exactly, so N steps in one go and k steps, save,
//! load, N − k steps give bitwise identical results.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::OptimizerConfig;
use crate::error::OptimError;
use crate::state::OptimizerState;

/// Version of the JSON scalar file layout; bump on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Where a state is saved: the vectors file and the scalars file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePaths {
    pub tensors: PathBuf,
    pub scalars: PathBuf,
}

impl StatePaths {
    /// `dir/optimizer_state.safetensors` and `dir/optimizer_state.json`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        StatePaths {
            tensors: dir.join("optimizer_state.safetensors"),
            scalars: dir.join("optimizer_state.json"),
        }
    }
}

/// An f64 that survives JSON even when not finite (a diverged run must still be savable):
/// finite values are numbers, others the strings "NaN", "inf", "-inf".
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Number(f64),
    Text(String),
}

impl Scalar {
    fn from_f64(x: f64) -> Self {
        if x.is_finite() {
            Scalar::Number(x)
        } else if x.is_nan() {
            Scalar::Text("NaN".into())
        } else if x > 0.0 {
            Scalar::Text("inf".into())
        } else {
            Scalar::Text("-inf".into())
        }
    }

    fn to_f64(&self) -> Option<f64> {
        match self {
            Scalar::Number(x) => Some(*x),
            Scalar::Text(t) => match t.as_str() {
                "NaN" => Some(f64::NAN),
                "inf" => Some(f64::INFINITY),
                "-inf" => Some(f64::NEG_INFINITY),
                _ => None,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalarsFile {
    format_version: u32,
    /// Optimizer (and KOALA++ path) that wrote the state, e.g. `koala-pp/fused`.
    kind: String,
    /// Configuration at save time; informational (a resumed run may change, e.g., lr).
    config: OptimizerConfig,
    /// File name of the vectors file and its FNV-1a 64 hash (hex).
    tensors_file: String,
    tensors_fnv1a64: String,
    last_step: Option<u64>,
    globals: BTreeMap<String, Scalar>,
    tensors: Vec<TensorScalars>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorScalars {
    name: String,
    shape: Vec<usize>,
    initialized: bool,
    scalars: BTreeMap<String, Scalar>,
}

impl OptimizerState {
    /// Writes the state to `paths` (each file atomically: temp file + rename).
    pub fn save(&self, paths: &StatePaths) -> Result<(), OptimError> {
        let tensor_bytes = self.serialize_vectors(&paths.tensors)?;
        write_atomic(&paths.tensors, &tensor_bytes)?;
        let file = ScalarsFile {
            format_version: FORMAT_VERSION,
            kind: self.layout.kind.to_string(),
            config: self.config.clone(),
            tensors_file: file_name(&paths.tensors),
            tensors_fnv1a64: format!("{:016x}", fnv1a64(&tensor_bytes)),
            last_step: self.last_step,
            globals: named(self.layout.globals, &self.globals),
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorScalars {
                    name: t.spec.name.clone(),
                    shape: t.spec.shape.clone(),
                    initialized: t.initialized,
                    scalars: named(self.layout.scalars, &t.scalars),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| OptimError::checkpoint(&paths.scalars, format!("cannot encode: {e}")))?;
        write_atomic(&paths.scalars, &json)
    }

    /// Replaces this state (freshly created by `init` of the same optimizer, for the same
    /// tensors) with the one saved at `paths`. On error the state is left unchanged.
    pub fn load(&mut self, paths: &StatePaths) -> Result<(), OptimError> {
        let file = read_scalars_file(&paths.scalars)?;
        let scalars = self.check_scalars(&file, &paths.scalars)?;
        let bytes = fs::read(&paths.tensors).map_err(|source| OptimError::Io {
            path: paths.tensors.clone(),
            source,
        })?;
        let hash = format!("{:016x}", fnv1a64(&bytes));
        if hash != file.tensors_fnv1a64 {
            return Err(OptimError::checkpoint(
                &paths.tensors,
                format!(
                    "content hash {hash} differs from `tensors_fnv1a64` {} recorded in {}; \
                     the two files come from different saves (was a save interrupted?)",
                    file.tensors_fnv1a64,
                    paths.scalars.display()
                ),
            ));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            OptimError::checkpoint(&paths.tensors, format!("not a safetensors file: {e}"))
        })?;
        self.check_vectors(&st, &paths.tensors)?;
        // Everything is validated: commit.
        for (ti, t) in self.tensors.iter_mut().enumerate() {
            for (slot, v) in self.layout.vectors.iter().zip(&mut t.vectors) {
                let view = st
                    .tensor(&vector_key(&t.spec.name, slot))
                    .expect("checked above");
                for (x, b) in v.iter_mut().zip(view.data().chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            t.scalars.copy_from_slice(&scalars.tensors[ti]);
            t.initialized = file.tensors[ti].initialized;
        }
        self.globals.copy_from_slice(&scalars.globals);
        self.last_step = file.last_step;
        Ok(())
    }

    fn serialize_vectors(&self, path: &Path) -> Result<Vec<u8>, OptimError> {
        let mut bytes: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for t in &self.tensors {
            for (slot, v) in self.layout.vectors.iter().zip(&t.vectors) {
                let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                bytes.push((vector_key(&t.spec.name, slot), data, t.spec.shape.clone()));
            }
        }
        let views = bytes
            .iter()
            .map(|(k, data, shape)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (k.as_str(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OptimError::checkpoint(path, format!("cannot encode: {e}")))?;
        // One metadata entry: safetensors serialises the map in hash order, so
        // a single key keeps the file byte-reproducible (two did not).
        let meta = HashMap::from([(
            "format".to_string(),
            format!("koala-optim-state; kind={}", self.layout.kind),
        )]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| OptimError::checkpoint(path, format!("cannot encode: {e}")))
    }

    /// Checks the scalar file against this state; returns the scalars in slot order.
    fn check_scalars(&self, file: &ScalarsFile, path: &Path) -> Result<LoadedScalars, OptimError> {
        if file.kind != self.layout.kind {
            return Err(OptimError::checkpoint(
                path,
                format!(
                    "the checkpoint was written by a `{}` optimizer (`kind`), but this state \
                     belongs to a `{}` optimizer; build the optimizer from the configuration \
                     that wrote the checkpoint",
                    file.kind, self.layout.kind
                ),
            ));
        }
        // Same layout, other filter: per-tensor and joint KOALA++ keep the same state but
        // read S differently, so resuming one as the other silently changes the run.
        if let (OptimizerConfig::KoalaPlusPlus(saved), OptimizerConfig::KoalaPlusPlus(now)) =
            (&file.config, &self.config)
        {
            if saved.innovation != now.innovation {
                return Err(OptimError::checkpoint(
                    path,
                    format!(
                        "the checkpoint was written by KOALA++ with {:?} innovation, but this \
                         optimizer uses {:?} innovation; resume with the innovation that wrote \
                         it (`innovation` in the checkpoint's config)",
                        saved.innovation, now.innovation
                    ),
                ));
            }
        }
        if file.tensors.len() != self.tensors.len() {
            return Err(OptimError::checkpoint(
                path,
                format!(
                    "`tensors` has {} entries, the model has {} tensors",
                    file.tensors.len(),
                    self.tensors.len()
                ),
            ));
        }
        let globals = pick(self.layout.globals, &file.globals, path, "globals")?;
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for (i, (t, f)) in self.tensors.iter().zip(&file.tensors).enumerate() {
            if f.name != t.spec.name || f.shape != t.spec.shape {
                return Err(OptimError::checkpoint(
                    path,
                    format!(
                        "`tensors[{i}]` is `{}` {:?}, expected `{}` {:?} (same tensors, same order)",
                        f.name, f.shape, t.spec.name, t.spec.shape
                    ),
                ));
            }
            let field = format!("tensors[{i}] (`{}`).scalars", t.spec.name);
            tensors.push(pick(self.layout.scalars, &f.scalars, path, &field)?);
        }
        Ok(LoadedScalars { globals, tensors })
    }

    fn check_vectors(&self, st: &SafeTensors, path: &Path) -> Result<(), OptimError> {
        for t in &self.tensors {
            for slot in self.layout.vectors {
                let key = vector_key(&t.spec.name, slot);
                let view = st.tensor(&key).map_err(|_| {
                    OptimError::checkpoint(path, format!("tensor `{key}` is missing"))
                })?;
                if view.dtype() != Dtype::F32 || view.shape() != t.spec.shape.as_slice() {
                    return Err(OptimError::checkpoint(
                        path,
                        format!(
                            "tensor `{key}` is {:?} {:?}, expected F32 {:?}",
                            view.dtype(),
                            view.shape(),
                            t.spec.shape
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

struct LoadedScalars {
    globals: Vec<f64>,
    tensors: Vec<Vec<f64>>,
}

fn vector_key(tensor: &str, slot: &str) -> String {
    format!("{tensor}/{slot}")
}

fn named(names: &[&str], values: &[f64]) -> BTreeMap<String, Scalar> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| (n.to_string(), Scalar::from_f64(*v)))
        .collect()
}

/// The values of `names` from `map`, in order; errors name the missing/bad field.
fn pick(
    names: &[&str],
    map: &BTreeMap<String, Scalar>,
    path: &Path,
    field: &str,
) -> Result<Vec<f64>, OptimError> {
    names
        .iter()
        .map(|n| {
            let s = map
                .get(*n)
                .ok_or_else(|| OptimError::checkpoint(path, format!("`{field}.{n}` is missing")))?;
            s.to_f64().ok_or_else(|| {
                OptimError::checkpoint(
                    path,
                    format!("`{field}.{n}` must be a number or \"NaN\"/\"inf\"/\"-inf\""),
                )
            })
        })
        .collect()
}

fn read_scalars_file(path: &Path) -> Result<ScalarsFile, OptimError> {
    let text = fs::read(path).map_err(|source| OptimError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| OptimError::checkpoint(path, format!("not valid JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(OptimError::checkpoint(
                path,
                format!("`format_version` is {v}, this build reads {FORMAT_VERSION}"),
            ))
        }
        None => {
            return Err(OptimError::checkpoint(
                path,
                "`format_version` is missing or not an integer",
            ))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| OptimError::checkpoint(path, format!("malformed state file: {e}")))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OptimError> {
    let io = |source| OptimError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_file_name(format!(".{}.tmp-{}", file_name(path), std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// FNV-1a, 64 bit: a cheap content fingerprint that links the two files of one save.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
