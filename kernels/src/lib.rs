//! bora-kernels: the compute kernels behind bora's weight types.
//!
//! The CPU kernels multiply f32 activations by weights kept in their stored dtype (f32, bf16 or
//! f16), so that bf16 checkpoints are computed on directly from their memory map, never widened
//! whole. Dimension legend: M activation rows (tokens), K the shared (input) dimension, N weight
//! rows (outputs). Weights are row-major `[N, K]`, the layout of a PyTorch `nn.Linear`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod iq_tables;
pub mod quant;
mod quant_iq;
mod quant_k;

pub use cpu::{
    batch_invariant, batch_invariant_scope, bf16_activations, matmul_many, matmul_xwt, silu_mul,
    BatchInvariantGuard, Isa, Product, Twin, WeightRef,
};
pub use quant::{QBuf, QType};
