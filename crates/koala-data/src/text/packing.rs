//! Packing documents into fixed-length blocks, the GPT-2 / Hugging Face `run_clm.py` `group_texts` recipe:
//! documents are concatenated, each followed by EOS (so the model learns where a text ends and does not
//! read one document as the continuation of the previous), and the stream is cut every `block_size` tokens.
//! Unlike `group_texts`, the last, shorter block is kept (small fine-tuning sets cannot spare it); batching
//! pads it. Attention crosses document boundaries inside a block, as in that recipe.

use super::dataset::TextExample;

/// Accumulates documents and cuts full blocks as they fill.
pub(crate) struct Packer {
    block_size: usize,
    current: Vec<i64>,
    blocks: Vec<TextExample>,
}

impl Packer {
    pub(crate) fn new(block_size: usize) -> Self {
        Packer {
            block_size,
            current: Vec::with_capacity(block_size),
            blocks: Vec::new(),
        }
    }

    /// Appends one document's tokens (BOS and EOS included by the caller).
    pub(crate) fn push(&mut self, tokens: &[i64]) {
        let mut rest = tokens;
        while !rest.is_empty() {
            let take = (self.block_size - self.current.len()).min(rest.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.current.len() == self.block_size {
                let block =
                    std::mem::replace(&mut self.current, Vec::with_capacity(self.block_size));
                self.blocks.push(TextExample::causal(block));
            }
        }
    }

    /// The blocks, the last one possibly shorter than `block_size`.
    pub(crate) fn finish(mut self) -> Vec<TextExample> {
        if !self.current.is_empty() {
            self.blocks.push(TextExample::causal(self.current));
        }
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_concatenate_to_the_input_and_only_the_last_is_short() {
        let mut p = Packer::new(4);
        p.push(&[1, 2, 3]);
        p.push(&[4, 5, 6, 7, 8, 9]);
        p.push(&[10]);
        let blocks = p.finish();
        let lens: Vec<usize> = blocks.iter().map(TextExample::len).collect();
        assert_eq!(lens, [4, 4, 2]);
        let all: Vec<i64> = blocks.iter().flat_map(|b| b.input_ids.clone()).collect();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
    }
}
