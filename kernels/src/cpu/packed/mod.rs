//! Quantized weights repacked for the CPU kernels, once, at load time.
//!
//! ggml stores a quantized matrix row by row, each row a run of blocks; a SIMD register then
//! holds values of one row, and every product ends in a horizontal sum per (weight row,
//! activation row). Here [`PACK_ROWS`] rows form a *tile*, and a tile's blocks at the same
//! column (a *record*) are interleaved so that one 64-byte vector holds four consecutive values
//! of each of the 16 rows: `vpdpbusd` of that vector with four activation bytes broadcast adds
//! one dot of four to each row's own 32-bit lane. A tile's 16 outputs per activation row build
//! up in one register, the sub-block and block scales are applied to all 16 rows at once, and
//! there is no horizontal sum at all. Decode (one activation row) reads each tile once as one
//! sequential stream; prefill unpacks a tile's levels once for up to 8 activation rows.
//!
//! The levels are stored unsigned (what `vpdpbusd` takes as its first operand) and the
//! activations signed; an offset (Q8_0's `+128`, Q6_K's `32`) is taken off with the
//! activation block's byte sums. Every record keeps all of its blocks' data exactly (f16 scales
//! as f16, 6-bit scales and minimums as bytes), so that [`unpack_row`] gives the file's blocks
//! back byte for byte, and the integer parts of a dot product are those of the unpacked
//! kernels. Records (16 rows of one block, byte offsets):
//!
//! * Q8_0 (544 = 16 × 34): `d` f16 × 16 at 0; at `32 + 64g + 4i + t` value `4g + t` of row
//!   `i` plus 128 (`g` < 8).
//! * Q4_K (2368 = 16 × 148): `d` f16 × 16 at 0, `dmin` at 32; sub-block `j`'s scale of row `i`
//!   at `64 + 16j + i`, its minimum at `192 + 16j + i`; at `320 + 256j + 64c + 4i + t` the
//!   level of value `32j + 4c + t` in the low nibble and of `32j + 16 + 4c + t` in the high
//!   one: vector `g` of sub-block `j` holds values `32j + 4g .. 32j + 4g + 4` of each row.
//! * Q5_K (2880 = 16 × 180): Q4_K's header; sub-block `j`'s levels at `320 + 320j` (as
//!   Q4_K's), then at `576 + 320j + 4i + t` its fifth bits: bit `g` for value `32j + 4g + t`
//!   of row `i`.
//! * Q6_K (3360 = 16 × 210): `d` f16 × 16 at 0; scale `s` (of 16 values) of row `i` at
//!   `32 + 16s + i`; low nibbles at `288 + 384jj + 64c + 4i + t` as Q4_K's (values
//!   `32jj + …`), then high bit pairs at `544 + 384jj + 64h + 4i + t`: bits `2q, 2q + 1` for
//!   vector `4h + q`.
//!
//! A record's groups of 32 values each hold all of their bits, so that a kernel reads a record
//! front to back: the hardware prefetcher then streams the weights, and no software prefetch
//! is needed (measured here, one core streaming Q6_K from DRAM: 6–8 GB/s when the high bit
//! pairs lay in a second region of the record, 9–18 GB/s with each group's bits together; a
//! software prefetch 8 KB ahead made Q4_K decode slower, 9 against 20–25 GB/s).
//!
//! Memory: Q8_0 and Q6_K records are exactly the rows' size, Q4_K 2.8% and Q5_K 2.3% more
//! (their 6-bit scales kept as bytes). The repacked copy replaces the file's pages, which the
//! loader releases tensor by tensor.

use rayon::prelude::*;

use crate::quant::QType;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod vnni;

/// Weight rows per tile.
pub const PACK_ROWS: usize = 16;

/// Activation rows per kernel call, at most.
const ACT_ROWS: usize = 8;

/// Bytes of one record (a tile's block) of type `q`; `None` where `q` has no packed form.
pub fn record_bytes(q: QType) -> Option<usize> {
    match q {
        QType::Q8_0 => Some(544),
        QType::Q4K => Some(2368),
        QType::Q5K => Some(2880),
        QType::Q6K => Some(3360),
        _ => None,
    }
}

/// Which instruction set runs the packed kernels here, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// AVX-512 F, BW, VL and VNNI: 16 rows in one vector.
    Vnni,
    /// AVX2, FMA and F16C: 8 rows per vector, two vectors per tile.
    Avx2,
}

/// The level of packed kernels this CPU runs, if any.
fn cpu_level() -> Option<Level> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::Isa;
        static LEVEL: std::sync::OnceLock<Option<Level>> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| match Isa::get() {
            Isa::Avx512
                if is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni") =>
            {
                Some(Level::Vnni)
            }
            Isa::Avx512 | Isa::Avx2 => Some(Level::Avx2),
            Isa::Scalar => None,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Whether an `[n, k]` matrix of type `q` is packed on this CPU.
pub fn packable(q: QType, n: usize, k: usize) -> bool {
    record_bytes(q).is_some()
        && cpu_level().is_some()
        && n > 0
        && n.is_multiple_of(PACK_ROWS)
        && k > 0
        && k.is_multiple_of(q.block_elems())
}

/// Bytes of an `[n, k]` matrix of type `q` packed (`n` a multiple of [`PACK_ROWS`]).
pub fn packed_bytes(q: QType, n: usize, k: usize) -> usize {
    let rec = record_bytes(q).expect("packed_bytes: a type without a packed form");
    n / PACK_ROWS * (k / q.block_elems()) * rec
}

/// Packs `src` (`n` rows of `k` values as ggml blocks of `q`) into `out`
/// ([`packed_bytes`] long), in parallel over tiles.
///
/// # Panics
/// If `q` has no packed form, `n` is not a multiple of [`PACK_ROWS`], or a length is wrong.
pub fn pack(q: QType, src: &[u8], n: usize, k: usize, out: &mut [u8]) {
    let rec = record_bytes(q).expect("pack: a type without a packed form");
    let nb = k / q.block_elems();
    let row_bytes = nb * q.block_bytes();
    assert!(n.is_multiple_of(PACK_ROWS) && k.is_multiple_of(q.block_elems()));
    assert_eq!(src.len(), n * row_bytes, "pack: source is not [n, k]");
    assert_eq!(
        out.len(),
        packed_bytes(q, n, k),
        "pack: wrong output length"
    );
    if n == 0 || nb == 0 {
        return;
    }
    out.par_chunks_mut(nb * rec)
        .zip(src.par_chunks(PACK_ROWS * row_bytes))
        .for_each(|(tile, rows)| {
            for (b, r) in tile.chunks_exact_mut(rec).enumerate() {
                let blocks: [&[u8]; PACK_ROWS] = std::array::from_fn(|i| {
                    let at = i * row_bytes + b * q.block_bytes();
                    &rows[at..at + q.block_bytes()]
                });
                pack_record(q, &blocks, r);
            }
        });
}

/// Row `r`'s blocks, as the file had them, from a packed `[n, k]` matrix into `out`
/// (`k / block_elems` blocks).
pub fn unpack_row(q: QType, packed: &[u8], k: usize, r: usize, out: &mut [u8]) {
    let rec = record_bytes(q).expect("unpack_row: a type without a packed form");
    let nb = k / q.block_elems();
    assert_eq!(
        out.len(),
        nb * q.block_bytes(),
        "unpack_row: wrong output length"
    );
    let tile = &packed[r / PACK_ROWS * nb * rec..][..nb * rec];
    for (b, block) in out.chunks_exact_mut(q.block_bytes()).enumerate() {
        unpack_record(q, &tile[b * rec..(b + 1) * rec], r % PACK_ROWS, block);
    }
}

fn f16_at(b: &[u8], at: usize) -> [u8; 2] {
    [b[at], b[at + 1]]
}

/// The 6-bit scales and minimums of a Q4_K/Q5_K block's 12 bytes.
fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// The 12 bytes of eight 6-bit scales and minimums (the inverse of [`k_scales`]).
fn k_scales_bytes(sc: &[u8; 8], m: &[u8; 8], s: &mut [u8]) {
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
}

/// The 256 levels of a Q4_K (4-bit) or Q5_K (5-bit) block.
fn k45_levels(q: QType, b: &[u8]) -> [u8; 256] {
    let (qh, qs) = match q {
        QType::Q5K => (Some(&b[16..48]), &b[48..176]),
        _ => (None, &b[16..144]),
    };
    let mut lv = [0u8; 256];
    for c in 0..4 {
        for l in 0..32 {
            lv[64 * c + l] = qs[32 * c + l] & 15;
            lv[64 * c + 32 + l] = qs[32 * c + l] >> 4;
        }
    }
    if let Some(qh) = qh {
        for j in 0..8 {
            for l in 0..32 {
                lv[32 * j + l] |= ((qh[l] >> j) & 1) << 4;
            }
        }
    }
    lv
}

/// The 256 levels (0–63) of a Q6_K block.
fn q6k_levels(b: &[u8]) -> [u8; 256] {
    let mut lv = [0u8; 256];
    for h in 0..2 {
        let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..128 + 32 * h + 32]);
        for l in 0..32 {
            lv[128 * h + l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
            lv[128 * h + 32 + l] = (ql[32 + l] & 15) | (((qh[l] >> 2) & 3) << 4);
            lv[128 * h + 64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            lv[128 * h + 96 + l] = (ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    lv
}

/// Where a K-quant record's 32-value groups start, and their stride: each group holds its
/// 256 bytes of low nibbles, then (Q5_K) 64 of fifth bits or (Q6_K) 128 of high bit pairs,
/// so that a kernel reads a record front to back.
fn groups(q: QType) -> (usize, usize) {
    match q {
        QType::Q4K => (320, 256),
        QType::Q5K => (320, 320),
        _ => (288, 384),
    }
}

/// Where value `v` (0–255) of row `i` sits among a K-quant record's low nibbles: (byte,
/// high nibble).
fn nibble_at(q: QType, v: usize, i: usize) -> (usize, bool) {
    let (start, stride) = groups(q);
    let (j, w) = (v / 32, v % 32);
    let (c, hi) = ((w % 16) / 4, w >= 16);
    (start + stride * j + 64 * c + 4 * i + w % 4, hi)
}

/// Value `v` (0–255) of row `i` in a vector-ordered field: its 32-value group `j`, its vector
/// `g` in the group (values `32j + 4g .. 32j + 4g + 4`), and its byte `4i + t` in a vector.
fn lane_of(v: usize, i: usize) -> (usize, usize, usize) {
    let (j, w) = (v / 32, v % 32);
    (j, w / 4, 4 * i + w % 4)
}

fn pack_record(q: QType, blocks: &[&[u8]; PACK_ROWS], r: &mut [u8]) {
    r.fill(0);
    match q {
        QType::Q8_0 => {
            for (i, b) in blocks.iter().enumerate() {
                r[2 * i..2 * i + 2].copy_from_slice(&f16_at(b, 0));
                for v in 0..32 {
                    r[32 + 64 * (v / 4) + 4 * i + v % 4] = b[2 + v] ^ 0x80;
                }
            }
        }
        QType::Q4K | QType::Q5K => {
            for (i, b) in blocks.iter().enumerate() {
                r[2 * i..2 * i + 2].copy_from_slice(&f16_at(b, 0));
                r[32 + 2 * i..34 + 2 * i].copy_from_slice(&f16_at(b, 2));
                let (sc, m) = k_scales(&b[4..16]);
                for j in 0..8 {
                    r[64 + 16 * j + i] = sc[j];
                    r[192 + 16 * j + i] = m[j];
                }
                let lv = k45_levels(q, b);
                for (v, &l) in lv.iter().enumerate() {
                    let (at, hi) = nibble_at(q, v, i);
                    r[at] |= if hi { (l & 15) << 4 } else { l & 15 };
                    if q == QType::Q5K {
                        let (j, g, byte) = lane_of(v, i);
                        r[576 + 320 * j + byte] |= (l >> 4) << g;
                    }
                }
            }
        }
        QType::Q6K => {
            for (i, b) in blocks.iter().enumerate() {
                r[2 * i..2 * i + 2].copy_from_slice(&f16_at(b, 208));
                for s in 0..16 {
                    r[32 + 16 * s + i] = b[192 + s];
                }
                let lv = q6k_levels(b);
                for (v, &l) in lv.iter().enumerate() {
                    let (at, hi) = nibble_at(q, v, i);
                    r[at] |= if hi { (l & 15) << 4 } else { l & 15 };
                    let (jj, g, byte) = lane_of(v, i);
                    r[544 + 384 * jj + 64 * (g / 4) + byte] |= (l >> 4) << (2 * (g % 4));
                }
            }
        }
        _ => unreachable!("pack_record: no packed form of {q}"),
    }
}

fn unpack_record(q: QType, r: &[u8], i: usize, b: &mut [u8]) {
    b.fill(0);
    match q {
        QType::Q8_0 => {
            b[..2].copy_from_slice(&f16_at(r, 2 * i));
            for v in 0..32 {
                b[2 + v] = r[32 + 64 * (v / 4) + 4 * i + v % 4] ^ 0x80;
            }
        }
        QType::Q4K | QType::Q5K => {
            b[..2].copy_from_slice(&f16_at(r, 2 * i));
            b[2..4].copy_from_slice(&f16_at(r, 32 + 2 * i));
            let sc: [u8; 8] = std::array::from_fn(|j| r[64 + 16 * j + i]);
            let m: [u8; 8] = std::array::from_fn(|j| r[192 + 16 * j + i]);
            k_scales_bytes(&sc, &m, &mut b[4..16]);
            let five = q == QType::Q5K;
            let qs = if five { 48 } else { 16 };
            for v in 0..256 {
                let (at, hi) = nibble_at(q, v, i);
                let mut l = if hi { r[at] >> 4 } else { r[at] & 15 };
                if five {
                    let (j, g, byte) = lane_of(v, i);
                    l |= ((r[576 + 320 * j + byte] >> g) & 1) << 4;
                }
                // Value v = 64c + 32·hi + l' (ggml's order): byte 32c + l' of qs.
                let (c, h, lo) = (v / 64, (v / 32) % 2, v % 32);
                b[qs + 32 * c + lo] |= if h == 1 { (l & 15) << 4 } else { l & 15 };
                if five {
                    b[16 + lo] |= (l >> 4) << (v / 32);
                }
            }
        }
        QType::Q6K => {
            b[208..210].copy_from_slice(&f16_at(r, 2 * i));
            for s in 0..16 {
                b[192 + s] = r[32 + 16 * s + i];
            }
            for v in 0..256 {
                let (at, hi) = nibble_at(q, v, i);
                let low = if hi { r[at] >> 4 } else { r[at] & 15 };
                let (jj, g, byte) = lane_of(v, i);
                let high = (r[544 + 384 * jj + 64 * (g / 4) + byte] >> (2 * (g % 4))) & 3;
                // ggml's order: half h, then quarter k of 32 values, then l.
                let (h, kq, l) = (v / 128, (v / 32) % 4, v % 32);
                let ql = 64 * h + 32 * (kq % 2) + l;
                b[ql] |= if kq >= 2 { low << 4 } else { low };
                b[128 + 32 * h + l] |= high << (2 * kq);
            }
        }
        _ => unreachable!("unpack_record: no packed form of {q}"),
    }
}

/// Activation rows quantized for a packed product: the bytes of each row in a run, one scale
/// per block, and the per-type sums the kernels take the offsets and minimums off with.
pub(crate) struct PackedActs {
    k: usize,
    qs: Vec<i8>,
    /// One scale per activation block (32 values for Q8_0, 256 for the K-quants).
    d: Vec<f32>,
    /// Q4_K/Q5_K: the scale times the sum of each 32 values (the minimums' weights).
    fsum: Vec<f32>,
    /// Q8_0: 128 times each block's sum (the weights' +128); Q6_K: 32 times each 16 values'
    /// sum (the levels' −32).
    isum: Vec<i32>,
}

impl PackedActs {
    /// `x` (`[m, k]`) quantized as ggml quantizes activations for `q`: Q8_0 for Q8_0 weights,
    /// Q8_K for the K-quants, with the same rounding.
    pub(crate) fn new(q: QType, x: &[f32], m: usize, k: usize) -> Self {
        use crate::quant::ActQuant;
        let kind = q.act_quant();
        let (be, bb) = (kind.block_elems(), kind.block_bytes());
        let nb = k / be;
        let mut acts = Self {
            k,
            qs: vec![0; m * k],
            d: vec![0.0; m * nb],
            fsum: Vec::new(),
            isum: Vec::new(),
        };
        match q {
            QType::Q4K | QType::Q5K => acts.fsum = vec![0.0; m * k / 32],
            QType::Q6K => acts.isum = vec![0; m * k / 16],
            _ => acts.isum = vec![0; m * nb],
        }
        let mut blocks = vec![0u8; nb * bb];
        for r in 0..m {
            kind.quantize(&x[r * k..(r + 1) * k], &mut blocks);
            for (b, block) in blocks.chunks_exact(bb).enumerate() {
                let (d, qs) = match kind {
                    ActQuant::Q8K => (
                        f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
                        &block[4..260],
                    ),
                    _ => (
                        half::f16::from_le_bytes([block[0], block[1]]).to_f32(),
                        &block[2..34],
                    ),
                };
                acts.d[r * nb + b] = d;
                let at = r * k + b * be;
                for (o, &v) in acts.qs[at..at + be].iter_mut().zip(qs) {
                    *o = v as i8;
                }
                let sum = |s: &[u8]| s.iter().map(|&v| v as i8 as i32).sum::<i32>();
                match q {
                    QType::Q4K | QType::Q5K => {
                        for (j, c) in qs.chunks_exact(32).enumerate() {
                            acts.fsum[(at + 32 * j) / 32] = d * sum(c) as f32;
                        }
                    }
                    QType::Q6K => {
                        for (s, c) in qs.chunks_exact(16).enumerate() {
                            acts.isum[(at + 16 * s) / 16] = 32 * sum(c);
                        }
                    }
                    _ => acts.isum[r * nb + b] = 128 * sum(qs),
                }
            }
        }
        acts
    }

    /// Pointers to row `r`'s data, for the kernels.
    fn row(&self, r: usize, q: QType) -> ActRow {
        let nb = self.k / q.block_elems();
        ActRow {
            qs: self.qs[r * self.k..].as_ptr(),
            d: self.d[r * nb..].as_ptr(),
            fsum: self
                .fsum
                .get(r * self.k / 32..)
                .map_or(std::ptr::null(), |s| s.as_ptr()),
            isum: match q {
                QType::Q6K => self.isum[r * self.k / 16..].as_ptr(),
                QType::Q8_0 => self.isum[r * nb..].as_ptr(),
                _ => std::ptr::null(),
            },
        }
    }
}

/// One activation row's data (see [`PackedActs`]), as raw pointers for the kernels.
#[derive(Clone, Copy)]
struct ActRow {
    qs: *const i8,
    d: *const f32,
    fsum: *const f32,
    isum: *const i32,
}

impl Default for ActRow {
    fn default() -> Self {
        Self {
            qs: std::ptr::null(),
            d: std::ptr::null(),
            fsum: std::ptr::null(),
            isum: std::ptr::null(),
        }
    }
}

/// `out[r · out_stride + 16t' + i]` for every activation row `r` of `acts` and tile `t` in
/// `tiles` (`t' = t − tiles.start`): row `16t + i` of the packed matrix `w` (`[n, k]` of type
/// `q`) dotted with activation row `r`.
///
/// # Panics
/// If this CPU has no packed kernels, or `w` is shorter than the tiles.
///
/// # Safety
/// `out` must be valid for writes of `(m − 1) · out_stride + 16 · tiles.len()` floats, `m` the
/// activation rows, and no other thread may access them meanwhile.
pub(crate) unsafe fn tiles(
    q: QType,
    w: &[u8],
    acts: &PackedActs,
    tiles: std::ops::Range<usize>,
    out: *mut f32,
    out_stride: usize,
) {
    let level = cpu_level().expect("tiles: no packed kernels on this CPU");
    tiles_at(level, q, w, acts, tiles, out, out_stride)
}

/// [`tiles`] with the kernels of `level`.
///
/// # Panics
/// If this CPU cannot run `level`'s kernels.
///
/// # Safety
/// As [`tiles`].
unsafe fn tiles_at(
    level: Level,
    q: QType,
    w: &[u8],
    acts: &PackedActs,
    tiles: std::ops::Range<usize>,
    out: *mut f32,
    out_stride: usize,
) {
    let rec = record_bytes(q).expect("tiles: a type without a packed form");
    let nb = acts.k / q.block_elems();
    let m = acts.qs.len() / acts.k.max(1);
    assert!(w.len() >= tiles.end * nb * rec, "tiles: past the weights");
    assert!(
        match level {
            Level::Avx2 => cpu_level().is_some(),
            Level::Vnni => cpu_level() == Some(Level::Vnni),
        },
        "tiles: this CPU cannot run the {level:?} kernels"
    );
    for t in tiles.clone() {
        let tile = w[t * nb * rec..].as_ptr();
        let col = 16 * (t - tiles.start);
        let mut r0 = 0;
        while r0 < m {
            let a = match m - r0 {
                8.. => 8,
                4..=7 => 4,
                2 | 3 => 2,
                _ => 1,
            };
            let mut rows = [ActRow::default(); ACT_ROWS];
            for (i, row) in rows[..a].iter_mut().enumerate() {
                *row = acts.row(r0 + i, q);
            }
            let o = out.add(r0 * out_stride + col);
            // SAFETY: the CPU has the level's features and the tile holds nb records (both
            // asserted above); every activation row holds nb blocks with their
            // sums (PackedActs::new); `o` is valid for the rows' 16 outputs (the caller's
            // contract).
            #[cfg(target_arch = "x86_64")]
            match level {
                Level::Vnni => vnni::tile(q, a, tile, nb, &rows, o, out_stride),
                Level::Avx2 => avx2::tile(q, a, tile, nb, &rows, o, out_stride),
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (level, tile, o);
            r0 += a;
        }
    }
}

#[cfg(test)]
mod tests;
