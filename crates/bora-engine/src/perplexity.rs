//! Perplexity: the mean negative log-likelihood of each token given those before it.
//!
//! Texts longer than the context are scored in windows of `context` tokens that advance by
//! half a window, each token scored once, with at least half a window of context after the
//! first (the strided evaluation of Hugging Face's perplexity guide).

use bora_model::{Batch, Logits, Model};

use crate::generate::PREFILL_CHUNK;
use crate::logprobs::{log_sum_exp, logprob_of};
use crate::{EngineError, Result};

#[derive(Debug, Clone, PartialEq)]
/// The score of a text.
pub struct Perplexity {
    /// Tokens predicted: all but the first.
    pub tokens: usize,
    /// Sum of their negative log-likelihoods (natural log).
    pub nll: f64,
    /// Each predicted token's negative log-likelihood, in order (`tokens` of them).
    pub token_nll: Vec<f64>,
}

impl Perplexity {
    /// `exp(nll / tokens)`.
    pub fn ppl(&self) -> f64 {
        (self.nll / self.tokens as f64).exp()
    }
}

/// Scores `ids` (BOS first) with windows of at most `context` tokens.
pub fn perplexity(model: &Model, ids: &[u32], context: usize) -> Result<Perplexity> {
    let context = context.min(model.config().context());
    if ids.len() < 2 {
        return Err(EngineError::EmptyPrompt);
    }
    if context < 2 {
        return Err(EngineError::PromptTooLong {
            prompt: ids.len(),
            context,
        });
    }
    let stride = (context / 2).max(1);
    let mut cache = model.new_cache(1, context)?;
    let mut token_nll = vec![0.0; ids.len() - 1];
    // `scored`: tokens 1..scored already have their NLL.
    let mut scored = 1;
    let mut begin = 0;
    while scored < ids.len() {
        let end = (begin + context).min(ids.len());
        let window = &ids[begin..end];
        for (c, chunk) in window.chunks(PREFILL_CHUNK).enumerate() {
            let at = c * PREFILL_CHUNK;
            // Logits at window position p predict ids[begin + p + 1].
            let wanted = begin + at + chunk.len() >= scored;
            let want = if wanted { Logits::All } else { Logits::None };
            let out = model.forward(
                &Batch::single(chunk.to_vec(), at, cache.slot(0), want),
                &mut cache,
            )?;
            if !wanted {
                continue;
            }
            for (p, row) in out.to_vec2::<f32>()?.iter().enumerate() {
                let target = begin + at + p + 1;
                if target < scored || target >= end {
                    continue;
                }
                token_nll[target - 1] = -logprob_of(row, log_sum_exp(row), ids[target]);
            }
        }
        scored = end;
        begin += stride;
    }
    Ok(Perplexity {
        tokens: ids.len() - 1,
        nll: token_nll.iter().sum(),
        token_nll,
    })
}
