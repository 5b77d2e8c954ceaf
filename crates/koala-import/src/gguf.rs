//! Reading a GGUF file (llama.cpp's checkpoint format) into HF-named f32
//! tensors, a [`LlamaConfig`] and tokenizer files.
//!
//! Parsing and dequantisation are candle-core's (`quantized::gguf_file`,
//! `QTensor::dequantize`): it is maintained, has every block decoder koala
//! needs (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, plus Q5_0,
//! Q5_1, Q2_K, Q3_K), and bounds-checks the header against the file size. Its
//! errors name neither file nor tensor, so each is wrapped here; an unknown
//! tensor type is located by a small scan of the tensor-info table
//! ([`find_unsupported_type`]) so the message can name the tensor.
//!
//! Layout conventions (llama.cpp `gguf-py/gguf/constants.py`): a tensor's
//! `ne = [in, out]` (ne0 fastest) is the row-major HF `[out, in]` matrix;
//! `attn_q`/`attn_k` rows are permuted for llama-style files (see
//! `permute.rs`); a file without `output.weight` ties the head to
//! `token_embd.weight`.

use crate::llama_config::{Architecture, LlamaConfig};
use crate::permute::unpermute_rows;
use crate::tokenizer_gguf::{self, GgufTokenizerMeta};
use crate::{Checkpoint, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The ggml tensor types candle decodes, by type id, with llama.cpp's names.
const DECODED_TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (30, "BF16"),
];

/// llama.cpp's name of a ggml type (for messages and the import summary).
pub fn type_name(t: GgmlDType) -> &'static str {
    use GgmlDType::*;
    match t {
        F32 => "F32",
        F16 => "F16",
        BF16 => "BF16",
        Q4_0 => "Q4_0",
        Q4_1 => "Q4_1",
        Q5_0 => "Q5_0",
        Q5_1 => "Q5_1",
        Q8_0 => "Q8_0",
        Q8_1 => "Q8_1",
        Q2K => "Q2_K",
        Q3K => "Q3_K",
        Q4K => "Q4_K",
        Q5K => "Q5_K",
        Q6K => "Q6_K",
        Q8K => "Q8_K",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Reads `path` completely: config, dequantised tensors (HF names and
/// layout), tokenizer.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let file = path.display().to_string();
    let mut reader = BufReader::new(
        File::open(path).with_context(|| format!("cannot open '{file}': check the path"))?,
    );
    let content = match Content::read(&mut reader) {
        Ok(c) => c,
        Err(e) => return Err(header_error(path, &file, e)),
    };
    let meta = Metadata {
        map: &content.metadata,
        file: &file,
    };
    let arch_name = meta.string("general.architecture")?;
    let architecture = Architecture::parse(&arch_name, &format!("{file}: general.architecture"))?;
    reject_unsupported_variants(&meta, &content, &arch_name)?;
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .with_context(|| {
            format!(
                "{file}: no tensor 'token_embd.weight'; this GGUF is not a complete decoder model"
            )
        })?;
    let embd_dims = embd.shape.dims().to_vec();
    let config = config_from_metadata(&meta, &content, architecture, &arch_name, &embd_dims)?;
    config.validate(&file)?;

    let mut tensors = BTreeMap::new();
    let mut storage_types: BTreeMap<String, usize> = BTreeMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        let hf = hf_name(name, config.num_hidden_layers).with_context(|| {
            format!("{file}: tensor '{name}' is not part of a {arch_name} decoder koala knows (token_embd, output_norm, output, blk.N.attn_norm/attn_q/attn_k/attn_v/attn_output/ffn_norm/ffn_gate/ffn_up/ffn_down)")
        })?;
        *storage_types
            .entry(type_name(info.ggml_dtype).to_string())
            .or_default() += 1;
        let dims = info.shape.dims().to_vec();
        let values = content
            .tensor(&mut reader, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| {
                anyhow!(
                    "{file}: cannot read tensor '{name}' ({} {dims:?}): {e}; the file is truncated or corrupt",
                    type_name(info.ggml_dtype)
                )
            })?;
        let values = unpermute_if_needed(name, values, &dims, &config, &file)?;
        tensors.insert(
            hf.clone(),
            Tensor {
                name: hf,
                shape: dims,
                data: values,
            },
        );
    }
    let tok_meta = tokenizer_meta(&meta)?;
    let tokenizer = tokenizer_gguf::build(&tok_meta, config.vocab_size, &file)?;
    Ok(Checkpoint {
        config,
        tensors,
        storage_types,
        tokenizer,
    })
}

/// Q/K rows of llama-style files back to HF order (`permute.rs`).
fn unpermute_if_needed(
    name: &str,
    values: Vec<f32>,
    dims: &[usize],
    config: &LlamaConfig,
    file: &str,
) -> Result<Vec<f32>> {
    if !config.architecture.gguf_qk_permuted() {
        return Ok(values);
    }
    let heads = if name.ends_with(".attn_q.weight") || name.ends_with(".attn_q.bias") {
        config.num_attention_heads
    } else if name.ends_with(".attn_k.weight") || name.ends_with(".attn_k.bias") {
        config.num_key_value_heads
    } else {
        return Ok(values);
    };
    let rows = dims[0];
    let cols = dims.get(1).copied().unwrap_or(1);
    unpermute_rows(&values, rows, cols, heads).with_context(|| format!("{file}: tensor '{name}'"))
}

/// GGUF tensor name → HF name (None for names koala does not model).
pub fn hf_name(gguf: &str, layers: usize) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= layers {
        return None;
    }
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Variants whose forward differs from plain Llama: refuse them by name
/// rather than import a model that computes something else.
fn reject_unsupported_variants(meta: &Metadata, content: &Content, arch: &str) -> Result<()> {
    let file = meta.file;
    if meta
        .opt_usize(&format!("{arch}.expert_count"))?
        .unwrap_or(0)
        > 0
    {
        bail!("{file}: {arch}.expert_count is set: a mixture-of-experts model, which koala cannot import: it builds dense decoders only (Llama/SmolLM2/Qwen2/Mistral-style). Import the dense variant of the model family instead");
    }
    if let Some(v) = meta.map.get(&format!("{arch}.rope.scaling.type")) {
        let kind = v.to_string().map(|s| s.as_str()).unwrap_or("?");
        if kind != "none" {
            bail!("{file}: {arch}.rope.scaling.type is '{kind}'; koala imports only the default RoPE (no scaling), because a scaled RoPE changes every position's rotation and dropping it would silently make another model. Import a checkpoint without RoPE scaling (e.g. SmolLM2, Llama 2, Qwen2 up to its native context)");
        }
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        bail!("{file}: tensor 'rope_freqs.weight' holds Llama-3.1-style RoPE frequency factors, which koala does not apply (dropping them would silently make another model); only default-RoPE models can be imported, e.g. SmolLM2, Llama 2, Qwen2");
    }
    Ok(())
}

fn config_from_metadata(
    meta: &Metadata,
    content: &Content,
    architecture: Architecture,
    arch: &str,
    embd_dims: &[usize],
) -> Result<LlamaConfig> {
    let file = meta.file;
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta.usize(&key("embedding_length"))?;
    let heads = meta.usize(&key("attention.head_count"))?;
    let kv_heads = meta
        .opt_usize(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    let head_dim = match meta.opt_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None => hidden.checked_div(heads).unwrap_or(0),
    };
    if embd_dims.len() != 2 || embd_dims[1] != hidden {
        bail!("{file}: token_embd.weight has shape {embd_dims:?} (rows = vocabulary, columns = {arch}.embedding_length = {hidden}); the file is inconsistent");
    }
    let vocab_size = embd_dims[0];
    if let Some(v) = meta.opt_usize(&key("vocab_size"))? {
        if v != vocab_size {
            bail!("{file}: {arch}.vocab_size is {v} but token_embd.weight has {vocab_size} rows; the file is inconsistent");
        }
    }
    let attention_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
    Ok(LlamaConfig {
        architecture,
        vocab_size,
        hidden_size: hidden,
        num_hidden_layers: meta.usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        intermediate_size: meta.usize(&key("feed_forward_length"))?,
        rms_norm_eps: meta.f32(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        max_position_embeddings: meta.opt_usize(&key("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias,
        bos_token_id: meta.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_id: meta.opt_u32("tokenizer.ggml.eos_token_id")?,
    })
}

fn tokenizer_meta(meta: &Metadata) -> Result<GgufTokenizerMeta> {
    let strings = |k: &str| -> Result<Vec<String>> {
        match meta.map.get(k) {
            None => Ok(Vec::new()),
            Some(v) => v
                .to_vec()
                .and_then(|items| {
                    items
                        .iter()
                        .map(|x| x.to_string().cloned())
                        .collect::<candle_core::Result<Vec<String>>>()
                })
                .map_err(|_| anyhow!("{}: {k} is not an array of strings", meta.file)),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        bail!("{}: no tokenizer.ggml.tokens; the GGUF carries no tokenizer (import the model's Hugging Face folder with its tokenizer.json instead)", meta.file);
    }
    let token_types = match meta.map.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .to_vec()
            .map_err(|_| anyhow!("{}: tokenizer.ggml.token_type is not an array", meta.file))?
            .iter()
            .map(|x| {
                int_of(x).ok_or_else(|| {
                    anyhow!(
                        "{}: tokenizer.ggml.token_type holds a non-integer",
                        meta.file
                    )
                })
            })
            .collect::<Result<Vec<i64>>>()?,
    };
    Ok(GgufTokenizerMeta {
        model: meta
            .opt_string("tokenizer.ggml.model")?
            .unwrap_or_else(|| "gpt2".into()),
        pre: meta.opt_string("tokenizer.ggml.pre")?,
        tokens,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        bos_id: meta.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_id: meta.opt_u32("tokenizer.ggml.eos_token_id")?,
        unk_id: meta.opt_u32("tokenizer.ggml.unknown_token_id")?,
        pad_id: meta.opt_u32("tokenizer.ggml.padding_token_id")?,
        add_bos: matches!(
            meta.map.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        ),
        chat_template: meta.opt_string("tokenizer.chat_template")?,
    })
}

/// Typed access to the metadata with errors that name file and key.
struct Metadata<'a> {
    map: &'a HashMap<String, Value>,
    file: &'a str,
}

fn int_of(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

impl Metadata<'_> {
    fn missing(&self, key: &str) -> anyhow::Error {
        anyhow!(
            "{}: metadata key {key} is missing; the file is not a complete llama.cpp decoder model",
            self.file
        )
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => match int_of(v) {
                Some(i) if i >= 0 => Ok(Some(i as usize)),
                _ => bail!(
                    "{}: metadata key {key} is {v:?}, not a non-negative integer",
                    self.file
                ),
            },
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        Ok(self.opt_usize(key)?.map(|v| v as u32))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => bail!("{}: metadata key {key} is {v:?}, not a number", self.file),
        }
    }

    fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => bail!("{}: metadata key {key} is not a string", self.file),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }
}

/// Turns a header parse failure into a message that names the file and,
/// where possible, the field or tensor at fault.
fn header_error(path: &Path, file: &str, e: candle_core::Error) -> anyhow::Error {
    let msg = e.to_string();
    if msg.contains("unknown magic") {
        return anyhow!("'{file}' is not a GGUF file (it does not start with the bytes 'GGUF'); pass a llama.cpp .gguf file or a Hugging Face model folder");
    }
    if msg.contains("unknown dtype") {
        if let Ok(Some((tensor, id))) = find_unsupported_type(path) {
            return anyhow!("'{file}': tensor '{tensor}' is stored in ggml type {id}, which koala cannot dequantise (supported: {}); re-quantise the model with llama.cpp to one of these, or import its Hugging Face folder", supported_list());
        }
    }
    anyhow!("'{file}' is not a readable GGUF file: {msg}; the file is truncated or corrupt (download it again)")
}

fn supported_list() -> String {
    DECODED_TYPES
        .iter()
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Walks the header (GGUF v2/v3: u64 lengths) to the tensor-info table and
/// returns the first tensor whose type id candle does not decode.
pub fn find_unsupported_type(path: &Path) -> Result<Option<(String, u32)>> {
    let mut r = BufReader::new(File::open(path)?);
    let _magic = read_u32(&mut r)?;
    let version = read_u32(&mut r)?;
    if version < 2 {
        return Ok(None);
    }
    let n_tensors = read_u64(&mut r)?;
    let n_kv = read_u64(&mut r)?;
    for _ in 0..n_kv {
        skip_string(&mut r)?;
        let ty = read_u32(&mut r)?;
        skip_value(&mut r, ty)?;
    }
    for _ in 0..n_tensors {
        let name = read_string(&mut r)?;
        let n_dims = read_u32(&mut r)?;
        r.seek(SeekFrom::Current(8 * n_dims as i64))?;
        let ty = read_u32(&mut r)?;
        let _offset = read_u64(&mut r)?;
        if !DECODED_TYPES.iter().any(|(id, _)| *id == ty) {
            return Ok(Some((name, ty)));
        }
    }
    Ok(None)
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> Result<String> {
    let n = read_u64(r)?;
    if n > 1 << 20 {
        bail!("name too long");
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn skip_string(r: &mut (impl Read + Seek)) -> Result<()> {
    let n = read_u64(r)?;
    r.seek(SeekFrom::Current(i64::try_from(n)?))?;
    Ok(())
}

/// Bytes of one fixed-size GGUF metadata value (None: string or array).
fn fixed_size(ty: u32) -> Option<i64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Skips one metadata value of GGUF value type `ty`.
fn skip_value(r: &mut (impl Read + Seek), ty: u32) -> Result<()> {
    if let Some(n) = fixed_size(ty) {
        r.seek(SeekFrom::Current(n))?;
        return Ok(());
    }
    match ty {
        8 => skip_string(r),
        9 => {
            let elem = read_u32(r)?;
            let n = read_u64(r)?;
            if let Some(size) = fixed_size(elem) {
                r.seek(SeekFrom::Current(size * i64::try_from(n)?))?;
                return Ok(());
            }
            for _ in 0..n {
                skip_value(r, elem)?;
            }
            Ok(())
        }
        _ => bail!("unknown value type {ty}"),
    }
}
