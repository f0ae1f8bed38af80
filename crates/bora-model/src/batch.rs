//! The input of one forward step.

/// Which positions of a sequence want logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a prefill chunk that is not the prompt's last).
    None,
    /// The last position only (generation).
    Last,
    /// Every position (scoring, perplexity, tests).
    All,
}

/// New tokens of one sequence.
#[derive(Debug, Clone)]
pub struct SeqInput {
    /// Token ids to process, `L` of them.
    pub tokens: Vec<u32>,
    /// Position of the first of them (the number of tokens already in the cache slot).
    pub start_pos: usize,
    /// The KV cache blocks that hold this sequence's positions, in order.
    pub blocks: Vec<u32>,
    pub logits: Logits,
}

/// Sequences processed together in one step; no two write to the same cache row.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub seqs: Vec<SeqInput>,
}

impl Batch {
    /// A batch of one sequence.
    pub fn single(tokens: Vec<u32>, start_pos: usize, blocks: Vec<u32>, logits: Logits) -> Self {
        Self {
            seqs: vec![SeqInput {
                tokens,
                start_pos,
                blocks,
                logits,
            }],
        }
    }

    /// Tokens in the step.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    /// Rows of the logits `forward` returns, in order: for each sequence, its wanted positions.
    pub fn logit_rows(&self) -> Vec<usize> {
        let mut rows = Vec::new();
        let mut base = 0;
        for s in &self.seqs {
            let l = s.tokens.len();
            match s.logits {
                Logits::None => {}
                Logits::Last if l > 0 => rows.push(base + l - 1),
                Logits::Last => {}
                Logits::All => rows.extend(base..base + l),
            }
            base += l;
        }
        rows
    }
}
