//! CPU kernels. `matmul_xwt` computes `out[M, N] = x[M, K] · W[N, K]ᵀ`:
//!
//! * decode-sized `M` (up to [`GEMV_MAX_ROWS`]): each weight row is read once from memory and
//!   dotted with every activation row, a few weight rows at a time so that each activation
//!   load serves several of them, with AVX-512F or AVX2/FMA/F16C ([`Isa`]) when the CPU has
//!   them: a bandwidth-bound pass over the weights for a few rows, FMA-bound beyond; one row
//!   (decode) reads a task's weight rows front to back as one stream, without software
//!   prefetch (which halved what one core streamed);
//! * larger `M` (prefill): weight rows are widened to f32 a cache-sized block at a time, written
//!   column-major (the layout `gemm`'s microkernel reads without packing it again), and
//!   multiplied with the `gemm` crate's f32 kernel: the conversion is paid once per block while
//!   the product reuses it `M` times.
//!
//! * bf16 weights on a CPU with AVX512_BF16 ([`bf16_activations`]): `vdpbf16ps` for every `M`,
//!   the activations rounded to bf16 (`bf16dot.rs`).
//!
//! All split the weight rows across rayon's threads.
//!
//! **Batch-invariant mode** ([`batch_invariant_scope`]): every activation row's result is the
//! same bits whatever else is in the product (how many rows, which position): every `M` takes
//! the dot-product path with one accumulator per (weight row, activation row) (no unrolled
//! partial sums, whose count depends on the block shape), and quantized weights take the
//! one-row decode kernels. Prefill is slower in it; decode mostly is not.

pub mod attn;
mod bf16dot;
mod dot;
pub(crate) mod iqdot;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub use bf16dot::available as bf16_activations;
pub use dot::{widen, Element, Isa};
mod matmul;
pub mod packed;
pub(crate) mod qdot;
mod warm;
pub use warm::warm;

pub use matmul::{matmul_many, matmul_xwt, Product, Twin, WeightRef, GEMV_MAX_ROWS};

use std::cell::Cell;

thread_local! {
    static BATCH_INVARIANT: Cell<bool> = const { Cell::new(false) };
}

/// Whether products started on this thread run batch-invariant (see the module docs).
pub fn batch_invariant() -> bool {
    BATCH_INVARIANT.with(Cell::get)
}

/// Products started on this thread run batch-invariant (or not) until the guard drops; the
/// setting before it comes back then.
#[must_use = "the setting lasts while the guard lives"]
pub fn batch_invariant_scope(on: bool) -> BatchInvariantGuard {
    BatchInvariantGuard {
        before: BATCH_INVARIANT.with(|c| c.replace(on)),
    }
}

/// Restores the thread's batch-invariant setting when dropped.
pub struct BatchInvariantGuard {
    before: bool,
}

impl Drop for BatchInvariantGuard {
    fn drop(&mut self) {
        BATCH_INVARIANT.with(|c| c.set(self.before));
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`, SwiGLU's gating, in place.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
