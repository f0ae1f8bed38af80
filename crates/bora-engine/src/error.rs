//! Errors of the engine.

use std::path::PathBuf;

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
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}
