//! Errors of the engine.

use std::path::PathBuf;

/// An error of the engine; each message names what is wrong.
// Fields are named for their place in the message.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load tokenizer {path}: {reason}")]
    TokenizerLoad { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; the context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("invalid sampling parameter `{name}`: {reason}")]
    Sampling { name: &'static str, reason: String },
    #[error("{0}")]
    Model(#[from] bora_model::ModelError),
    #[error("{class}: {0}", class = .0.class())]
    Chat(#[from] crate::chat::ChatError),
    #[error("cannot load the model: {0}")]
    Load(#[from] crate::load::LoadError),
    #[error("engine configuration: {0}")]
    Config(String),
    #[error("the prompt has {prompt} tokens{}: together they must fit the context of {context} tokens", max_tokens.map(|m| format!(" and max_tokens is {m}")).unwrap_or_default())]
    ContextExceeded {
        prompt: usize,
        max_tokens: Option<usize>,
        context: usize,
    },
    #[error("the engine is overloaded: {queued} requests are already waiting; retry later")]
    Overloaded { queued: usize },
    #[error("{0}")]
    Constraint(String),
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}
