//! Generation for one sequence: chunked prefill of the prompt, then decode steps until a stop
//! token, `max_tokens`, or the end of the context.

use std::time::{Duration, Instant};

use bora_model::{Batch, Logits, Model};

use crate::sampler::{Sampler, SamplingParams};
use crate::serve::FinishReason;
use crate::{EngineError, Result};

/// Prompt tokens per prefill step.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone)]
/// Settings of [`generate`].
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How to choose each token.
    pub sampling: SamplingParams,
    /// Generation ends after any of these (end-of-sequence ids); they are not returned.
    pub stop_tokens: Vec<u32>,
    /// Positions available to prompt and output together; at most the model's context.
    pub context: usize,
}

#[derive(Debug, Clone)]
/// The result of [`generate`].
pub struct Generation {
    /// The generated tokens (stop tokens excluded).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Time spent on the prompt.
    pub prefill_time: Duration,
    /// Time spent generating.
    pub decode_time: Duration,
}

/// Generates from `prompt` (which includes BOS where the model wants it), calling `on_token`
/// with each new token as it is chosen.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let context = opts.context.min(model.config().context());
    if prompt.len() >= context {
        return Err(EngineError::PromptTooLong {
            prompt: prompt.len(),
            context,
        });
    }
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let max_len = (prompt.len() + opts.max_tokens).min(context);
    let mut cache = model.new_cache(1, max_len)?;
    let start = Instant::now();
    let mut logits = None;
    for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
        let last = (i + 1) * PREFILL_CHUNK >= prompt.len();
        let want = if last { Logits::Last } else { Logits::None };
        let out = model.forward(
            &Batch::single(chunk.to_vec(), i * PREFILL_CHUNK, cache.slot(0), want),
            &mut cache,
        )?;
        if last {
            logits = Some(out);
        }
    }
    let prefill_time = start.elapsed();
    let start = Instant::now();
    let mut tokens = Vec::new();
    let mut row = logits
        .map(|l| l.to_vec2::<f32>())
        .transpose()?
        .and_then(|mut v| v.pop());
    let finish = loop {
        let Some(r) = row.take().filter(|_| tokens.len() < opts.max_tokens) else {
            break FinishReason::Length;
        };
        let tok = sampler.sample(&r);
        if opts.stop_tokens.contains(&tok) {
            break FinishReason::Stop;
        }
        tokens.push(tok);
        on_token(tok)?;
        if tokens.len() >= opts.max_tokens {
            break FinishReason::Length;
        }
        // Prompt and output together fill at most the context.
        if prompt.len() + tokens.len() >= context {
            break FinishReason::ModelLength;
        }
        let pos = prompt.len() + tokens.len() - 1;
        let out = model.forward(
            &Batch::single(vec![tok], pos, cache.slot(0), Logits::Last),
            &mut cache,
        )?;
        row = out.to_vec2::<f32>()?.pop();
    };
    Ok(Generation {
        tokens,
        finish,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time: start.elapsed(),
    })
}
