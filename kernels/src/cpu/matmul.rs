//! `out[M, N] = x[M, K] · W[N, K]ᵀ` over f32, bf16 or f16 weights (see the module docs of `cpu`).

use std::cell::RefCell;

use half::{bf16, f16};
use rayon::prelude::*;

use super::dot::{dot_rows, widen, Element};

/// Up to this many activation rows, the product runs as dot products over each weight row read
/// once; above it, as blocked f32 GEMM on widened weight blocks.
pub const GEMV_MAX_ROWS: usize = 4;

/// Bytes of widened f32 weights per GEMM block: half of a Zen 3 core's 512 KB L2.
const GEMM_BLOCK_BYTES: usize = 256 * 1024;

/// Weight rows per parallel task in the dot-product path, at least.
const GEMV_MIN_ROWS_PER_TASK: usize = 16;

/// A borrowed row-major weight matrix in its stored dtype.
#[derive(Debug, Clone, Copy)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl WeightRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::BF16(w) => w.len(),
            WeightRef::F16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output elements (its own weight rows' columns).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer; a method, so that closures capture the whole (Send) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[M, N] = x[M, K] · W[N, K]ᵀ`. `x` is `M·K` long, `w` `N·K`, `out` `M·N`.
///
/// # Panics
/// If the slice lengths do not match `m`, `k` and `n`: callers check shapes first.
pub fn matmul_xwt(x: &[f32], m: usize, k: usize, w: WeightRef<'_>, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), m * k, "matmul_xwt: x is not [m, k]");
    assert_eq!(w.len(), n * k, "matmul_xwt: w is not [n, k]");
    assert_eq!(out.len(), m * n, "matmul_xwt: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    match w {
        WeightRef::F32(w) => dispatch(x, m, k, w, n, out),
        WeightRef::BF16(w) => dispatch(x, m, k, w, n, out),
        WeightRef::F16(w) => dispatch(x, m, k, w, n, out),
    }
}

fn dispatch<W: Element>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, out: &mut [f32]) {
    if m <= GEMV_MAX_ROWS {
        gemv(x, m, k, w, n, out)
    } else {
        gemm_blocked(x, m, k, w, n, out)
    }
}

fn gemv<W: Element>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, out: &mut [f32]) {
    let simd = W::simd_available();
    let xs: Vec<&[f32]> = x.chunks_exact(k).collect();
    let threads = rayon::current_num_threads().max(1);
    let per_task = n.div_ceil(threads * 4).max(GEMV_MIN_ROWS_PER_TASK);
    let dst = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let mut acc = [0f32; GEMV_MAX_ROWS];
        for j in t * per_task..((t + 1) * per_task).min(n) {
            dot_rows(simd, &w[j * k..(j + 1) * k], &xs, &mut acc);
            for (r, &a) in acc[..m].iter().enumerate() {
                // SAFETY: r < m and j < n, so r·n + j is inside `out`; column j belongs to
                // this task alone.
                unsafe { *dst.get().add(r * n + j) = a };
            }
        }
    });
}

thread_local! {
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn gemm_blocked<W: Element>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, out: &mut [f32]) {
    let threads = rayon::current_num_threads().max(1);
    let cache_rows = (GEMM_BLOCK_BYTES / (4 * k)).max(8) / 8 * 8;
    let balanced = n.div_ceil(threads).div_ceil(8) * 8;
    let block = cache_rows.min(balanced).max(8);
    let dst = OutPtr(out.as_mut_ptr());
    let is_f32 = std::any::TypeId::of::<W>() == std::any::TypeId::of::<f32>();
    (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
        let j0 = b * block;
        let rows = block.min(n - j0);
        let src = &w[j0 * k..(j0 + rows) * k];
        let run = |wide: &[f32]| {
            // SAFETY: `wide` is [rows, k] row-major; `x` is [m, k]; the destination is the
            // [m, rows] window of `out` at column j0 with row stride n, written by this task
            // alone. gemm reads rhs[kk, j] at wide + kk·1 + j·k.
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    dst.get().add(j0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    wide.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        };
        if is_f32 {
            // SAFETY: W is f32 (checked by TypeId), so the slice reinterprets to itself.
            let wide = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const f32, src.len()) };
            run(wide);
        } else {
            WIDE.with(|buf| {
                let mut buf = buf.borrow_mut();
                widen(src, &mut buf);
                run(&buf);
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn all_paths_match_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &(m, k, n) in &[
            (1, 5, 3),
            (1, 64, 100),
            (3, 33, 17),
            (4, 128, 64),
            (5, 40, 9),
            (17, 96, 130),
            (64, 200, 37),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let wf: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            // Round to bf16 so that all three weight types hold the same values.
            let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
            let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
            let want = reference(&x, m, k, &wf, n);
            for w in [
                WeightRef::F32(&wf),
                WeightRef::BF16(&wb),
                WeightRef::F16(&wh),
            ] {
                let mut out = vec![f32::NAN; m * n];
                matmul_xwt(&x, m, k, w, n, &mut out);
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{m}x{k}x{n} {w:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
