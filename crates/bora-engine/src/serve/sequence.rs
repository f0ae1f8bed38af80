//! One choice of one request, from its prompt to its last token: what is computed, its blocks,
//! its sampler, and the text it has released.

use tokio::sync::mpsc::UnboundedSender;

use super::logits::LogitsProcessor;
use super::request::{Event, FinishReason};
use super::stop::StopText;
use crate::chat::{parse_output, ChatFormat, ParsedOutput};
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
    /// Counted in the engine's queue length until first admitted.
    pub queued: bool,
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
}

pub(crate) struct SeqInit {
    pub req: u64,
    pub choice: usize,
    pub events: UnboundedSender<Event>,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub context: usize,
    pub sampler: Sampler,
    pub processors: Vec<Box<dyn LogitsProcessor>>,
    pub stop: Vec<String>,
    /// Tool calls reported at most (`Some(0)`: none, the answer is text; `None`: any number).
    pub calls: Option<usize>,
}

impl Seq {
    pub fn new(i: SeqInit) -> Self {
        Self {
            req: i.req,
            choice: i.choice,
            events: i.events,
            queued: i.choice == 0,
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
    pub fn choose(&mut self, logits: &mut [f32]) -> u32 {
        let generated = &self.tokens[self.prompt_len..];
        for p in &mut self.processors {
            p.process(generated, logits);
        }
        self.sampler.sample(logits)
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
        if eos.contains(&t) {
            return Some(FinishReason::Stop);
        }
        self.tokens.push(t);
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

    fn delta(&self, text: String) {
        if !text.is_empty() {
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
        let _ = self.events.send(Event::Finish {
            choice: self.choice,
            reason,
        });
    }
}
