//! Typed requests and the events that answer them.

use crate::chat::{ChatRequest, ToolCall};
use crate::sampler::SamplingParams;

/// A chat completion request, as the library takes it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub chat: ChatRequest,
    /// Temperature, top-p, top-k; the seed (`None`: a random one).
    pub sampling: SamplingParams,
    pub seed: Option<u64>,
    /// Tokens to generate at most per choice (`None`: up to the context).
    pub max_tokens: Option<usize>,
    /// Generation ends before any of these strings, which are never part of the output.
    pub stop: Vec<String>,
    /// Choices to generate.
    pub n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
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
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What the engine sends back for a request, in order: deltas and tool calls per choice, a
/// `Finish` per choice, then one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text of a choice.
    Delta {
        choice: usize,
        text: String,
    },
    /// The choice's answer is these tool calls (sent whole).
    ToolCalls {
        choice: usize,
        calls: Vec<ToolCall>,
    },
    Finish {
        choice: usize,
        reason: FinishReason,
    },
    /// The request is complete.
    Done {
        usage: Usage,
    },
    /// The request failed; nothing follows.
    Error {
        message: String,
    },
}

/// The whole answer to a request, collected from its events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompletionResult {
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<FinishReason>,
}
