//! The per-sequence chain of logits processors, run in order on each step's logits before the
//! sampler: penalties now, constraint masks (structured output) next.

use std::collections::HashMap;
use std::sync::Arc;

/// Changes one sequence's logits before sampling (a mask sets logits to `-inf`).
pub trait LogitsProcessor: Send {
    /// `generated`: the tokens this sequence generated so far; `logits`: one per vocabulary
    /// entry, changed in place.
    fn process(&mut self, generated: &[u32], logits: &mut [f32]);

    /// Whether [`LogitsProcessor::prepare`] does anything (the engine then runs it on a thread
    /// of its own while the forward pass computes the logits).
    fn needs_prepare(&self) -> bool {
        false
    }

    /// Work that depends only on the tokens so far (a grammar's mask), done before the logits
    /// exist; `process` then applies it.
    fn prepare(&mut self, _generated: &[u32]) {}
}

/// Makes a fresh processor for each choice of a request.
#[derive(Clone)]
pub struct ProcessorFactory(pub Arc<dyn Fn() -> Box<dyn LogitsProcessor> + Send + Sync>);

impl std::fmt::Debug for ProcessorFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessorFactory")
    }
}

impl ProcessorFactory {
    /// A factory from a closure.
    pub fn new(make: impl Fn() -> Box<dyn LogitsProcessor> + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    /// A new processor.
    pub fn make(&self) -> Box<dyn LogitsProcessor> {
        (self.0)()
    }
}

/// Forbids some tokens outright (an end-of-sequence token for a fixed-length bench, a
/// `[TOOL_CALLS]` control token under `tool_choice: "none"`).
#[derive(Debug, Clone)]
pub struct ForbidTokens(pub Vec<u32>);

impl LogitsProcessor for ForbidTokens {
    fn process(&mut self, _generated: &[u32], logits: &mut [f32]) {
        for &t in &self.0 {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// OpenAI's presence and frequency penalties over the generated tokens:
/// `logit -= presence · [count > 0] + frequency · count`.
pub struct Penalties {
    presence: f32,
    frequency: f32,
    counts: HashMap<u32, u32>,
    seen: usize,
}

impl Penalties {
    /// Penalties with these weights.
    pub fn new(presence: f32, frequency: f32) -> Self {
        Self {
            presence,
            frequency,
            counts: HashMap::new(),
            seen: 0,
        }
    }
}

impl LogitsProcessor for Penalties {
    fn process(&mut self, generated: &[u32], logits: &mut [f32]) {
        for &t in &generated[self.seen.min(generated.len())..] {
            *self.counts.entry(t).or_default() += 1;
        }
        self.seen = generated.len();
        for (&t, &c) in &self.counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= self.presence + self.frequency * c as f32;
            }
        }
    }
}

/// The repetition penalty of transformers and vLLM over the prompt and the output so far:
/// a seen token's logit `l` becomes `l / p` where positive, `l · p` otherwise.
pub struct RepetitionPenalty {
    penalty: f32,
    /// Tokens seen so far (the prompt's, then the generated ones), sorted and unique.
    seen: Vec<u32>,
    counted: usize,
}

impl RepetitionPenalty {
    /// The penalty `penalty` (above 0) with the prompt's tokens already seen.
    pub fn new(penalty: f32, prompt: &[u32]) -> Self {
        let mut seen = prompt.to_vec();
        seen.sort_unstable();
        seen.dedup();
        Self {
            penalty,
            seen,
            counted: 0,
        }
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&mut self, generated: &[u32], logits: &mut [f32]) {
        for &t in &generated[self.counted.min(generated.len())..] {
            if let Err(at) = self.seen.binary_search(&t) {
                self.seen.insert(at, t);
            }
        }
        self.counted = generated.len();
        for &t in &self.seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / self.penalty
                } else {
                    *l * self.penalty
                };
            }
        }
    }
}

/// vLLM's `min_tokens`: the end-of-sequence tokens are masked until `min` tokens have been
/// generated, where another token is left to sample (a grammar that allows only the end keeps
/// it).
pub struct MinTokens {
    /// Tokens to generate before the end may be sampled.
    pub min: usize,
    /// The end-of-sequence tokens.
    pub eos: Vec<u32>,
}

impl LogitsProcessor for MinTokens {
    fn process(&mut self, generated: &[u32], logits: &mut [f32]) {
        if generated.len() >= self.min {
            return;
        }
        let other = logits
            .iter()
            .enumerate()
            .any(|(i, l)| *l > f32::NEG_INFINITY && !self.eos.contains(&(i as u32)));
        if other {
            for &t in &self.eos {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut p = RepetitionPenalty::new(2.0, &[1, 1, 3]);
        let mut logits = vec![1.0, 4.0, 1.0, -3.0, 5.0];
        p.process(&[], &mut logits);
        assert_eq!(logits, vec![1.0, 2.0, 1.0, -6.0, 5.0]);
        // A generated token joins the prompt's, once however often it repeats.
        let mut logits = vec![1.0, 4.0, 1.0, -3.0, 5.0];
        p.process(&[4, 4], &mut logits);
        assert_eq!(logits, vec![1.0, 2.0, 1.0, -6.0, 2.5]);
    }

    #[test]
    fn min_tokens_holds_the_end_unless_nothing_else_is_left() {
        let mut m = MinTokens {
            min: 2,
            eos: vec![2],
        };
        let mut logits = vec![0.0, 1.0, 9.0];
        m.process(&[7], &mut logits);
        assert_eq!(logits[2], f32::NEG_INFINITY);
        let mut logits = vec![0.0, 1.0, 9.0];
        m.process(&[7, 7], &mut logits);
        assert_eq!(logits[2], 9.0);
        let mut only_end = vec![f32::NEG_INFINITY, f32::NEG_INFINITY, 9.0];
        m.process(&[], &mut only_end);
        assert_eq!(only_end[2], 9.0);
    }

    #[test]
    fn penalties_count_generated_tokens() {
        let mut p = Penalties::new(0.5, 0.25);
        let mut logits = vec![1.0; 4];
        p.process(&[2, 2, 3], &mut logits);
        assert_eq!(logits, vec![1.0, 1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25]);
        let mut logits = vec![1.0; 4];
        p.process(&[2, 2, 3, 0], &mut logits);
        assert_eq!(logits, vec![0.25, 1.0, 0.0, 0.25]);
    }
}
