//! Typed requests and the events that answer them.

use serde_json::Value;

use super::logits::ProcessorFactory;
use crate::chat::{ChatRequest, ToolCall};
use crate::constrain::{Constraint, ToolChoice};
use crate::logprobs::TokenLogprobs;
use crate::sampler::SamplingParams;

/// How a request's sequences are scheduled against others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Someone is waiting for it (the default): admitted before batch work, and a batch
    /// sequence is preempted to make room for it.
    #[default]
    Interactive,
    /// Bulk work (batch jobs): runs in what interactive requests leave.
    Batch,
}

/// A chat completion request, as the library takes it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The conversation (and tools) to answer.
    pub chat: ChatRequest,
    /// Temperature, top-p, top-k; the seed (`None`: a random one).
    pub sampling: SamplingParams,
    /// Seed of the sampling (`None`: a random one).
    pub seed: Option<u64>,
    /// Tokens to generate at most per choice (`None`: up to the context).
    pub max_tokens: Option<usize>,
    /// Generation ends before any of these strings, which are never part of the output.
    pub stop: Vec<String>,
    /// Choices to generate.
    pub n: usize,
    /// Subtracted from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// vLLM's (and transformers') repetition penalty: the logit of every token of the prompt
    /// or the output so far is divided by it where positive, multiplied where negative (1:
    /// none; above 1 discourages repeats).
    pub repetition_penalty: f32,
    /// End-of-sequence is not sampled before this many tokens (vLLM's `min_tokens`; stop
    /// strings still end the output).
    pub min_tokens: usize,
    /// Report each generated token's log-probability, with this many of the most likely
    /// tokens at its position (at most [`crate::MAX_TOP_LOGPROBS`]). The log-probabilities are
    /// the model's, before any logits processor or constraint mask; the end-of-sequence
    /// token is not reported.
    pub logprobs: Option<usize>,
    /// Report the prompt tokens' log-probabilities (all but the first, which has no context),
    /// with this many alternatives each. Such a request computes its whole prompt (no prefix
    /// cache reuse).
    pub prompt_logprobs: Option<usize>,
    /// Interactive (default) or batch work.
    pub priority: Priority,
    /// More logits processors, run after the penalties (one instance per choice).
    pub processors: Vec<ProcessorFactory>,
    /// The expected answer (Mistral's `prediction`): its tokens are verified several at a time
    /// instead of generated one by one, where the answer follows it. The output is what it
    /// would be without it (greedy: the same tokens; sampling: the same distribution).
    pub prediction: Option<String>,
    /// Whether and which of `chat.tools` the model may call (default `Auto`). Under `None`
    /// the tools are still rendered into the prompt, as mistral-common renders them (an
    /// agent that alternates `auto` and `none` keeps its cached prefix), and the answer is
    /// text: the tool-call token is masked and no tool calls are reported.
    pub tool_choice: ToolChoice,
    /// Several tool calls in one answer (default); otherwise at most one.
    pub parallel_tool_calls: bool,
    /// The text answer must be one JSON value valid against this schema (`{"type": "object"}`
    /// for JSON mode); under `Auto` with tools, tool calls remain allowed instead.
    pub response_format: Option<Value>,
}

impl Completion {
    /// A request with default settings: greedy, one choice, up to the context.
    pub fn new(chat: ChatRequest) -> Self {
        Self {
            chat,
            sampling: SamplingParams::default(),
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            n: 1,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_tokens: 0,
            logprobs: None,
            prompt_logprobs: None,
            prediction: None,
            priority: Priority::Interactive,
            processors: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
            response_format: None,
        }
    }

    /// What the engine enforces on the output, token by token (last in the logits chain):
    /// tool calls as `tool_choice` asks when there are tools (under `Auto`, text or calls),
    /// else the `response_format`'s JSON. `Required` or `Named` without tools is a
    /// constraint that fails to compile, with an error that says so.
    pub fn constraint(&self) -> Option<Constraint> {
        let tools = &self.chat.tools;
        match &self.tool_choice {
            ToolChoice::None => self.response_format.clone().map(Constraint::Json),
            ToolChoice::Auto if tools.is_empty() => {
                self.response_format.clone().map(Constraint::Json)
            }
            choice => Some(Constraint::Tools {
                tools: tools.clone(),
                choice: choice.clone(),
                parallel: self.parallel_tool_calls,
                text_json: self.response_format.clone(),
            }),
        }
    }
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence, or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    ModelLength,
    /// The answer is tool calls.
    ToolCalls,
    /// The engine failed while generating.
    Error,
}

impl FinishReason {
    /// The name in Mistral's API.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ModelLength => "model_length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// Tokens a request read and wrote.
pub struct Usage {
    /// Tokens of the prompt (BOS included), counted once for all choices.
    pub prompt_tokens: usize,
    /// Tokens generated over all choices (end-of-sequence excluded; predicted tokens that
    /// were rejected are not in it).
    pub completion_tokens: usize,
    /// Predicted tokens verified and kept (they are in `completion_tokens`).
    pub accepted_prediction_tokens: usize,
    /// Predicted tokens verified and rejected (computed, but not part of the answer).
    pub rejected_prediction_tokens: usize,
}

impl Usage {
    /// Prompt and completion tokens.
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What the engine sends back for a request, in order: per choice its prompt's
/// log-probabilities (when asked), deltas and tool calls each preceded by the log-probabilities
/// of the tokens they release (when asked), a `Finish`; then one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text of a choice.
    Delta {
        /// The choice.
        choice: usize,
        /// The text.
        text: String,
    },
    /// The choice's answer is these tool calls (sent whole).
    ToolCalls {
        /// The choice.
        choice: usize,
        /// The calls.
        calls: Vec<ToolCall>,
    },
    /// Log-probabilities of a choice's next generated tokens, sent before the text (or the
    /// tool calls, or the `Finish`) that they release.
    Logprobs {
        /// The choice.
        choice: usize,
        /// One per token, in order.
        content: Vec<TokenLogprobs>,
    },
    /// Log-probabilities of the prompt's tokens after the first, sent once before anything
    /// else of the choice.
    PromptLogprobs {
        /// The choice.
        choice: usize,
        /// One per prompt token after the first.
        content: Vec<TokenLogprobs>,
    },
    /// A choice ended.
    Finish {
        /// The choice.
        choice: usize,
        /// Why it ended.
        reason: FinishReason,
    },
    /// The request is complete.
    Done {
        /// Tokens of the whole request.
        usage: Usage,
    },
    /// The request failed; nothing follows.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// The whole answer to a request, collected from its events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompletionResult {
    /// One per choice, in order.
    pub choices: Vec<Choice>,
    /// Tokens of the request.
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq)]
/// One choice of a completed request.
pub struct Choice {
    /// Its text.
    pub text: String,
    /// Its tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// Why it ended.
    pub finish_reason: Option<FinishReason>,
    /// Its generated tokens' log-probabilities, when asked.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// Its prompt's log-probabilities, when asked.
    pub prompt_logprobs: Option<Vec<TokenLogprobs>>,
}
