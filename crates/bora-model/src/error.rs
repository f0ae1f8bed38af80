//! Errors of the forward pass.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("the sequence would reach position {end}, past the {max_len} positions of its blocks")]
    ContextFull { end: usize, max_len: usize },
    #[error("KV block {block} does not exist (the cache has {blocks})")]
    NoSuchBlock { block: u32, blocks: usize },
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Weights(#[from] bora_weights::WeightsError),
}
