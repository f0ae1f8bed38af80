//! One choice of one request, from its prompt to its last token: what is computed, its blocks,
//! its sampler, and the text it has released.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::logits::LogitsProcessor;
use super::predict::{Prediction, PREDICTION_BYTES_PER_TOKEN};
use super::queue::QueueSlot;
use super::request::{Event, FinishReason, Priority};
use super::stop::StopText;
use crate::chat::{parse_output, ChatFormat, ParsedOutput};
use crate::logprobs::{RawLogprobs, TokenLogprobs};
use crate::sampler::Sampler;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// Whether the answer is text or tool calls, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Undecided,
    Text,
    Calls,
}

const V1_CALLS: &str = "[TOOL_CALLS]";

pub(crate) struct Seq {
    pub req: u64,
    pub choice: usize,
    pub events: UnboundedSender<Event>,
    pub priority: Priority,
    /// The request's place in the queue count (shared by its choices), left when the first
    /// is admitted.
    pub slot: Arc<QueueSlot>,
    /// Prompt and generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Positions whose keys and values are in the cache.
    pub computed: usize,
    pub blocks: Vec<u32>,
    /// Chain hashes of the leading full blocks registered in the prefix cache.
    pub hashes: Vec<u64>,
    pub max_tokens: usize,
    pub context: usize,
    pub sampler: Sampler,
    /// Run in order on the logits before the sampler.
    processors: Vec<Box<dyn LogitsProcessor>>,
    detok: IncrementalDecoder,
    stop: StopText,
    kind: Kind,
    /// Text held while it is undecided whether a v1 answer is a tool call.
    held: String,
    /// A stop string ended the output.
    stopped: bool,
    /// Tool calls reported at most (`None`: any number).
    calls: Option<usize>,
    /// Alternatives per generated token when its log-probability is reported.
    logprobs: Option<usize>,
    /// The last sampled token's log-probabilities, until `accept` takes it.
    sampled: Option<RawLogprobs>,
    /// Generated tokens' log-probabilities not yet sent (sent before the text they release).
    pending: Vec<TokenLogprobs>,
    /// Alternatives per prompt token while the prompt's log-probabilities are still to send.
    prompt_logprobs: Option<usize>,
    /// The prompt's log-probabilities gathered so far (positions 1.. of the prompt).
    prompt_scores: Vec<TokenLogprobs>,
    /// The predicted output, when the request gave one.
    pub prediction: Option<Prediction>,
    /// Predicted tokens this step verifies after the pending one (not in `tokens`).
    pub draft: Vec<u32>,
}

pub(crate) struct SeqInit {
    pub req: u64,
    pub choice: usize,
    pub slot: Arc<QueueSlot>,
    pub events: UnboundedSender<Event>,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub context: usize,
    pub sampler: Sampler,
    pub processors: Vec<Box<dyn LogitsProcessor>>,
    pub stop: Vec<String>,
    /// Tool calls reported at most (`Some(0)`: none, the answer is text; `None`: any number).
    pub calls: Option<usize>,
    /// Report each generated token's log-probability with this many alternatives.
    pub logprobs: Option<usize>,
    /// Report the prompt tokens' log-probabilities with this many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// The predicted output.
    pub prediction: Option<String>,
    /// Interactive or batch.
    pub priority: Priority,
}

impl Seq {
    pub fn new(i: SeqInit) -> Self {
        Self {
            req: i.req,
            choice: i.choice,
            events: i.events,
            priority: i.priority,
            slot: i.slot,
            prompt_len: i.prompt.len(),
            tokens: i.prompt,
            computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            max_tokens: i.max_tokens,
            context: i.context,
            sampler: i.sampler,
            processors: i.processors,
            detok: IncrementalDecoder::new(),
            stop: StopText::new(i.stop),
            kind: Kind::Undecided,
            held: String::new(),
            stopped: false,
            calls: i.calls,
            logprobs: i.logprobs,
            sampled: None,
            pending: Vec::new(),
            prompt_logprobs: i.prompt_logprobs,
            prompt_scores: Vec::new(),
            prediction: i
                .prediction
                .as_deref()
                .map(|p| Prediction::new(p, i.context.saturating_mul(PREDICTION_BYTES_PER_TOKEN))),
            draft: Vec::new(),
        }
    }

    /// Whether the prompt's positions are still to be scored: then every prompt position's
    /// logits are wanted, and none of its blocks may come from the prefix cache.
    pub fn scores_prompt(&self) -> bool {
        self.prompt_logprobs.is_some()
    }

    /// Scores prompt positions from their logits (`rows[j]` at position `start + j` predicts
    /// the token after it); once the prompt is scored, sends its log-probabilities.
    pub fn score_prompt(&mut self, start: usize, rows: &[Vec<f32>], tok: &Tokenizer) {
        let Some(k) = self.prompt_logprobs else {
            return;
        };
        for (j, row) in rows.iter().enumerate() {
            let next = start + j + 1;
            // (A sequence preempted while scoring computes its first positions again.)
            if next < self.prompt_len && next == self.prompt_scores.len() + 1 {
                let raw = RawLogprobs::of(row, self.tokens[next], k);
                self.prompt_scores.push(raw.named(tok));
            }
        }
        if start + rows.len() >= self.prompt_len {
            self.prompt_logprobs = None;
            let _ = self.events.send(Event::PromptLogprobs {
                choice: self.choice,
                content: std::mem::take(&mut self.prompt_scores),
            });
        }
    }

    /// Tokens to compute before the next token can be sampled.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Whether a processor has work to do before the logits exist.
    pub fn needs_prepare(&self) -> bool {
        self.processors.iter().any(|p| p.needs_prepare())
    }

    /// Runs the processors' work that needs no logits (see `LogitsProcessor::prepare`).
    pub fn prepare(&mut self) {
        let generated = &self.tokens[self.prompt_len..];
        for p in &mut self.processors {
            p.prepare(generated);
        }
    }

    /// The logits processors, in order, then the sampler: the next token.
    /// The log-probabilities reported are the model's own, from the logits before the
    /// processors.
    pub fn choose(&mut self, logits: &mut [f32]) -> u32 {
        let raw = self.logprobs.map(|_| logits.to_vec());
        let generated = &self.tokens[self.prompt_len..];
        for p in &mut self.processors {
            p.process(generated, logits);
        }
        let t = self.sampler.sample(logits);
        self.sampled = raw
            .zip(self.logprobs)
            .map(|(row, k)| RawLogprobs::of(&row, t, k));
        t
    }

    /// Takes a sampled token: sends what it releases; returns the finish reason if it ends the
    /// choice.
    pub fn accept(
        &mut self,
        t: u32,
        eos: &[u32],
        format: ChatFormat,
        tok: &Tokenizer,
    ) -> Option<FinishReason> {
        let scored = self.sampled.take();
        if eos.contains(&t) {
            return Some(FinishReason::Stop);
        }
        self.tokens.push(t);
        self.pending.extend(scored.map(|s| s.named(tok)));
        if let Some(p) = &mut self.prediction {
            p.advance(t, tok);
        }
        let first = self.generated().len() == 1;
        let calls_allowed = self.calls != Some(0);
        if first
            && calls_allowed
            && format == ChatFormat::V3
            && Some(t) == tok.specials().tool_calls
        {
            self.kind = Kind::Calls;
        }
        if self.kind != Kind::Calls {
            let piece = self.detok.push(tok, t).ok().flatten().unwrap_or_default();
            if self.release(&piece, format) {
                return Some(FinishReason::Stop);
            }
        }
        if self.generated().len() >= self.max_tokens {
            return Some(FinishReason::Length);
        }
        if self.tokens.len() >= self.context {
            return Some(FinishReason::ModelLength);
        }
        None
    }

    /// Passes a piece of text on (through stop-string handling); true when a stop string ends
    /// the output.
    fn release(&mut self, piece: &str, format: ChatFormat) -> bool {
        if self.kind == Kind::Undecided {
            self.held.push_str(piece);
            let t = self.held.trim_start();
            // Under tool_choice none an answer is text, whatever it looks like.
            let v1_calls = format == ChatFormat::V1 && self.calls != Some(0);
            if v1_calls && t.starts_with(V1_CALLS) {
                self.kind = Kind::Calls;
                return false;
            }
            if v1_calls && V1_CALLS.starts_with(t) {
                return false;
            }
            self.kind = Kind::Text;
            let held = std::mem::take(&mut self.held);
            return self.emit(&held);
        }
        self.emit(piece)
    }

    fn emit(&mut self, piece: &str) -> bool {
        let (text, stopped) = self.stop.push(piece);
        self.delta(text);
        self.stopped |= stopped;
        stopped
    }

    fn delta(&mut self, text: String) {
        if !text.is_empty() {
            self.send_logprobs();
            let _ = self.events.send(Event::Delta {
                choice: self.choice,
                text,
            });
        }
    }

    /// Ends the choice: flushes held text, or sends the tool calls; then `Finish`.
    pub fn finish(&mut self, reason: FinishReason, format: ChatFormat, tok: &Tokenizer) {
        let mut reason = reason;
        if self.kind == Kind::Calls {
            match parse_output(format, tok, self.generated()) {
                Ok(ParsedOutput::ToolCalls(mut calls)) => {
                    if let Some(max) = self.calls {
                        calls.truncate(max);
                    }
                    self.send_logprobs();
                    let _ = self.events.send(Event::ToolCalls {
                        choice: self.choice,
                        calls,
                    });
                    if reason == FinishReason::Stop {
                        reason = FinishReason::ToolCalls;
                    }
                }
                _ => self.delta(tok.decode(self.generated()).unwrap_or_default()),
            }
        } else if !self.stopped {
            // What the detokenizer and the stop-string check still hold is released now.
            let tail = self.detok.flush(tok).ok().flatten().unwrap_or_default();
            let held = std::mem::take(&mut self.held) + &tail;
            let (text, stopped) = self.stop.push(&held);
            let rest = if stopped {
                String::new()
            } else {
                self.stop.finish()
            };
            self.delta(text + &rest);
        }
        self.send_logprobs();
        let _ = self.events.send(Event::Finish {
            choice: self.choice,
            reason,
        });
    }

    /// Sends the generated tokens' log-probabilities not yet sent.
    fn send_logprobs(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.events.send(Event::Logprobs {
                choice: self.choice,
                content: std::mem::take(&mut self.pending),
            });
        }
    }
}
