//! Loading, validating and saving ONNX model files.
//!
//! Loading resolves external data (tensors stored next to the model file) so
//! the rest of koala sees every weight in memory, and it validates the graph
//! structure enough that a corrupt or truncated file gives one clear error
//! naming the file instead of a panic or a confusing failure later.

use crate::proto::{GraphProto, ModelProto, NodeProto, TensorProto};
use crate::tensor;
use anyhow::{bail, Context, Result};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A loaded model plus where it came from (for messages and external data).
#[derive(Clone, Debug)]
pub struct Model {
    /// The decoded protobuf, with external data already loaded into `raw_data`.
    pub proto: ModelProto,
    /// The file it was read from, if any (used in error messages).
    pub source: Option<PathBuf>,
}

/// Is `node` in ONNX's default operator domain (`""` or `"ai.onnx"`)?
pub fn is_default_domain(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

/// A human-readable label for a node: index, name and op, as used in every
/// error message that concerns a node.
pub fn node_label(index: usize, node: &NodeProto) -> String {
    let dom = if is_default_domain(node) {
        String::new()
    } else {
        format!("{}::", node.domain)
    };
    if node.name.is_empty() {
        format!("node #{index} ({dom}{})", node.op_type)
    } else {
        format!("node #{index} '{}' ({dom}{})", node.name, node.op_type)
    }
}

impl Model {
    /// Reads an ONNX file; external data files are resolved relative to it.
    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read model file '{}': check the path and permissions",
                path.display()
            )
        })?;
        let what = format!("model file '{}'", path.display());
        let mut proto = decode(&bytes, &what)?;
        let base = path.parent().unwrap_or(Path::new("."));
        load_external_data(&mut proto, base, &what)?;
        validate(&proto, &what)?;
        Ok(Model {
            proto,
            source: Some(path.to_path_buf()),
        })
    }

    /// Decodes a model held in memory (it must not use external data).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        let what = "in-memory model".to_string();
        let proto = decode(bytes, &what)?;
        if let Some(t) = all_initializers(&proto).find(|t| tensor::is_external(t)) {
            bail!("{what}: tensor '{}' uses external data, which needs the model's file path; use Model::load", t.name);
        }
        validate(&proto, &what)?;
        Ok(Model {
            proto,
            source: None,
        })
    }

    /// Wraps an already built protobuf after validating it.
    pub fn from_proto(proto: ModelProto) -> Result<Model> {
        validate(&proto, "model")?;
        Ok(Model {
            proto,
            source: None,
        })
    }

    /// A name for messages: the file path, or "model".
    pub fn display_name(&self) -> String {
        self.source
            .as_ref()
            .map(|p| format!("'{}'", p.display()))
            .unwrap_or_else(|| "model".into())
    }

    /// The main graph (validated to exist at load time).
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("validated at load")
    }

    /// Mutable main graph.
    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto.graph.as_mut().expect("validated at load")
    }

    /// The default-domain opset version (ai.onnx), e.g. 17.
    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(1)
    }

    /// A copy without the main graph's initializers for which `leave_out` is true, made
    /// without copying their data (for SmolLM2-135M a full `clone` is 0.5 GB). Everything
    /// else is cloned, subgraphs included.
    pub fn clone_without_initializers(&self, leave_out: impl Fn(&TensorProto) -> bool) -> Model {
        let g = self.graph();
        let graph = GraphProto {
            node: g.node.clone(),
            name: g.name.clone(),
            initializer: g
                .initializer
                .iter()
                .filter(|t| !leave_out(t))
                .cloned()
                .collect(),
            sparse_initializer: g.sparse_initializer.clone(),
            doc_string: g.doc_string.clone(),
            input: g.input.clone(),
            output: g.output.clone(),
            value_info: g.value_info.clone(),
            quantization_annotation: g.quantization_annotation.clone(),
            metadata_props: g.metadata_props.clone(),
        };
        let p = &self.proto;
        let proto = ModelProto {
            ir_version: p.ir_version,
            opset_import: p.opset_import.clone(),
            producer_name: p.producer_name.clone(),
            producer_version: p.producer_version.clone(),
            domain: p.domain.clone(),
            model_version: p.model_version,
            doc_string: p.doc_string.clone(),
            graph: Some(graph),
            metadata_props: p.metadata_props.clone(),
            training_info: p.training_info.clone(),
            functions: p.functions.clone(),
            configuration: p.configuration.clone(),
        };
        Model {
            proto,
            source: self.source.clone(),
        }
    }

    /// Serialises to protobuf bytes (all data inline).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }
}

fn decode(bytes: &[u8], what: &str) -> Result<ModelProto> {
    if bytes.is_empty() {
        bail!("{what} is empty (0 bytes); it is not an ONNX model");
    }
    ModelProto::decode(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{what} is not a valid ONNX protobuf ({e}); the file may be truncated or not an ONNX model ({} bytes read)",
            bytes.len()
        )
    })
}

fn all_initializers(p: &ModelProto) -> impl Iterator<Item = &TensorProto> {
    p.graph.iter().flat_map(|g| g.initializer.iter())
}

/// Replaces external-data references by the bytes they point to.
fn load_external_data(p: &mut ModelProto, base: &Path, what: &str) -> Result<()> {
    let Some(g) = p.graph.as_mut() else {
        return Ok(());
    };
    let constant_tensors = g
        .node
        .iter_mut()
        .filter(|n| n.op_type == "Constant")
        .flat_map(|n| n.attribute.iter_mut().filter_map(|a| a.t.as_mut()));
    for t in g.initializer.iter_mut().chain(constant_tensors) {
        if !tensor::is_external(t) {
            continue;
        }
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let loc = get("location").with_context(|| {
            format!(
                "{what}: tensor '{}' is external but has no location",
                t.name
            )
        })?;
        let offset: u64 = get("offset")
            .map(|s| s.parse())
            .transpose()
            .ok()
            .flatten()
            .unwrap_or(0);
        let length: Option<u64> = get("length").and_then(|s| s.parse().ok());
        let file = base.join(&loc);
        let data = read_range(&file, offset, length).with_context(|| {
            format!("{what}: cannot read external data of tensor '{}' from '{}'; keep the data file next to the model", t.name, file.display())
        })?;
        t.raw_data = data;
        t.external_data.clear();
        t.data_location = crate::proto::DataLocation::Default as i32;
    }
    Ok(())
}

fn read_range(file: &Path, offset: u64, length: Option<u64>) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    match length {
        Some(n) => {
            buf.resize(n as usize, 0);
            f.read_exact(&mut buf)?;
        }
        None => {
            f.read_to_end(&mut buf)?;
        }
    }
    Ok(buf)
}

/// Structural checks: a graph exists, every node input is defined before use
/// (graph input, initializer, or an earlier node's output), names are unique.
fn validate(p: &ModelProto, what: &str) -> Result<()> {
    let Some(g) = p.graph.as_ref() else {
        bail!("{what} has no graph; it is not a complete ONNX model (truncated file?)");
    };
    if g.node.is_empty() {
        bail!("{what} has a graph with no nodes; nothing to train (truncated file?)");
    }
    if g.output.is_empty() {
        bail!("{what} has no graph outputs");
    }
    // Rules pick each op's form by this version; without it every choice
    // would be a guess (and a file cut right before its trailing
    // opset_import field would otherwise decode as a complete model).
    if !p
        .opset_import
        .iter()
        .any(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        bail!("{what} declares no ai.onnx opset version (opset_import); the file is truncated or not a complete ONNX model");
    }
    let mut defined: HashSet<&str> = HashSet::new();
    defined.insert("");
    for i in &g.input {
        defined.insert(&i.name);
    }
    for t in &g.initializer {
        defined.insert(&t.name);
        if let Some(d) = t.dims.iter().find(|&&d| d < 0) {
            bail!(
                "{what}: initializer '{}' has a negative dimension {d} in its shape {:?}; the file is corrupt",
                t.name,
                t.dims
            );
        }
        let n = tensor::numel(&t.dims);
        if !tensor::is_external(t) && !t.raw_data.is_empty() {
            let dt = tensor::data_type(t)
                .with_context(|| format!("{what}: initializer '{}'", t.name))?;
            if let Some(sz) = elem_size(dt) {
                if t.raw_data.len() != n.saturating_mul(sz) {
                    bail!(
                        "{what}: initializer '{}' has {} bytes but shape {:?} needs {}; the file is corrupt or truncated",
                        t.name,
                        t.raw_data.len(),
                        t.dims,
                        n.saturating_mul(sz)
                    );
                }
            }
        }
    }
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type.is_empty() {
            bail!(
                "{what}: {} has no op_type; the file is corrupt",
                node_label(i, n)
            );
        }
        for inp in &n.input {
            if !defined.contains(inp.as_str()) {
                bail!(
                    "{what}: {} reads '{inp}', which no graph input, initializer or earlier node defines; the file is corrupt or its nodes are not in topological order",
                    node_label(i, n)
                );
            }
        }
        for o in &n.output {
            defined.insert(o);
        }
    }
    for o in &g.output {
        if !defined.contains(o.name.as_str()) {
            bail!(
                "{what}: graph output '{}' is not produced by any node",
                o.name
            );
        }
    }
    Ok(())
}

/// Bytes per element of fixed-size types (None for strings and sub-byte types).
/// Who reads and who writes each value of a graph, for rewrites that must know whether a
/// value has other readers (`fold.rs`, `transposed_matmul.rs`).
pub struct GraphIndex<'a> {
    /// Names of the graph outputs.
    pub outputs: HashSet<&'a str>,
    /// Value → number of node inputs that read it.
    pub readers: HashMap<&'a str, usize>,
    /// Value → index of the node that writes it.
    pub producer: HashMap<&'a str, usize>,
}

impl<'a> GraphIndex<'a> {
    /// Indexes `g`.
    pub fn of(g: &'a GraphProto) -> GraphIndex<'a> {
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for n in &g.node {
            for i in &n.input {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
        GraphIndex {
            outputs: g.output.iter().map(|o| o.name.as_str()).collect(),
            readers,
            producer: g
                .node
                .iter()
                .enumerate()
                .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
                .collect(),
        }
    }
}

pub fn elem_size(dt: crate::proto::DataType) -> Option<usize> {
    use crate::proto::DataType::*;
    Some(match dt {
        Float | Int32 | Uint32 => 4,
        Double | Int64 | Uint64 | Complex64 => 8,
        Float16 | Bfloat16 | Int16 | Uint16 => 2,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => 1,
        Complex128 => 16,
        _ => return None,
    })
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// fsync, then rename. A crash mid-write leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory '{}'", dir.display()))?;
    let fname = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{fname}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)
        .with_context(|| format!("cannot create '{}'", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write '{}' (disk full?)", tmp.display()))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move '{}' to '{}'", tmp.display(), path.display()))?;
    Ok(())
}
