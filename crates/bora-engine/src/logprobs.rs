//! Log-probabilities of tokens: one rule for the API's `logprobs` and `prompt_logprobs` and for
//! `bora perplexity`. A row of logits is the model's raw output, before any logits processor
//! (penalties, a grammar's mask, `min_tokens`): the distribution the model itself gives.

use crate::tokenizer::Tokenizer;

/// Alternatives per position at most (`top_logprobs`, `top_prompt_logprobs`): OpenAI's and
/// vLLM's default limit.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The floor written for a probability that is zero (a `-inf` logit): the wire wants a finite
/// number, and OpenAI's API uses this one.
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// `log Σ exp(row)`, in f64.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    row.iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// The log-probability of `target` under `softmax(row)`, with `lse = log_sum_exp(row)`.
pub fn logprob_of(row: &[f32], lse: f64, target: u32) -> f64 {
    row.get(target as usize)
        .map_or(f64::NEG_INFINITY, |&v| v as f64 - lse)
}

/// The `k` largest entries of `row` as `(index, value)`, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() || (top.len() == k && v <= top[k - 1].1) {
            continue;
        }
        let at = top.partition_point(|&(_, t)| t >= v);
        top.insert(at, (i as u32, v));
        top.truncate(k);
    }
    top
}

/// One token with its log-probability, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprob {
    /// The token's id.
    pub token_id: u32,
    /// Its text (sentencepiece's `▁` as a space; a byte that is part of a character as the
    /// replacement character).
    pub token: String,
    /// The UTF-8 bytes the token adds to the text (a byte-fallback token: its byte).
    pub bytes: Vec<u8>,
    /// Natural log of its probability, at least [`LOGPROB_FLOOR`].
    pub logprob: f32,
}

/// A position: the token that is there and the most likely tokens at it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The token chosen (generated) or given (prompt).
    pub chosen: Logprob,
    /// The most likely tokens, most likely first (empty unless asked for).
    pub top: Vec<Logprob>,
}

/// Ids and log-probabilities of a position, before their text is looked up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawLogprobs {
    pub chosen: (u32, f32),
    pub top: Vec<(u32, f32)>,
}

impl RawLogprobs {
    /// `target`'s log-probability under `row` and the `k` most likely tokens'.
    pub fn of(row: &[f32], target: u32, k: usize) -> Self {
        let lse = log_sum_exp(row);
        let lp = |v: f64| (v as f32).max(LOGPROB_FLOOR);
        Self {
            chosen: (target, lp(logprob_of(row, lse, target))),
            top: top_k(row, k)
                .into_iter()
                .map(|(id, v)| (id, lp(v as f64 - lse)))
                .collect(),
        }
    }

    /// With the tokens' text.
    pub fn named(&self, tok: &Tokenizer) -> TokenLogprobs {
        let one = |&(id, logprob): &(u32, f32)| {
            let bytes = tok.token_bytes(id);
            Logprob {
                token_id: id,
                token: String::from_utf8_lossy(&bytes).into_owned(),
                bytes,
                logprob,
            }
        };
        TokenLogprobs {
            chosen: one(&self.chosen),
            top: self.top.iter().map(one).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_stable() {
        let row = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_k(&row, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(top_k(&row, 0), vec![]);
        assert_eq!(top_k(&row, 9).len(), 5);
    }

    #[test]
    fn logprobs_are_a_distribution() {
        let row = [1.0f32, 2.0, 3.0, f32::NEG_INFINITY];
        let r = RawLogprobs::of(&row, 3, 4);
        let total: f64 = r.top[..3].iter().map(|t| (t.1 as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(r.top[0].0, 2);
        // A token the model rules out gets the floor, not -inf.
        assert_eq!(r.chosen, (3, LOGPROB_FLOOR));
        assert_eq!(r.top[3], (3, LOGPROB_FLOOR));
    }
}
