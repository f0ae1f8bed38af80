//! `out[M, N] = x[M, K] · W[N, K]ᵀ` over f32, bf16 or f16 weights (see the module docs of `cpu`).
//!
//! Several products can run in one parallel region ([`matmul_many`]): their row blocks become
//! one list of tasks, so that the q/k/v projections, or the experts of a decode step, cost one
//! fork-join instead of one each.

use std::cell::RefCell;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::quant::{dot_rows, ActQuant, QBuf, QType};

use super::bf16dot;
use super::packed::{self, PackedActs, PACK_ROWS};

use super::dot::{
    block_rows, dot_block, gemv_rows, widen_transposed, Element, Isa, DOT_MAX_BLOCK, DOT_MAX_ROWS,
};
use super::qdot::{
    acts_rows, available as qdot_available, dot_acts, dot_q4k, dot_q5k, dot_q6k, dot_q8_0,
    QDOT_ROWS,
};

/// One of bora's own quantized dot products (`qdot`).
type OwnDot = fn(&[&[u8]], &[u8], usize, &mut [f32], usize);

/// Up to this many activation rows, the product runs as dot products over each weight row read
/// once (a few rows at a time stay in registers while the activation rows go past them); above
/// it, as blocked f32 GEMM on widened weight blocks.
pub const GEMV_MAX_ROWS: usize = 16;

/// Bytes of widened f32 weights per GEMM block: the block is written transposed, and stays in
/// a Zen 3 core's 512 KB L2 while it is (measured: 256 KB beats 128 KB, 512 KB and 1 MB).
const GEMM_BLOCK_BYTES: usize = 256 * 1024;

/// Weight rows per parallel task in the dot-product path, at least.
const GEMV_MIN_ROWS_PER_TASK: usize = 16;

/// A borrowed row-major weight matrix in its stored dtype.
#[derive(Debug, Clone, Copy)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    /// Rows of ggml blocks of one type, `K / block_elems` blocks per row.
    Quant(QType, &'a [u8]),
    /// ggml blocks of one type repacked into tiles of 16 rows (`packed`).
    Packed(QType, &'a [u8]),
}

impl WeightRef<'_> {
    /// The number of weight values.
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::BF16(w) => w.len(),
            WeightRef::F16(w) => w.len(),
            WeightRef::Quant(q, w) => w.len() / q.block_bytes() * q.block_elems(),
            WeightRef::Packed(q, w) => {
                let rec = packed::record_bytes(*q).unwrap_or(usize::MAX);
                w.len() / rec * PACK_ROWS * q.block_elems()
            }
        }
    }

    /// The quantized type, for ggml blocks as stored or packed.
    pub fn quantized(&self) -> Option<QType> {
        match self {
            WeightRef::Quant(q, _) | WeightRef::Packed(q, _) => Some(*q),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One product `out[m, n] = x[m, k] · w[n, k]ᵀ`, and optionally a twin with the same input and
/// shape (an expert's gate and up projections): row `j` of both weights is read in one pass over
/// the activations where that pays.
pub struct Product<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub w: WeightRef<'a>,
    pub n: usize,
    pub out: &'a mut [f32],
    pub twin: Option<Twin<'a>>,
}

/// The second weight and output of a [`Product`]: `out[m, n] = x[m, k] · w[n, k]ᵀ`.
pub struct Twin<'a> {
    pub w: WeightRef<'a>,
    pub out: &'a mut [f32],
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

/// What a task needs of its product, without the `&mut` output.
#[derive(Clone, Copy)]
struct Job<'a> {
    /// Row r of x starts at `r * x_stride`.
    x: &'a [f32],
    x_stride: usize,
    m: usize,
    k: usize,
    w: WeightRef<'a>,
    n: usize,
    out: OutPtr,
    /// A twin computed in the same pass (same dtype, up to [`GEMV_MAX_ROWS`] activation rows).
    twin: Option<(WeightRef<'a>, OutPtr)>,
    /// The activation rows quantized for a quantized `w` and twin.
    qx: [Option<&'a QActs>; 2],
    /// Batch-invariant: the dot-product path for any `m`, fixed summation order.
    invariant: bool,
    /// The activation rows quantized for a packed `w`.
    packed: Option<&'a PackedActs>,
    /// The activation rows rounded to bf16 for a bf16 `w` (AVX512_BF16).
    xb: Option<&'a bf16dot::Acts>,
}

/// The activation rows in `acts` quantized for `w`, when `w` is quantized.
fn acts_for<'a>(acts: &'a [QActs], w: WeightRef<'_>) -> Option<&'a QActs> {
    match w {
        WeightRef::Quant(q, _) => acts.iter().find(|a| a.kind == q.act_quant()),
        _ => None,
    }
}

/// Activation rows quantized to the blocks a quantized weight's dot products take.
struct QActs {
    kind: ActQuant,
    buf: QBuf,
    row_bytes: usize,
    /// The bytes of a row's blocks (the rest is the tail of [`ActQuant::row_bytes`]).
    block_bytes: usize,
}

impl QActs {
    fn new(kind: ActQuant, x: &[f32], m: usize, k: usize) -> Self {
        let row_bytes = kind.row_bytes(k);
        let mut buf = QBuf::zeroed(m * row_bytes);
        if row_bytes > 0 {
            for (row, q) in x
                .chunks_exact(k)
                .zip(buf.as_bytes_mut().chunks_exact_mut(row_bytes))
            {
                kind.quantize_row(row, q);
            }
        }
        Self {
            kind,
            buf,
            row_bytes,
            block_bytes: k / kind.block_elems() * kind.block_bytes(),
        }
    }

    /// Row `r` with its tail, for bora's kernels.
    fn row(&self, r: usize) -> &[u8] {
        &self.buf.as_bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r`'s blocks alone, for candle's dot products.
    fn blocks(&self, r: usize) -> &[u8] {
        &self.row(r)[..self.block_bytes]
    }
}

/// `out[M, N] = x[M, K] · W[N, K]ᵀ`. `x` is `M·K` long, `w` `N·K`, `out` `M·N`.
///
/// # Panics
/// If the slice lengths do not match `m`, `k` and `n`: callers check shapes first.
pub fn matmul_xwt(x: &[f32], m: usize, k: usize, w: WeightRef<'_>, n: usize, out: &mut [f32]) {
    matmul_many(&mut [Product {
        x,
        m,
        k,
        w,
        n,
        out,
        twin: None,
    }]);
}

/// Runs every product, splitting all of them into one list of parallel tasks.
///
/// # Panics
/// If a product's slice lengths do not match its `m`, `k` and `n`.
pub fn matmul_many(products: &mut [Product<'_>]) {
    let threads = rayon::current_num_threads().max(1);
    let invariant = super::batch_invariant();
    // The dot-product path, where it is taken for this many rows.
    let gemv = |m: usize| m <= GEMV_MAX_ROWS || invariant;
    // The dot-product path reads its activation rows at a stride that is not a multiple of
    // 4 KB: at K 1024 (4 KB rows) every row fell in the same L1 set, and beyond 4 rows (plus
    // the weight rows) they evicted each other on every load (m 8 ran at a quarter of m 4).
    // bf16 weights take `vdpbf16ps` where the CPU has it, for every `m`, on activations
    // rounded to bf16 once per product.
    let rounded: Vec<Option<bf16dot::Acts>> = products
        .iter()
        .map(|p| {
            let bf16 = matches!(p.w, WeightRef::BF16(_)) && bf16dot::taken();
            (bf16 && p.m > 0 && p.k > 0 && p.x.len() == p.m * p.k)
                .then(|| bf16dot::Acts::new(p.x, p.k, p.m, p.k))
        })
        .collect();
    let padded: Vec<Option<(Vec<f32>, usize, usize)>> = products
        .iter()
        .zip(&rounded)
        .map(|(p, rounded)| {
            let float = p.w.quantized().is_none() && rounded.is_none();
            let dot = float && p.m >= 2 && gemv(p.m) && p.k > 0;
            (dot && p.x.len() == p.m * p.k).then(|| pad_rows(p.x, p.m, p.k))
        })
        .collect();
    // Quantized weights take activations quantized once per product (and kind), as ggml does;
    // packed weights, once per product and type, with the sums their kernels take.
    type Acts = (Vec<QActs>, Vec<(QType, PackedActs)>);
    let all_acts: Vec<Acts> = products
        .iter()
        .map(|p| {
            let (mut quant, mut packed): Acts = (Vec::new(), Vec::new());
            let ws = std::iter::once(p.w).chain(p.twin.as_ref().map(|t| t.w));
            for w in ws {
                let Some(q) = w.quantized() else { continue };
                assert!(
                    p.k.is_multiple_of(q.block_elems()) && p.x.len() == p.m * p.k,
                    "matmul: {q} weight rows of {} values are not whole blocks",
                    p.k
                );
                match w {
                    WeightRef::Packed(..) if p.m > 0 && !packed.iter().any(|a| a.0 == q) => {
                        packed.push((q, PackedActs::new(q, p.x, p.m, p.k)))
                    }
                    WeightRef::Quant(..) if !quant.iter().any(|a| a.kind == q.act_quant()) => {
                        quant.push(QActs::new(q.act_quant(), p.x, p.m, p.k))
                    }
                    _ => {}
                }
            }
            (quant, packed)
        })
        .collect();
    let mut jobs = Vec::with_capacity(products.len());
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new(); // (job, first row, rows)
    for (((p, pad), (acts, pacts)), xb) in products
        .iter_mut()
        .zip(&padded)
        .zip(&all_acts)
        .zip(&rounded)
    {
        assert_eq!(p.x.len(), p.m * p.k, "matmul: x is not [m, k]");
        assert_eq!(p.w.len(), p.n * p.k, "matmul: w is not [n, k]");
        assert_eq!(p.out.len(), p.m * p.n, "matmul: out is not [m, n]");
        if let Some(t) = &p.twin {
            assert_eq!(t.w.len(), p.n * p.k, "matmul: twin w is not [n, k]");
            assert_eq!(t.out.len(), p.m * p.n, "matmul: twin out is not [m, n]");
        }
        let quant = p.w.quantized().is_some();
        let packed = matches!(p.w, WeightRef::Packed(..));
        if packed {
            assert!(
                p.n.is_multiple_of(PACK_ROWS),
                "matmul: packed rows are not whole tiles"
            );
        }
        if p.m == 0 || p.n == 0 {
            continue;
        }
        if p.k == 0 {
            p.out.fill(0.0);
            if let Some(t) = p.twin.as_mut() {
                t.out.fill(0.0);
            }
            continue;
        }
        let block = if packed {
            // Whole tiles; several tasks per thread, so that a thread slowed down by another
            // process sharing its core leaves its rest to the others.
            p.n.div_ceil(threads * 4)
                .max(PACK_ROWS)
                .next_multiple_of(PACK_ROWS)
        } else if gemv(p.m) || quant || xb.is_some() {
            p.n.div_ceil(threads * 4).max(GEMV_MIN_ROWS_PER_TASK)
        } else {
            let cache_rows = (GEMM_BLOCK_BYTES / (4 * p.k)).max(8) / 8 * 8;
            let balanced = p.n.div_ceil(threads).div_ceil(8) * 8;
            cache_rows.min(balanced).max(8)
        };
        let same_dtype = |a: WeightRef<'_>, b: WeightRef<'_>| {
            std::mem::discriminant(&a) == std::mem::discriminant(&b)
        };
        let mut halves = vec![(p.w, OutPtr(p.out.as_mut_ptr()), None)];
        if let Some(t) = p.twin.as_mut() {
            let twin = (t.w, OutPtr(t.out.as_mut_ptr()));
            if (gemv(p.m) || quant) && same_dtype(p.w, t.w) && !packed && xb.is_none() {
                halves[0].2 = Some(twin);
            } else {
                halves.push((twin.0, twin.1, None));
            }
        }
        for (w, out, twin) in halves {
            let j = jobs.len();
            let (x, x_stride) = match pad {
                Some((buf, start, stride)) => (&buf[*start..], *stride),
                None => (p.x, p.k),
            };
            jobs.push(Job {
                x,
                x_stride,
                m: p.m,
                k: p.k,
                w,
                n: p.n,
                out,
                twin,
                qx: [acts_for(acts, w), twin.and_then(|t| acts_for(acts, t.0))],
                invariant,
                packed: match w {
                    WeightRef::Packed(q, _) => pacts.iter().find(|a| a.0 == q).map(|a| &a.1),
                    _ => None,
                },
                xb: xb.as_ref().filter(|_| matches!(w, WeightRef::BF16(_))),
            });
            tasks.extend(
                (0..p.n)
                    .step_by(block)
                    .map(|j0| (j, j0, block.min(p.n - j0))),
            );
        }
    }
    let run = |&(j, j0, rows): &(usize, usize, usize)| {
        let job = &jobs[j];
        match (job.w, job.twin) {
            (WeightRef::F32(a), Some((WeightRef::F32(b), o))) => {
                gemv_task(job, &[(a, job.out), (b, o)], j0, rows)
            }
            (WeightRef::BF16(a), Some((WeightRef::BF16(b), o))) => {
                gemv_task(job, &[(a, job.out), (b, o)], j0, rows)
            }
            (WeightRef::F16(a), Some((WeightRef::F16(b), o))) => {
                gemv_task(job, &[(a, job.out), (b, o)], j0, rows)
            }
            (WeightRef::Quant(qa, a), Some((WeightRef::Quant(qb, b), o))) => quant_task(
                job,
                &[(qa, a, job.out), (qb, b, o)],
                job.qx.map(|q| q.expect("quantized activations")),
                j0,
                rows,
            ),
            (WeightRef::Quant(q, w), _) => quant_task(
                job,
                &[(q, w, job.out)],
                [job.qx[0].expect("quantized activations"); 2],
                j0,
                rows,
            ),
            (WeightRef::Packed(q, w), _) => {
                let acts = job.packed.expect("packed activations");
                let out = job.out.get();
                // SAFETY: this task's columns j0..j0 + rows (whole tiles) of every output row
                // are its own; `out + j0` with row stride n stays inside the [m, n] output.
                unsafe {
                    packed::tiles(
                        q,
                        w,
                        acts,
                        j0 / PACK_ROWS..(j0 + rows) / PACK_ROWS,
                        out.add(j0),
                        job.n,
                    )
                }
            }
            (WeightRef::F32(w), _) => task(job, w, j0, rows),
            (WeightRef::BF16(w), _) if job.xb.is_some() => {
                let xb = job.xb.expect("bf16 activations");
                let k = job.k;
                // SAFETY: this task's columns j0..j0 + rows of every output row are its own;
                // the output is [m, n].
                unsafe {
                    bf16dot::rows(
                        xb,
                        &w[j0 * k..(j0 + rows) * k],
                        rows,
                        job.out.get(),
                        job.n,
                        j0,
                    )
                }
            }
            (WeightRef::BF16(w), _) => task(job, w, j0, rows),
            (WeightRef::F16(w), _) => task(job, w, j0, rows),
        }
    };
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// `x` (`[m, k]`) copied to rows 64-byte aligned, at a stride of an odd number of 64-byte lines:
/// returns the buffer, where row 0 starts in it, and the stride.
fn pad_rows(x: &[f32], m: usize, k: usize) -> (Vec<f32>, usize, usize) {
    let lines = k.div_ceil(16) | 1;
    let stride = lines * 16;
    let mut buf = vec![0f32; m * stride + 16];
    let start = buf.as_ptr().align_offset(64).min(15);
    for (r, row) in x.chunks_exact(k).enumerate() {
        buf[start + r * stride..start + r * stride + k].copy_from_slice(row);
    }
    (buf, start, stride)
}

/// Rows `j0..j0 + rows` of one product.
fn task<W: Element>(job: &Job<'_>, w: &[W], j0: usize, rows: usize) {
    let (m, k, n) = (job.m, job.k, job.n);
    if m <= GEMV_MAX_ROWS || job.invariant {
        gemv_task(job, &[(w, job.out)], j0, rows)
    } else {
        gemm_rows(job, &w[j0 * k..(j0 + rows) * k], j0, rows, m, k, n)
    }
}

/// Rows `j0..j0 + rows` of each source (a `[n, k]` weight and its `[m, n]` output: a product,
/// or a product and its twin, row `j` of both side by side), as dot products over blocks of
/// weight rows that share each activation load.
fn gemv_task<W: Element>(job: &Job<'_>, sources: &[(&[W], OutPtr)], j0: usize, rows: usize) {
    let (m, k, n) = (job.m, job.k, job.n);
    let isa = Isa::get();
    if m == 1 || job.invariant {
        // One activation row (decode): each source's rows are one contiguous stream, read
        // front to back in one kernel call (row by row through `dot_block`, the dispatch per
        // row took about 5% of F16 decode, and the gate and up rows were read in turn).
        // Batch-invariant: every activation row so, as decode computes it, so that a row's
        // bits are a decode step's whatever the batch (a verified draft's, a prefill's).
        for r in 0..m {
            let x = &job.x[r * job.x_stride..r * job.x_stride + k];
            for &(w, out) in sources {
                // SAFETY: this task's columns j0..j0 + rows of output row r < m are its own (no
                // other task writes them) and lie inside the [m, n] output.
                let out =
                    unsafe { std::slice::from_raw_parts_mut(out.get().add(r * n + j0), rows) };
                gemv_rows(isa, &w[j0 * k..(j0 + rows) * k], k, x, out);
            }
        }
        return;
    }
    let xs: Vec<&[f32]> = (0..m)
        .map(|r| &job.x[r * job.x_stride..r * job.x_stride + k])
        .collect();
    let lines: Vec<(&[W], OutPtr, usize)> = (j0..j0 + rows)
        .flat_map(|j| {
            sources
                .iter()
                .map(move |&(w, out)| (&w[j * k..(j + 1) * k], out, j))
        })
        .collect();
    // Activation rows go past a block of weight rows in groups of up to 8, the block staying
    // in L1 from one group to the next.
    let groups: Vec<(usize, &[&[f32]])> = (0..m)
        .step_by(DOT_MAX_ROWS)
        .map(|r0| (r0, &xs[r0..m.min(r0 + DOT_MAX_ROWS)]))
        .collect();
    let nw = groups
        .iter()
        .map(|g| block_rows(isa, g.1.len()))
        .min()
        .unwrap_or(1);
    let mut accs = [[0f32; DOT_MAX_ROWS]; DOT_MAX_BLOCK];
    for block in lines.chunks(nw) {
        let mut ws: [&[W]; DOT_MAX_BLOCK] = [&[]; DOT_MAX_BLOCK];
        for (w, line) in ws.iter_mut().zip(block) {
            *w = line.0;
        }
        for &(r0, xs) in &groups {
            dot_block(isa, &ws[..block.len()], xs, &mut accs, false);
            for (acc, &(_, out, j)) in accs.iter().zip(block) {
                for (r, &a) in acc[..xs.len()].iter().enumerate() {
                    // SAFETY: r0 + r < m and j < n, inside the output; column j belongs to
                    // this task.
                    unsafe { *out.get().add((r0 + r) * n + j) = a };
                }
            }
        }
    }
}

/// Activation rows per pass over a block of quantized weight rows (their quantized rows stay
/// in L2 while the block stays in L1).
const QUANT_ACT_ROWS: usize = 16;
/// Quantized weight rows per block.
const QUANT_BLOCK_ROWS: usize = 8;

/// Rows `j0..j0 + rows` of each quantized source (type, `[n, k]` blocks, output), dotted with
/// the activation rows quantized for it (`acts[i]` for source `i`).
fn quant_task(
    job: &Job<'_>,
    sources: &[(QType, &[u8], OutPtr)],
    acts: [&QActs; 2],
    j0: usize,
    rows: usize,
) {
    let (m, k, n) = (job.m, job.k, job.n);
    let mut dots = [0f32; QUANT_ACT_ROWS];
    let mut xs: [&[u8]; QUANT_ACT_ROWS] = [&[]; QUANT_ACT_ROWS];
    for b0 in (j0..j0 + rows).step_by(QUANT_BLOCK_ROWS) {
        let b1 = (b0 + QUANT_BLOCK_ROWS).min(j0 + rows);
        for r0 in (0..m).step_by(QUANT_ACT_ROWS) {
            let cnt = QUANT_ACT_ROWS.min(m - r0);
            for (s, &(q, w, out)) in sources.iter().enumerate() {
                let row_bytes = w.len() / n;
                let row = |j: usize| &w[j * row_bytes..(j + 1) * row_bytes];
                let write = |j: usize, r: usize, d: f32| {
                    // SAFETY: r < m and j < n, inside the output; column j belongs to this
                    // task.
                    unsafe { *out.get().add(r * n + j) = d };
                };
                let own: Option<OwnDot> = match q {
                    _ if !qdot_available() => None,
                    QType::Q8_0 => Some(dot_q8_0),
                    QType::Q4K => Some(dot_q4k),
                    QType::Q5K => Some(dot_q5k),
                    QType::Q6K => Some(dot_q6k),
                    _ => None,
                };
                if let Some(own_dot) = own {
                    let blocks = k / q.block_elems();
                    let per_call = acts_rows(q);
                    // Batch-invariant: every row by the one-row kernel, as decode runs it.
                    let many = cnt >= 4 && !job.invariant;
                    if per_call > 0 && many {
                        // Prefill: each weight row unpacked once for several activation rows.
                        let mut xr: [&[u8]; QUANT_ACT_ROWS] = [&[]; QUANT_ACT_ROWS];
                        let mut d = [0f32; QUANT_ACT_ROWS];
                        for a0 in (r0..r0 + cnt).step_by(per_call) {
                            let a1 = (a0 + per_call).min(r0 + cnt);
                            for (slot, r) in xr.iter_mut().zip(a0..a1) {
                                *slot = acts[s].row(r);
                            }
                            for j in b0..b1 {
                                dot_acts(q, row(j), &xr[..a1 - a0], blocks, &mut d);
                                for (r, &d) in (a0..a1).zip(&d) {
                                    write(j, r, d);
                                }
                            }
                        }
                        continue;
                    }
                    let mut ws: [&[u8]; QUANT_BLOCK_ROWS] = [&[]; QUANT_BLOCK_ROWS];
                    for (slot, j) in ws.iter_mut().zip(b0..b1) {
                        *slot = row(j);
                    }
                    // With few activation rows, one weight row at a time (4 at once measured
                    // half the decode speed: the 4-row kernels keep more vectors live than
                    // AVX2 has registers). With many, 4 rows share each activation load
                    // (prefill 1.3x faster).
                    let group = if many { QDOT_ROWS } else { 1 };
                    let mut d8 = [0f32; QUANT_BLOCK_ROWS];
                    for r in r0..r0 + cnt {
                        own_dot(&ws[..b1 - b0], acts[s].row(r), blocks, &mut d8, group);
                        for (j, &d) in (b0..b1).zip(&d8) {
                            write(j, r, d);
                        }
                    }
                    continue;
                }
                for (r, x) in xs[..cnt].iter_mut().enumerate() {
                    *x = acts[s].blocks(r0 + r);
                }
                for j in b0..b1 {
                    dot_rows(q, k, row(j), &xs[..cnt], &mut dots[..cnt]);
                    for (r, &d) in dots[..cnt].iter().enumerate() {
                        write(j, r0 + r, d);
                    }
                }
            }
        }
    }
}

thread_local! {
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn gemm_rows<W: Element>(
    job: &Job<'_>,
    w: &[W],
    j0: usize,
    rows: usize,
    m: usize,
    k: usize,
    n: usize,
) {
    let dst = job.out;
    let x = job.x;
    // rhs[kk, j] = W[j0 + j, kk] sits at (rhs_cs, rhs_rs) strides from `rhs`.
    let run = |rhs: &[f32], rhs_cs: isize, rhs_rs: isize| {
        // SAFETY: `rhs` holds the [rows, k] block (in either layout); `x` is [m, k] at row
        // stride `x_stride`; the
        // destination is the [m, rows] window of `out` at column j0 with row stride n, written
        // by this task alone.
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
                job.x_stride as isize,
                rhs.as_ptr(),
                rhs_cs,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    if std::any::TypeId::of::<W>() == std::any::TypeId::of::<f32>() {
        // SAFETY: W is f32 (checked by TypeId), so the slice reinterprets to itself.
        let w = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const f32, w.len()) };
        run(w, k as isize, 1);
    } else {
        // Widened straight into the column-major layout gemm's kernel reads, so that gemm
        // does not copy the block again to pack it.
        WIDE.with(|buf| {
            let mut buf = buf.borrow_mut();
            widen_transposed(w, rows, k, &mut buf);
            run(&buf, 1, rows as isize);
        });
    }
}

#[cfg(test)]
mod tests;
