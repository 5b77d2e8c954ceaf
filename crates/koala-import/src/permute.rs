//! Undoing llama.cpp's Q/K row permutation.
//!
//! llama.cpp runs Llama with "normal" RoPE, which rotates *adjacent* pairs
//! (dimensions 2i, 2i+1) of each head; HF rotates the two *halves* (i,
//! i + hd/2). So `convert_hf_to_gguf.py` (`LlamaModel.permute`) reorders the
//! rows of `q_proj`/`k_proj` when writing a GGUF:
//! `W.reshape(n, 2, hd/2, in).swapaxes(1, 2)`. The inverse, used by
//! transformers (`LlamaTensorProcessor._reverse_permute_weights`) and here, is
//! `W.reshape(n, hd/2, 2, in).swapaxes(1, 2)`: HF row `h*hd + s*hd/2 + i`
//! comes from GGUF row `h*hd + 2*i + s`. Only `llama`-style files need it:
//! Qwen2 uses NEOX (halves) RoPE in llama.cpp and is stored unpermuted.

use anyhow::{bail, Result};

/// Returns the HF-layout rows of a GGUF `attn_q`/`attn_k` matrix (or bias,
/// with `cols = 1`) with `rows = heads * head_dim` rows of `cols` values.
pub fn unpermute_rows(gguf: &[f32], rows: usize, cols: usize, heads: usize) -> Result<Vec<f32>> {
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || gguf.len() != rows * cols
    {
        bail!(
            "cannot undo the Q/K row permutation: {rows} rows of {cols} ({} values) do not split into {heads} heads of an even width",
            gguf.len()
        );
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut hf = vec![0f32; gguf.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let dst = (h * hd + s * half + i) * cols;
                let src = (h * hd + 2 * i + s) * cols;
                hf[dst..dst + cols].copy_from_slice(&gguf[src..src + cols]);
            }
        }
    }
    Ok(hf)
}

/// llama.cpp's forward permutation (HF → GGUF), for writing test files.
pub fn permute_rows(hf: &[f32], rows: usize, cols: usize, heads: usize) -> Result<Vec<f32>> {
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || hf.len() != rows * cols
    {
        bail!("cannot permute {rows} rows of {cols} into {heads} heads");
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; hf.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let src = (h * hd + s * half + i) * cols;
                let dst = (h * hd + 2 * i + s) * cols;
                out[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One head of width 4, one column: GGUF rows [a0 b0 a1 b1] hold the
    /// pairs (a_i, b_i) adjacent; HF wants the halves [a0 a1 b0 b1].
    #[test]
    fn adjacent_pairs_become_halves() {
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(
            unpermute_rows(&gguf, 4, 1, 1).unwrap(),
            [10.0, 11.0, 20.0, 21.0]
        );
    }

    /// The index rule of the module doc on 3 heads of width 6 and 2 columns,
    /// and the round trip with the forward permutation.
    #[test]
    fn rows_follow_the_index_rule_and_round_trip() {
        let (heads, hd, cols) = (3, 6, 2);
        let rows = heads * hd;
        let gguf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let hf = unpermute_rows(&gguf, rows, cols, heads).unwrap();
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..hd / 2 {
                    for c in 0..cols {
                        let want = gguf[(h * hd + 2 * i + s) * cols + c];
                        assert_eq!(hf[(h * hd + s * hd / 2 + i) * cols + c], want);
                    }
                }
            }
        }
        assert_eq!(permute_rows(&hf, rows, cols, heads).unwrap(), gguf);
    }

    #[test]
    fn rows_that_do_not_split_into_heads_are_an_error() {
        let e = unpermute_rows(&[0.0; 10], 10, 1, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("10 rows of 1"), "{e}");
    }
}
