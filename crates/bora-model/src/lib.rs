//! bora-model: the Mixtral forward pass. Pure computation: no I/O, no threads of its own.
//!
//! [`Model::forward`] runs one step over a [`Batch`] of sequences of different lengths (prefill
//! chunks and single decode tokens alike) against an explicit, preallocated [`KvCache`], and
//! returns logits only for the positions that ask for them.
//!
//! Dimension legend, used in shape comments across this crate: T tokens in the step (all
//! sequences together), L tokens of one sequence, S cached positions attended to, H hidden size,
//! Hq query heads, Hkv key/value heads, G = Hq / Hkv, D head size, E experts, A experts per token,
//! I expert intermediate size, V vocabulary.
//!
//! The forward pass follows transformers' `modeling_mixtral.py` (and candle-transformers'
//! `mixtral.rs`), which the golden tests compare against.

mod attention;
mod batch;
mod decode;
#[cfg(feature = "cuda")]
mod decode_cuda;
mod error;
mod expert_cache;
mod kv_cache;
mod model;
mod moe;
mod moe_split;
mod rope;
pub mod router;

pub use batch::{Batch, Logits, SeqInput};
pub use error::ModelError;
pub use expert_cache::{CachePolicy, CacheStats, DeviceExpert, ExpertCache, LayerUsage, HOT_DECAY};
pub use kv_cache::{KvCache, KV_Q8_0};
pub use model::{Model, DEFAULT_BLOCK_SIZE};
pub use moe::{
    gemv_fits, gemv_shared_bytes, moe_block, LayerRoutes, RoutingStats, DEFAULT_SHARED_BYTES,
};

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
