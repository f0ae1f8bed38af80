//! bora-engine: everything between text and the forward pass.
//!
//! Today: the tokenizer ([`Tokenizer`], a Hugging Face `tokenizer.json` that treats all input
//! as plain text), an incremental detokenizer for streaming, the sampler (greedy, temperature,
//! seeded), single-sequence generation ([`generate`]) and scoring ([`perplexity`]). The chat
//! formats, the scheduler and the request API come with the issues that specify them.

mod error;
mod generate;
mod perplexity;
mod sampler;
mod tokenizer;

pub use error::EngineError;
pub use generate::{generate, FinishReason, GenerateOptions, Generation};
pub use perplexity::{perplexity, Perplexity};
pub use sampler::{Sampler, SamplingParams};
pub use tokenizer::{IncrementalDecoder, Tokenizer};

/// Result with [`EngineError`].
pub type Result<T> = std::result::Result<T, EngineError>;
