//! An answer's engine events turned into the API's bodies, the same way over HTTP and in
//! process (the Python and C bindings): [`Whole`] collects a completion, [`Chunks`] gives the
//! stream's chunks as the events come.

use std::time::{SystemTime, UNIX_EPOCH};

use bora_engine::chat::ToolCall;
use bora_engine::{Completion, Event, FinishReason, TokenLogprobs, Usage};
use serde_json::{json, Value};

use crate::api::{
    choice_json, chunk_choice, chunk_json, completion_json, logprobs_json, tool_calls_json,
    ChoiceBody,
};

/// What every body of one answer shares.
#[derive(Debug, Clone)]
pub struct AnswerMeta {
    /// `cmpl-` and 32 random hex digits.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The model's name, as the request gave it.
    pub model: String,
    /// Choices in the answer.
    pub n: usize,
    /// Whether the generated tokens' log-probabilities were asked for.
    pub logprobs: bool,
    /// Whether the prompt's log-probabilities were asked for.
    pub prompt_logprobs: bool,
}

impl AnswerMeta {
    /// A fresh id, created now, for the answer to `req`.
    pub fn new(model: &str, req: &Completion) -> Self {
        Self {
            id: format!("cmpl-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model: model.to_string(),
            n: req.n,
            logprobs: req.logprobs.is_some(),
            prompt_logprobs: req.prompt_logprobs.is_some(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A whole answer, collected from its events.
#[derive(Debug)]
pub struct Whole {
    meta: AnswerMeta,
    text: Vec<String>,
    calls: Vec<Vec<ToolCall>>,
    reasons: Vec<Option<FinishReason>>,
    logprobs: Vec<Vec<TokenLogprobs>>,
    prompt_logprobs: Vec<Vec<TokenLogprobs>>,
    usage: Usage,
    error: Option<String>,
}

impl Whole {
    /// An answer with nothing yet.
    pub fn new(meta: AnswerMeta) -> Self {
        let n = meta.n;
        Self {
            meta,
            text: vec![String::new(); n],
            calls: vec![Vec::new(); n],
            reasons: vec![None; n],
            logprobs: vec![Vec::new(); n],
            prompt_logprobs: vec![Vec::new(); n],
            usage: Usage::default(),
            error: None,
        }
    }

    /// Takes an event (`None`: the engine's stream ended); true once the answer is complete.
    pub fn on(&mut self, event: Option<Event>) -> bool {
        match event {
            Some(Event::Delta { choice, text }) => self.text[choice].push_str(&text),
            Some(Event::ToolCalls { choice, calls }) => self.calls[choice] = calls,
            Some(Event::Finish { choice, reason }) => self.reasons[choice] = Some(reason),
            Some(Event::Logprobs { choice, content }) => self.logprobs[choice].extend(content),
            Some(Event::PromptLogprobs { choice, content }) => {
                self.prompt_logprobs[choice] = content
            }
            Some(Event::Done { usage }) => {
                self.usage = usage;
                return true;
            }
            Some(Event::Error { message }) => {
                self.error = Some(message);
                return true;
            }
            None => {
                self.error = Some("the engine stopped mid-request".into());
                return true;
            }
        }
        false
    }

    /// Why generation failed, if it did (its choices then end with `error`).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Tokens of the answer.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The completion body.
    pub fn json(&self) -> Value {
        let choices = (0..self.meta.n)
            .map(|i| {
                choice_json(ChoiceBody {
                    index: i,
                    text: &self.text[i],
                    calls: &self.calls[i],
                    reason: self.reasons[i],
                    logprobs: self.meta.logprobs.then_some(&self.logprobs[i][..]),
                    prompt_logprobs: self
                        .meta
                        .prompt_logprobs
                        .then_some(&self.prompt_logprobs[i][..]),
                })
            })
            .collect();
        completion_json(
            &self.meta.id,
            self.meta.created,
            &self.meta.model,
            choices,
            &self.usage,
        )
    }
}

/// The chunks of a streamed answer. A choice's tool calls wait for its finish, and the last
/// finish waits for the usage, which rides on it; choices the engine did not finish end with
/// `error`. Generated tokens' log-probabilities ride on the chunk that carries their text (or
/// on the choice's finish); the prompt's, on the choice's first chunk (its role), which then
/// waits for them.
#[derive(Debug)]
pub struct Chunks {
    meta: AnswerMeta,
    calls: Vec<Option<Vec<ToolCall>>>,
    logprobs: Vec<Vec<TokenLogprobs>>,
    held: Option<Value>,
    finished: Vec<bool>,
    ended: bool,
}

impl Chunks {
    /// A stream with nothing sent yet.
    pub fn new(meta: AnswerMeta) -> Self {
        let n = meta.n;
        Self {
            meta,
            calls: vec![None; n],
            logprobs: vec![Vec::new(); n],
            held: None,
            finished: vec![false; n],
            ended: false,
        }
    }

    fn chunk(&self, choices: Vec<Value>, usage: Option<&Usage>) -> Value {
        chunk_json(
            &self.meta.id,
            self.meta.created,
            &self.meta.model,
            choices,
            usage,
        )
    }

    /// The first chunks: each choice's role (unless it waits for the prompt's
    /// log-probabilities).
    pub fn start(&self) -> Vec<Value> {
        if self.meta.prompt_logprobs {
            return Vec::new();
        }
        (0..self.meta.n).map(|i| self.role(i, None)).collect()
    }

    fn role(&self, choice: usize, prompt_logprobs: Option<&[TokenLogprobs]>) -> Value {
        let mut c = chunk_choice(choice, json!({"role": "assistant", "content": ""}), None);
        if let Some(p) = prompt_logprobs {
            c["prompt_logprobs"] = logprobs_json(p);
        }
        self.chunk(vec![c], None)
    }

    /// A choice of a chunk with the log-probabilities of the tokens it releases (when asked;
    /// `null` on a finish that releases none).
    fn with_logprobs(&mut self, mut c: Value, choice: usize, finish: bool) -> Value {
        let pending = std::mem::take(&mut self.logprobs[choice]);
        if self.meta.logprobs && !(finish && pending.is_empty()) {
            c["logprobs"] = logprobs_json(&pending);
        }
        c
    }

    /// The chunks an event releases (`None`: the engine's stream ended).
    pub fn on(&mut self, event: Option<&Event>) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        let end = matches!(event, None | Some(Event::Done { .. } | Event::Error { .. }));
        let usage = match event {
            Some(Event::Done { usage }) => Some(*usage),
            _ => None,
        };
        match self.held.take() {
            Some(h) => out.push(self.chunk(vec![h], usage.as_ref())),
            None if usage.is_some() => out.push(self.chunk(Vec::new(), usage.as_ref())),
            None => {}
        }
        match event {
            Some(Event::PromptLogprobs { choice, content }) => {
                out.push(self.role(*choice, Some(content)))
            }
            Some(Event::Logprobs { choice, content }) => {
                self.logprobs[*choice].extend(content.iter().cloned())
            }
            Some(Event::Delta { choice, text }) => {
                let c = chunk_choice(*choice, json!({"content": text}), None);
                let c = self.with_logprobs(c, *choice, false);
                out.push(self.chunk(vec![c], None))
            }
            Some(Event::ToolCalls { choice, calls }) => self.calls[*choice] = Some(calls.clone()),
            Some(Event::Finish { choice, reason }) => {
                self.finished[*choice] = true;
                let delta = match self.calls[*choice].take() {
                    Some(c) => json!({"content": "", "tool_calls": tool_calls_json(&c)}),
                    None => json!({"content": ""}),
                };
                let c = chunk_choice(*choice, delta, Some(*reason));
                self.held = Some(self.with_logprobs(c, *choice, true));
            }
            _ => {}
        }
        if end {
            let unfinished: Vec<Value> = (0..self.meta.n)
                .filter(|&i| !self.finished[i])
                .map(|i| chunk_choice(i, json!({"content": ""}), Some(FinishReason::Error)))
                .collect();
            if !unfinished.is_empty() {
                out.push(self.chunk(unfinished, None));
            }
            self.ended = true;
        }
        out
    }

    /// Whether the last chunk has been given.
    pub fn ended(&self) -> bool {
        self.ended
    }
}
