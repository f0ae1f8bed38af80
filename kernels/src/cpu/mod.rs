//! CPU kernels. `matmul_xwt` computes `out[M, N] = x[M, K] · W[N, K]ᵀ`:
//!
//! * decode-sized `M` (up to [`GEMV_MAX_ROWS`]): each weight row is read once from memory and
//!   dotted with every activation row, a few weight rows at a time so that each activation
//!   load serves several of them, with AVX-512F or AVX2/FMA/F16C ([`Isa`]) when the CPU has
//!   them: a bandwidth-bound pass over the weights for a few rows, FMA-bound beyond;
//! * larger `M` (prefill): weight rows are widened to f32 a cache-sized block at a time, written
//!   column-major (the layout `gemm`'s microkernel reads without packing it again), and
//!   multiplied with the `gemm` crate's f32 kernel: the conversion is paid once per block while
//!   the product reuses it `M` times.
//!
//! Both split the weight rows across rayon's threads.

mod dot;
pub use dot::Isa;
mod matmul;
pub(crate) mod qdot;

pub use matmul::{matmul_many, matmul_xwt, Product, Twin, WeightRef, GEMV_MAX_ROWS};

/// `gate[i] = silu(gate[i]) * up[i]`, SwiGLU's gating, in place.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
