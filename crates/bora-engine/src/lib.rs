#![warn(missing_docs)]
//! bora-engine: everything between text and the forward pass.
//!
//! Today: the tokenizer ([`Tokenizer`], from `tokenizer.json` or a sentencepiece model, all
//! input as plain text), an incremental detokenizer for streaming, Mistral's chat formats
//! ([`chat`], token for token as mistral-common renders them), the sampler (greedy,
//! temperature, seeded), single-sequence generation ([`generate`]) and scoring
//! ([`perplexity`]). The scheduler and the request API come with the issues that specify them.

pub mod chat;
pub mod constrain;
mod demo;
mod error;
mod generate;
pub mod hub;
pub mod load;
mod logprobs;
mod perplexity;
mod routes;
mod routes_summary;
mod sampler;
pub mod serve;
mod tokenizer;

pub use bora_model::{CachePolicy, CacheStats};
pub use constrain::ToolChoice;
pub use demo::{demo_model_dir, demo_v3_model_dir, DEMO_MODEL_NAME, DEMO_SEED, DEMO_V3_MODEL_NAME};
pub use error::EngineError;
pub use generate::{generate, GenerateOptions, Generation};
pub use load::{
    load_model, LoadError, LoadInfo, LoadPhase, LoadProgress, LoadedModel, ModelOptions,
    ModelSource,
};
pub use logprobs::{Logprob, TokenLogprobs, LOGPROB_FLOOR, MAX_TOP_LOGPROBS};
pub use perplexity::{perplexity, Perplexity};
pub use routes::{trace_routes, RouteOptions, StepRoutes};
pub use routes_summary::{RouteSummary, SummaryNumbers};
pub use sampler::{Sampler, SamplingParams};
pub use serve::{
    Choice, Completion, CompletionResult, CompletionStream, Engine, EngineConfig, EngineStats,
    Event, FinishReason, ForbidTokens, KvBudget, KvEvent, KvEventSink, LogitsProcessor, Penalties,
    Priority, ProcessorFactory, Timeout, Usage,
};
pub use tokenizer::{IncrementalDecoder, PieceKind, SpecialTokens, SpmPiece, SpmVocab, Tokenizer};

/// Result with [`EngineError`].
pub type Result<T> = std::result::Result<T, EngineError>;
