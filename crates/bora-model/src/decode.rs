//! Attention on the CPU in f32 over an f32, f16, bf16 or q8_0 KV pool (other rows than f32 are
//! widened a block of [`SUB`] positions at a time; a decode token reads f16 and bf16 rows in
//! the kernel itself), computed in place over the pool: no gather of a sequence's
//! keys and values and no score matrix, the softmax taken online over blocks of positions
//! (flash attention's scheme). Decode steps attend one token per task, its keys split into
//! fixed chunks; prefill chunks attend [`TOKENS`] consecutive tokens per task, each key row read
//! once for all of them. In batch-invariant mode prefill takes the decode path, one token at a
//! time, so that a position's attention is computed the same way whether it is decoded or
//! prefilled, and whatever the chunking or the batch.

use bora_kernels::cpu::attn::{attend_one, exp, max, sum, Heads};
use bora_kernels::QType;
use bora_weights::{with_cpu, with_cpu_f32};
use candle_core::{DType, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::attention::AttentionCtx;
use crate::kv_cache::{KvCache, KV_Q8_0};
use crate::rope::Rope;
use crate::{ModelError, Result, SeqInput};

/// `q` `[T, Hq·D]`, `k` and `v` `[T, Hkv·D]` (f32, CPU, contiguous) of a step; sequence
/// `seqs[i]`'s tokens are rows `rows[i]..rows[i] + seqs[i].tokens.len()`. Writes their keys and
/// values into the cache and returns their attention outputs `[n, Hq·D]`, `n` the tokens of all
/// of them, in order. `invariant`: one token per task, whatever the sequence's length.
pub(crate) fn pool_attention(
    ctx: &AttentionCtx<'_>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: &[usize],
    seqs: &[&SeqInput],
    cache: &KvCache,
) -> Result<Tensor> {
    let cfg = ctx.cfg;
    let invariant = ctx.invariant;
    let (hq, hkv, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (cos, sin) = ctx
        .rope
        .host()
        .ok_or_else(|| ModelError::Batch("no host rotary tables".into()))?;
    // (sequence, position) of each token, and its row in the step.
    let toks: Vec<(usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.tokens.len()).map(move |t| (i, s.start_pos + t)))
        .collect();
    let step_rows: Vec<usize> = seqs
        .iter()
        .zip(rows)
        .flat_map(|(s, &r)| r..r + s.tokens.len())
        .collect();
    let (qa, ka, va) = (
        rows_of(q, &step_rows)?,
        rows_of(k, &step_rows)?,
        rows_of(v, &step_rows)?,
    );
    let n = toks.len();
    let mut qr = qa;
    let mut kr = ka;
    for (t, &(_, pos)) in toks.iter().enumerate() {
        for h in qr[t * hq * d..(t + 1) * hq * d].chunks_exact_mut(d) {
            Rope::rotate(cos, sin, pos, h);
        }
        for h in kr[t * hkv * d..(t + 1) * hkv * d].chunks_exact_mut(d) {
            Rope::rotate(cos, sin, pos, h);
        }
    }
    let kv = cache.layer(ctx.layer);
    let dev = q.device();
    for (t, &(i, pos)) in toks.iter().enumerate() {
        let row = cache.row(&seqs[i].blocks, pos);
        let span = t * hkv * d..(t + 1) * hkv * d;
        let kt = pool_row(&kr[span.clone()], hkv, d, kv.k.dtype(), dev)?;
        let vt = pool_row(&va[span], hkv, d, kv.v.dtype(), dev)?;
        kv.k.slice_set(&kt, 0, row)?;
        kv.v.slice_set(&vt, 0, row)?;
    }
    let scale = 1.0 / (d as f32).sqrt();
    for x in qr.iter_mut() {
        *x *= scale;
    }
    let shape = Heads { hq, hkv, d };
    // Blocks of tokens, one sequence's consecutive positions each: (first token, tokens).
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut first = 0;
    for s in seqs {
        let l = s.tokens.len();
        let per = if invariant { 1 } else { TOKENS };
        blocks.extend((0..l).step_by(per).map(|u| (first + u, per.min(l - u))));
        first += l;
    }
    // Each block's keys split into chunks, one task each; the chunks' partial softmaxes merge
    // afterwards. A lone token's chunks are CHUNK positions from its first key, so that its
    // attention is the same whatever the batch or the thread count; a block's are as many as
    // keep every worker busy.
    let busy = 4 * rayon::current_num_threads();
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new(); // (block, first key, end)
    let mut first_task = Vec::with_capacity(blocks.len() + 1);
    for (bi, &(t0, nt)) in blocks.iter().enumerate() {
        first_task.push(tasks.len());
        let lo = crate::attention::first_key(cfg.sliding_window, toks[t0].1);
        let hi = toks[t0 + nt - 1].1 + 1;
        let len = if nt == 1 {
            CHUNK
        } else {
            let pieces = busy.div_ceil(blocks.len()).min((hi - lo).div_ceil(CHUNK));
            (hi - lo).div_ceil(pieces.max(1))
        };
        tasks.extend((lo..hi).step_by(len).map(|a| (bi, a, (a + len).min(hi))));
    }
    first_task.push(tasks.len());
    let per_task = blocks.iter().map(|b| b.1).max().unwrap_or(1) * shape.partial_len();
    let groups = task_groups(&first_task, GROUP_TASKS);
    let most = groups
        .iter()
        .map(|&(g0, g1)| first_task[g1] - first_task[g0])
        .max()
        .unwrap_or(0);
    let mut parts = vec![0f32; most * per_task];
    let mut out = vec![0f32; n * hq * d];
    with_pool(&kv.k, |kpool| {
        with_pool(&kv.v, |vpool| {
            for &(g0, g1) in &groups {
                let (t0, t1) = (first_task[g0], first_task[g1]);
                let parts = &mut parts[..(t1 - t0) * per_task];
                parts.par_chunks_mut(per_task).zip(&tasks[t0..t1]).for_each(
                    |(part, &(bi, a, b))| {
                        let (t0, nt) = blocks[bi];
                        let s = seqs[toks[t0].0];
                        let chunk = Chunk {
                            shape,
                            q: &qr[t0 * hq * d..(t0 + nt) * hq * d],
                            pos: toks[t0].1,
                            window: cfg.sliding_window,
                            rows: &|j| cache.row(&s.blocks, j),
                            span: (a, b),
                        };
                        chunk.attend(kpool, vpool, &mut part[..nt * shape.partial_len()]);
                    },
                );
                // The group's blocks' outputs: its tokens' rows, in order.
                let first_tok = blocks[g0].0;
                let end_tok = blocks[g1 - 1].0 + blocks[g1 - 1].1;
                let mut rest = &mut out[first_tok * hq * d..end_tok * hq * d];
                let mut by_block: Vec<(&mut [f32], usize)> = Vec::with_capacity(g1 - g0);
                for (bi, &(_, nt)) in blocks.iter().enumerate().take(g1).skip(g0) {
                    let (o, r) = rest.split_at_mut(nt * hq * d);
                    by_block.push((o, bi));
                    rest = r;
                }
                let (parts, first_task) = (&*parts, &first_task);
                by_block.into_par_iter().for_each(|(o, bi)| {
                    let ps = &parts
                        [(first_task[bi] - t0) * per_task..(first_task[bi + 1] - t0) * per_task];
                    for (u, o) in o.chunks_exact_mut(hq * d).enumerate() {
                        let len = shape.partial_len();
                        let mine = ps
                            .chunks_exact(per_task)
                            .map(|p| &p[u * len..(u + 1) * len]);
                        merge(shape, mine, o);
                    }
                });
            }
        })
    })??;
    Ok(Tensor::from_vec(out, (n, hq * d), dev)?)
}

/// A layer's keys or values as the attention kernel reads them: `[rows, Hkv·D]` values, or
/// for q8_0 the same rows as blocks of 32 (`[rows, Hkv·D/32·34]` bytes).
#[derive(Clone, Copy)]
enum Pool<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    Q8(&'a [u8]),
}

impl Pool<'_> {
    /// The `out.len()` values from value offset `at` (a whole number of q8_0 blocks), widened
    /// to f32.
    fn widen(&self, at: usize, out: &mut [f32]) {
        match self {
            Pool::F32(p) => out.copy_from_slice(&p[at..at + out.len()]),
            Pool::F16(p) => bora_kernels::cpu::widen(&p[at..at + out.len()], out),
            Pool::BF16(p) => bora_kernels::cpu::widen(&p[at..at + out.len()], out),
            Pool::Q8(p) => {
                let (from, len) = (at / 32 * 34, out.len() / 32 * 34);
                bora_kernels::quant::dequantize(QType::Q8_0, &p[from..from + len], out)
            }
        }
    }
}

/// Runs `f` on a contiguous CPU pool tensor's values (f32, f16, bf16 or q8_0 bytes).
fn with_pool<R>(t: &Tensor, f: impl FnOnce(Pool<'_>) -> R) -> Result<R> {
    Ok(match t.dtype() {
        DType::F32 => with_cpu::<f32, _>(t, |p| f(Pool::F32(p)))?,
        DType::F16 => with_cpu::<f16, _>(t, |p| f(Pool::F16(p)))?,
        DType::BF16 => with_cpu::<bf16, _>(t, |p| f(Pool::BF16(p)))?,
        KV_Q8_0 => with_cpu::<u8, _>(t, |p| f(Pool::Q8(p)))?,
        other => {
            return Err(ModelError::Batch(format!(
                "the CPU attention keeps an f32, f16, bf16 or q8_0 KV cache, not {other:?}"
            )))
        }
    })
}

/// One position's keys or values `x` (`Hkv·D` f32 values) as a row of a pool of `dtype`:
/// converted, or quantized to q8_0 blocks.
fn pool_row(
    x: &[f32],
    hkv: usize,
    d: usize,
    dtype: DType,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    if dtype == KV_Q8_0 {
        let mut bytes = vec![0u8; x.len() / 32 * 34];
        bora_kernels::quant::quantize(QType::Q8_0, x, &mut bytes);
        return Ok(Tensor::from_vec(bytes, (1, hkv, d / 32 * 34), dev)?);
    }
    Ok(Tensor::from_slice(x, (1, hkv, d), dev)?.to_dtype(dtype)?)
}

/// The given rows of a contiguous `[T, C]` f32 CPU tensor, concatenated.
fn rows_of(t: &Tensor, rows: &[usize]) -> Result<Vec<f32>> {
    let (_, c) = t.dims2()?;
    Ok(with_cpu_f32(t, |all| {
        rows.iter()
            .flat_map(|&r| all[r * c..(r + 1) * c].iter().copied())
            .collect()
    })?)
}

/// Tasks whose partial results are held at once: a step's blocks are computed and merged in
/// groups of about this many tasks (whole blocks), so that the partials stay a few MB (a
/// 512-token prefill chunk at 32k positions in batch-invariant mode is 64k one-token tasks,
/// 1 GB of partials for Mixtral 8x7B at once).
const GROUP_TASKS: usize = 256;

/// Consecutive blocks `(first, end)` holding at most `most` tasks each (a block with more is
/// a group alone), `first_task[b]` the first task of block `b` (and `first_task[blocks]` the
/// count).
fn task_groups(first_task: &[usize], most: usize) -> Vec<(usize, usize)> {
    let blocks = first_task.len() - 1;
    let mut groups = Vec::new();
    let mut g0 = 0;
    for b in 0..blocks {
        if b > g0 && first_task[b + 1] - first_task[g0] > most {
            groups.push((g0, b));
            g0 = b;
        }
    }
    if blocks > 0 {
        groups.push((g0, blocks));
    }
    groups
}

/// Positions a decode token's task attends: its keys are split into chunks of this many.
const CHUNK: usize = 256;
/// Positions scored together before their softmax weights are applied to the values.
const SUB: usize = 32;
/// Tokens of a prefill chunk that one task attends together, each key row read once for all.
const TOKENS: usize = 8;
/// From this many tokens on, a block of keys is transposed so that the scores are products of
/// broadcast query values with rows of keys (no horizontal sums).
const TRANSPOSE_FROM: usize = 4;

/// Merges a token's partials (see [`Heads::partial_len`]) over its chunks of keys into its
/// attention output `[Hq · D]`.
fn merge<'p>(shape: Heads, parts: impl Iterator<Item = &'p [f32]> + Clone, out: &mut [f32]) {
    let (hq, d) = (shape.hq, shape.d);
    for (h, o) in out.chunks_exact_mut(d).enumerate() {
        let m = |p: &[f32]| p[hq * d + h];
        let top = parts.clone().map(m).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        o.fill(0.0);
        for p in parts.clone() {
            let w = (m(p) - top).exp();
            if w == 0.0 {
                continue; // no key of this chunk is visible to the token
            }
            total += w * p[hq * d + hq + h];
            for (o, &x) in o.iter_mut().zip(&p[h * d..(h + 1) * d]) {
                *o += w * x;
            }
        }
        let inv = 1.0 / total;
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
}

/// Queries of consecutive tokens of one sequence against a chunk of its keys and values.
struct Chunk<'a> {
    shape: Heads,
    /// `[T, Hq, D]`, already scaled by `1/√D`: tokens at positions `pos..pos + T`.
    q: &'a [f32],
    pos: usize,
    window: Option<usize>,
    /// The pool row of a position.
    rows: &'a (dyn Fn(usize) -> usize + Sync),
    /// The positions `a..b` attended (each token sees those of its causal window among them).
    span: (usize, usize),
}

impl Chunk<'_> {
    /// Writes each token's partial result (see [`Shape::partial_len`]) into `part`
    /// (`T` of them), with the widest vectors this CPU has (the loops below vectorize under
    /// each `target_feature`).
    fn attend(&self, kpool: Pool<'_>, vpool: Pool<'_>, part: &mut [f32]) {
        let Heads { hq, hkv, d } = self.shape;
        if self.q.len() == hq * d {
            // One token (decode): the kernel of `bora_kernels::cpu::attn`, over the positions
            // of the span in its window.
            let (a, b) = self.span;
            let lo = crate::attention::first_key(self.window, self.pos).max(a);
            let rows: Vec<usize> = (lo..b.min(self.pos + 1))
                .map(|j| (self.rows)(j) * hkv * d)
                .collect();
            match (kpool, vpool) {
                (Pool::F32(k), Pool::F32(v)) => {
                    return attend_one(self.shape, self.q, k, v, &rows, part)
                }
                (Pool::F16(k), Pool::F16(v)) => {
                    return attend_one(self.shape, self.q, k, v, &rows, part)
                }
                (Pool::BF16(k), Pool::BF16(v)) => {
                    return attend_one(self.shape, self.q, k, v, &rows, part)
                }
                _ => {}
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            use bora_kernels::Isa;
            match Isa::get() {
                // SAFETY: Isa::get() reports AVX-512F only where the CPU has it.
                Isa::Avx512 => return unsafe { self.attend_avx512(kpool, vpool, part) },
                // SAFETY: Isa::Avx2 means AVX2 and FMA are present.
                Isa::Avx2 => return unsafe { self.attend_avx2(kpool, vpool, part) },
                Isa::Scalar => {}
            }
        }
        self.attend_any(kpool, vpool, part)
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn attend_avx512(&self, kpool: Pool<'_>, vpool: Pool<'_>, part: &mut [f32]) {
        self.attend_any(kpool, vpool, part)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, kpool: Pool<'_>, vpool: Pool<'_>, part: &mut [f32]) {
        self.attend_any(kpool, vpool, part)
    }

    /// Online softmax over blocks of [`SUB`] positions: the block's scores for every token and
    /// head, then their weights, each running maximum and sum rescaled, and the weighted value
    /// rows added. Each pool row (all kv heads of a position) is read once, in position order.
    #[inline(always)]
    fn attend_any(&self, kpool: Pool<'_>, vpool: Pool<'_>, part: &mut [f32]) {
        let Heads { hq, hkv, d } = self.shape;
        let (g, width, stride) = (hq / hkv, hkv * d, self.shape.partial_len());
        let nt = self.q.len() / (hq * d);
        for p in part.chunks_exact_mut(stride) {
            p[..hq * d].fill(0.0);
            p[hq * d..hq * d + hq].fill(f32::NEG_INFINITY);
            p[hq * d + hq..].fill(0.0);
        }
        // scores[(t · Hq + h) · SUB + j]: token t's head h against the block's position j.
        let mut scores = vec![0f32; nt * hq * SUB];
        // Keys of the block transposed: kt[(kv head · D + i) · SUB + j].
        let mut kt = vec![0f32; if nt >= TRANSPOSE_FROM { width * SUB } else { 0 }];
        let mut pool_rows = [0usize; SUB];
        // A 16-bit or q8_0 pool's rows of a block, widened: the block's row j at j · width.
        let widened = !matches!(kpool, Pool::F32(_)) || !matches!(vpool, Pool::F32(_));
        let (mut kw, mut vw) = if widened {
            (vec![0f32; SUB * width], vec![0f32; SUB * width])
        } else {
            (Vec::new(), Vec::new())
        };
        let local: [usize; SUB] = std::array::from_fn(|j| j * width);
        let (a, b) = self.span;
        for first in (a..b).step_by(SUB) {
            let n = (b - first).min(SUB);
            for (j, r) in pool_rows[..n].iter_mut().enumerate() {
                *r = (self.rows)(first + j) * width;
            }
            let (kb, vb, rows): (&[f32], &[f32], &[usize]) = match (kpool, vpool) {
                (Pool::F32(k), Pool::F32(v)) if !widened => {
                    // The block's value rows are read head by head, a part of each row at a
                    // time, which the hardware prefetcher does not foresee: ask for them while
                    // the keys are scored.
                    for &r in &pool_rows[..n] {
                        for line in (0..width).step_by(16) {
                            prefetch(&v[r + line]);
                        }
                    }
                    (k, v, &pool_rows[..])
                }
                _ => {
                    for (j, &r) in pool_rows[..n].iter().enumerate() {
                        kpool.widen(r, &mut kw[j * width..(j + 1) * width]);
                        vpool.widen(r, &mut vw[j * width..(j + 1) * width]);
                    }
                    (&kw[..], &vw[..], &local[..])
                }
            };
            let (kpool, vpool) = (kb, vb);
            if kt.is_empty() {
                for (j, &r) in rows[..n].iter().enumerate() {
                    let k = &kpool[r..r + width];
                    for (th, q) in self.q.chunks_exact(d).enumerate() {
                        let kh = th % hq / g * d;
                        scores[th * SUB + j] = dot(q, &k[kh..kh + d]);
                    }
                }
            } else {
                for (j, &r) in rows[..n].iter().enumerate() {
                    for (i, &x) in kpool[r..r + width].iter().enumerate() {
                        kt[i * SUB + j] = x;
                    }
                }
                for (th, q) in self.q.chunks_exact(d).enumerate() {
                    let kh = th % hq / g * d;
                    let mut s = [0f32; SUB];
                    for (&x, k) in q.iter().zip(kt[kh * SUB..].chunks_exact(SUB)) {
                        for j in 0..SUB {
                            s[j] += x * k[j];
                        }
                    }
                    scores[th * SUB..(th + 1) * SUB].copy_from_slice(&s);
                }
            }
            for (t, p) in part.chunks_exact_mut(stride).enumerate() {
                // The block's positions this token sees: its causal window.
                let pos = self.pos + t;
                let lo = crate::attention::first_key(self.window, pos).max(first) - first;
                let hi = (pos + 1).min(first + n).saturating_sub(first);
                let (acc, rest) = p.split_at_mut(hq * d);
                let (m, l) = rest.split_at_mut(hq);
                if lo >= hi {
                    continue;
                }
                for h in 0..hq {
                    let s = &mut scores[(t * hq + h) * SUB..(t * hq + h) * SUB + n];
                    let seen = &mut s[lo..hi];
                    let top = m[h].max(max(seen));
                    let keep = exp(m[h] - top);
                    m[h] = top;
                    for x in seen.iter_mut() {
                        *x = exp(*x - top);
                    }
                    l[h] = l[h] * keep + sum(seen);
                    let o = &mut acc[h * d..(h + 1) * d];
                    if keep != 1.0 {
                        for x in o.iter_mut() {
                            *x *= keep;
                        }
                    }
                    add_weighted(o, seen, &rows[lo..hi], vpool, h / g * d);
                }
            }
        }
    }
}

/// `o += Σ w[j] · v_j`, `v_j` the `o.len()` values at `rows[j] + at` of the pool: `o` is taken
/// in slices of 64 and then 16 values held in registers over all the rows.
#[inline(always)]
fn add_weighted(o: &mut [f32], w: &[f32], rows: &[usize], vpool: &[f32], at: usize) {
    #[inline(always)]
    fn slice<const W: usize>(o: &mut [f32], w: &[f32], rows: &[usize], vpool: &[f32], at: usize) {
        let mut acc = [0f32; W];
        acc.copy_from_slice(o);
        for (&w, &r) in w.iter().zip(rows) {
            let v = &vpool[r + at..r + at + W];
            for i in 0..W {
                acc[i] += w * v[i];
            }
        }
        o.copy_from_slice(&acc);
    }
    let d = o.len();
    let mut c = 0;
    while c + 64 <= d {
        slice::<64>(&mut o[c..c + 64], w, rows, vpool, at + c);
        c += 64;
    }
    while c + 16 <= d {
        slice::<16>(&mut o[c..c + 16], w, rows, vpool, at + c);
        c += 16;
    }
    for i in c..d {
        for (&w, &r) in w.iter().zip(rows) {
            o[i] += w * vpool[r + at + i];
        }
    }
}

/// Asks for the cache line of `x` ahead of its use (a hint: it never faults).
#[inline(always)]
fn prefetch(x: &f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and never faults; `x` is a reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(x as *const f32 as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// A dot product the compiler vectorizes (sixteen independent partial sums).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests;
