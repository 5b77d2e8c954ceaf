//! `koala import`: a pretrained Llama-family language model (a llama.cpp
//! GGUF file or a Hugging Face safetensors folder) → an ONNX causal LM that
//! koala fine-tunes, plus its tokenizer, without Python.
//!
//! Both readers produce a [`Checkpoint`]: a [`LlamaConfig`], f32 tensors
//! with HF names in the HF layout, and tokenizer files. `onnx_llama` emits
//! the forward as standard opset-17 ops; [`import`] writes the folder.
#![warn(missing_docs)]

pub mod gguf;
pub mod hf_folder;
pub mod llama_config;
pub mod onnx_llama;
pub mod permute;
pub mod tokenizer_gguf;

pub use llama_config::{Architecture, LlamaConfig};
pub use onnx_llama::GraphOptions;
pub use tokenizer_gguf::TokenizerFiles;

use anyhow::{bail, Context, Result};
use koala_graph::model::write_atomic;
use koala_graph::proto::ModelProto;
use prost::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One weight, f32, row-major.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// HF name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Dimensions (HF `[out, in]` for matrices).
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// A checkpoint as read from disk, before the graph is built.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Shape and constants.
    pub config: LlamaConfig,
    /// Weights by HF name.
    pub tensors: BTreeMap<String, Tensor>,
    /// How the weights were stored (ggml type or safetensors dtype → count).
    pub storage_types: BTreeMap<String, usize>,
    /// Tokenizer files to write next to the model.
    pub tokenizer: TokenizerFiles,
}

/// Reads `input`: a directory is an HF folder, anything else a GGUF file.
pub fn read_checkpoint(input: &Path) -> Result<Checkpoint> {
    if input.is_dir() {
        hf_folder::read(input)
    } else if let Some(folder) = file_of_a_folder(input) {
        bail!(
            "'{}' is one file of a Hugging Face model folder; pass the folder itself: koala import '{}' --output DIR",
            input.display(),
            folder.display()
        )
    } else if input.is_file() {
        gguf::read(input)
    } else {
        bail!(
            "'{}' does not exist; pass a .gguf file or a Hugging Face model folder (config.json + *.safetensors + tokenizer.json)",
            input.display()
        )
    }
}

/// The folder of `input` when it is a file of a Hugging Face model folder
/// (`config.json`, `*.safetensors`, `tokenizer.json`…) rather than a GGUF file: users
/// often pass the config or weights file where the folder is wanted.
fn file_of_a_folder(input: &Path) -> Option<PathBuf> {
    let name = input.file_name()?.to_str()?;
    let known = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors.index.json",
    ];
    let hf_file = known.contains(&name) || name.ends_with(".safetensors");
    (input.is_file() && hf_file).then(|| match input.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

/// Weights of at least this many bytes in total go to an external data file
/// (`model.onnx.data`): protobuf messages cannot exceed 2 GiB.
pub const EXTERNAL_DATA_THRESHOLD: u64 = 2 << 30;

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Replace the files of a non-empty output folder.
    pub force: bool,
    /// Total weight bytes from which the weights go to `model.onnx.data`.
    pub external_data_threshold: u64,
    /// Graph form.
    pub graph: GraphOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            force: false,
            external_data_threshold: EXTERNAL_DATA_THRESHOLD,
            graph: GraphOptions::default(),
        }
    }
}

/// What an import read and wrote.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// The model's shape.
    pub config: LlamaConfig,
    /// Storage types of the source weights (type → tensor count).
    pub storage_types: BTreeMap<String, usize>,
    /// Trainable parameters (weight values in the graph).
    pub parameters: usize,
    /// Files written, with their sizes in bytes.
    pub written: Vec<(PathBuf, u64)>,
    /// Seconds spent reading/dequantising, and building/writing.
    pub seconds_read: f64,
    /// Seconds spent building the graph and writing the files.
    pub seconds_write: f64,
}

impl ImportReport {
    /// The lines `koala import` prints.
    pub fn summary(&self, input: &Path) -> String {
        let c = &self.config;
        let types: Vec<String> = self
            .storage_types
            .iter()
            .map(|(t, n)| format!("{t} x{n}"))
            .collect();
        let mut s = format!(
            "read {}: {} ({} layers, hidden {}, {} heads / {} key-value heads of {}, MLP {}, vocab {}, {} head, RoPE theta {}, RMSNorm eps {:e}){}\n  weights stored as {}; {} parameters in {:.1} s\n",
            input.display(),
            c.architecture.model_type(),
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size,
            if c.tie_word_embeddings { "tied" } else { "separate" },
            c.rope_theta,
            c.rms_norm_eps,
            if c.attention_bias { ", Q/K/V biases" } else { "" },
            types.join(", "),
            self.parameters,
            self.seconds_read
        );
        for (p, n) in &self.written {
            s.push_str(&format!(
                "wrote {} ({:.1} MB)\n",
                p.display(),
                *n as f64 / 1e6
            ));
        }
        s
    }
}

/// Imports `input` into the folder `output`: `model.onnx` (+
/// `model.onnx.data` for large models), `tokenizer.json`,
/// `tokenizer_config.json`, `config.json`. Files are written to a temporary
/// folder beside `output` and renamed into place, so an interrupted import
/// leaves no half-written file; a non-empty `output` is refused unless
/// `force`; the input is never overwritten.
pub fn import(input: &Path, output: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    check_output(input, output, opts.force)?;
    let t0 = Instant::now();
    let ck = read_checkpoint(input)?;
    let seconds_read = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let Checkpoint {
        config,
        mut tensors,
        storage_types,
        tokenizer,
    } = ck;
    let source = format!("'{}'", input.display());
    onnx_llama::check_tensors(&config, &mut tensors, &source)?;
    let parameters = tensors.values().map(|t| t.data.len()).sum();
    let model = onnx_llama::build(&config, tensors, opts.graph);
    let staging = staging_dir(output)?;
    let result = write_files(&staging, model, &config, &tokenizer, opts)
        .and_then(|names| move_into_place(&staging, output, &names));
    let _ = std::fs::remove_dir_all(&staging);
    let written = result?;
    Ok(ImportReport {
        config,
        storage_types,
        parameters,
        written,
        seconds_read,
        seconds_write: t1.elapsed().as_secs_f64(),
    })
}

/// Refuses an output folder that holds files (without `force`) or that
/// holds the input.
fn check_output(input: &Path, output: &Path, force: bool) -> Result<()> {
    if output.is_file() {
        bail!(
            "--output '{}' is a file; pass a folder to write model.onnx and tokenizer.json into",
            output.display()
        );
    }
    if let (Ok(inp), Ok(out)) = (input.canonicalize(), output.canonicalize()) {
        if inp.starts_with(&out) {
            bail!(
                "--output '{}' holds the input '{}'; choose another folder (koala never overwrites its input)",
                output.display(),
                input.display()
            );
        }
    }
    let non_empty = std::fs::read_dir(output)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !force {
        bail!(
            "--output '{}' is not empty; choose a new folder, or pass --force to replace the files koala writes there",
            output.display()
        );
    }
    Ok(())
}

fn staging_dir(output: &Path) -> Result<PathBuf> {
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create folder '{}'", parent.display()))?;
    let name = output
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    let dir = parent.join(format!(".{name}.koala-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    Ok(dir)
}

/// Writes every file into `dir`; returns their names.
fn write_files(
    dir: &Path,
    model: ModelProto,
    config: &LlamaConfig,
    tok: &TokenizerFiles,
    opts: &ImportOptions,
) -> Result<Vec<String>> {
    let mut names = write_model(dir, model, opts.external_data_threshold)?;
    let mut text = |name: &str, body: &str| -> Result<()> {
        write_atomic(&dir.join(name), body.as_bytes())?;
        names.push(name.to_string());
        Ok(())
    };
    text("tokenizer.json", &tok.tokenizer_json)?;
    text("tokenizer_config.json", &tok.tokenizer_config_json)?;
    if let Some(t) = &tok.chat_template_jinja {
        text("chat_template.jinja", t)?;
    }
    text(
        "config.json",
        &serde_json::to_string_pretty(&config.to_hf_json())?,
    )?;
    Ok(names)
}

/// `model.onnx`, with the weights in `model.onnx.data` when they total at
/// least `threshold` bytes. Returns the file names written. Takes the model
/// by value so the weights are moved into the data file's buffer rather than
/// copied (peak memory twice the weights, not three times).
pub fn write_model(dir: &Path, mut model: ModelProto, threshold: u64) -> Result<Vec<String>> {
    let total: u64 = model
        .graph
        .iter()
        .flat_map(|g| g.initializer.iter())
        .map(|t| t.raw_data.len() as u64)
        .sum();
    let path = dir.join("model.onnx");
    if total < threshold {
        write_atomic(&path, &model.encode_to_vec())?;
        return Ok(vec!["model.onnx".into()]);
    }
    let data_name = "model.onnx.data";
    let initializers = model.graph.as_mut().map(|g| g.initializer.as_mut_slice());
    let data = koala_graph::export::externalize(initializers.unwrap_or_default(), data_name);
    write_atomic(&dir.join(data_name), &data)?;
    drop(data);
    write_atomic(&path, &model.encode_to_vec())?;
    Ok(vec![data_name.into(), "model.onnx".into()])
}

/// Renames each staged file into `output` (each rename is atomic; the data
/// file goes first so `model.onnx` never points at a missing one).
fn move_into_place(staging: &Path, output: &Path, names: &[String]) -> Result<Vec<(PathBuf, u64)>> {
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create the output folder '{}'", output.display()))?;
    let mut written = Vec::new();
    for name in names {
        let (from, to) = (staging.join(name), output.join(name));
        let size = std::fs::metadata(&from)?.len();
        std::fs::rename(&from, &to)
            .with_context(|| format!("cannot move '{}' to '{}'", from.display(), to.display()))?;
        written.push((to, size));
    }
    if !names.iter().any(|n| n == "model.onnx.data") {
        // A stale data file from an earlier, larger import would be unused;
        // remove it so the folder says what it holds.
        let _ = std::fs::remove_file(output.join("model.onnx.data"));
    }
    Ok(written)
}
