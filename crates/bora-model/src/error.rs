//! Errors of the forward pass.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "sequence in cache slot {slot} would reach position {end}, past the cache's {max_len}"
    )]
    ContextFull {
        slot: usize,
        end: usize,
        max_len: usize,
    },
    #[error("cache slot {slot} does not exist (the cache has {slots})")]
    NoSuchSlot { slot: usize, slots: usize },
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}
