//! The i-quants (IQ1_S to IQ4_XS): ggml's block layouts, their dequantization, and each block
//! as integer levels under integer sub-block scales for the dot products.
//!
//! Dequantization is gguf-py's (the reference the fixtures of models/gen_quant_reference.py
//! hold): the same f32 operations in the same order, so the values are the same bits. The
//! tables the formats are defined by are in `iq_tables` (generated from gguf-py).
//!
//! Every type's value is `d · scale · level` with integer `scale` (one per 16 or 32 values) and
//! integer `level` (|level| ≤ 127), `d` the block's f16 scale times a power of two:
//! - IQ2_XXS, IQ2_XS, IQ2_S: `d·(0.5 + s)/4 · g·sign` = `d/8 · (2s+1) · ±g`, g ∈ {8, 25, 43};
//! - IQ3_XXS: `d·(0.5 + s)/2 · g·sign` = `d/4 · (2s+1) · ±g`, g ≤ 62;
//! - IQ3_S: `d·(1 + 2s) · ±g`, g odd ≤ 15;
//! - IQ1_S, IQ1_M: `d·(2s+1)·(g ± 1/8)` = `d/8 · (2s+1) · (8g ± 1)`, g ∈ {-1, 0, 1};
//! - IQ4_NL: `d · k`, IQ4_XS: `d · (s − 32) · k`, k one of 16 levels in −127..=113.

use half::f16;

use crate::iq_tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
    KVALUES_IQ4NL,
};

/// Values per super-block.
pub(crate) const QK_K: usize = 256;
/// The shift of IQ1's values off the grid, as gguf-py's f32 (`IQ1_S.delta`).
const IQ1_DELTA: f32 = 0.125;

/// A block as integers: value `i` is `d · scales[i / sub] · levels[i]`, where `sub` is the
/// type's sub-block length ([`IqType::sub_block`]).
#[derive(Clone)]
pub(crate) struct Levels {
    pub d: f32,
    pub scales: [i32; 16],
    pub levels: [i8; QK_K],
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            d: 0.0,
            scales: [0; 16],
            levels: [0; QK_K],
        }
    }
}

/// The i-quant types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IqType {
    Iq1S,
    Iq1M,
    Iq2Xxs,
    Iq2Xs,
    Iq2S,
    Iq3Xxs,
    Iq3S,
    Iq4Nl,
    Iq4Xs,
}

impl IqType {
    /// Values per block.
    pub(crate) fn block_elems(self) -> usize {
        match self {
            IqType::Iq4Nl => 32,
            _ => QK_K,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            IqType::Iq1S => 50,
            IqType::Iq1M => 56,
            IqType::Iq2Xxs => 66,
            IqType::Iq2Xs => 74,
            IqType::Iq2S => 82,
            IqType::Iq3Xxs => 98,
            IqType::Iq3S => 110,
            IqType::Iq4Nl => 18,
            IqType::Iq4Xs => 136,
        }
    }

    /// Values that share one integer scale.
    pub(crate) fn sub_block(self) -> usize {
        match self {
            IqType::Iq2Xs | IqType::Iq2S | IqType::Iq1M => 16,
            _ => 32,
        }
    }

    /// `out` (`block_elems` long) from one block, as gguf-py computes it.
    pub(crate) fn dequantize_block(self, b: &[u8], out: &mut [f32]) {
        match self {
            IqType::Iq1S => iq1s(b, out),
            IqType::Iq1M => iq1m(b, out),
            IqType::Iq2Xxs => iq2xxs(b, out),
            IqType::Iq2Xs => iq2xs(b, out),
            IqType::Iq2S => iq2s(b, out),
            IqType::Iq3Xxs => iq3xxs(b, out),
            IqType::Iq3S => iq3s(b, out),
            IqType::Iq4Nl => iq4nl(b, out),
            IqType::Iq4Xs => iq4xs(b, out),
        }
    }

    /// One block as integer levels and scales (`levels[..block_elems]`).
    pub(crate) fn levels(self, b: &[u8], l: &mut Levels) {
        let sign = |s: u8, j: usize| if s >> j & 1 == 1 { -1i8 } else { 1 };
        match self {
            IqType::Iq2Xxs | IqType::Iq3Xxs => {
                let xxs2 = self == IqType::Iq2Xxs;
                l.d = f16_at(b, 0) * if xxs2 { 0.125 } else { 0.25 };
                for ib in 0..8 {
                    let (grid, aux) = if xxs2 {
                        (&b[2 + 8 * ib..6 + 8 * ib], u32_at(b, 6 + 8 * ib))
                    } else {
                        (&b[2 + 8 * ib..10 + 8 * ib], u32_at(b, 66 + 4 * ib))
                    };
                    l.scales[ib] = 2 * (aux >> 28) as i32 + 1;
                    for g in 0..4 {
                        let s = KSIGNS_IQ2XS[(aux >> (7 * g) & 127) as usize];
                        for j in 0..8 {
                            let v = if xxs2 {
                                byte_of(IQ2XXS_GRID[grid[g] as usize], j)
                            } else {
                                byte_of(IQ3XXS_GRID[grid[2 * g + j / 4] as usize] as u64, j % 4)
                            };
                            l.levels[32 * ib + 8 * g + j] = v as i8 * sign(s, j);
                        }
                    }
                }
            }
            IqType::Iq2Xs => {
                l.d = f16_at(b, 0) * 0.125;
                for i in 0..32 {
                    let q = u16_at(b, 2 + 2 * i);
                    let s = KSIGNS_IQ2XS[(q >> 9) as usize];
                    let row = IQ2XS_GRID[(q & 511) as usize];
                    for j in 0..8 {
                        l.levels[8 * i + j] = byte_of(row, j) as i8 * sign(s, j);
                    }
                }
                nibble_scales(&b[66..74], &mut l.scales, |s| 2 * s + 1);
            }
            IqType::Iq2S => {
                l.d = f16_at(b, 0) * 0.125;
                for i in 0..32 {
                    let hi = (b[66 + i / 4] >> (2 * (i % 4)) & 3) as usize;
                    let row = IQ2S_GRID[b[2 + i] as usize | hi << 8];
                    for j in 0..8 {
                        l.levels[8 * i + j] = byte_of(row, j) as i8 * sign(b[34 + i], j);
                    }
                }
                nibble_scales(&b[74..82], &mut l.scales, |s| 2 * s + 1);
            }
            IqType::Iq3S => {
                l.d = f16_at(b, 0);
                for i in 0..64 {
                    let hi = (b[66 + i / 8] >> (i % 8) & 1) as usize;
                    let row = IQ3S_GRID[b[2 + i] as usize | hi << 8] as u64;
                    for j in 0..4 {
                        let at = 4 * i + j;
                        l.levels[at] = byte_of(row, j) as i8 * sign(b[74 + at / 8], at % 8);
                    }
                }
                nibble_scales(&b[106..110], &mut l.scales, |s| 2 * s + 1);
            }
            IqType::Iq1S => {
                l.d = f16_at(b, 0) * 0.125;
                for ib in 0..8 {
                    let qh = u16_at(b, 34 + 2 * ib);
                    l.scales[ib] = 2 * (qh >> 12 & 7) as i32 + 1;
                    let delta = if qh & 0x8000 == 0 { 1 } else { -1 };
                    for g in 0..4 {
                        let idx = b[2 + 4 * ib + g] as usize | ((qh >> (3 * g) & 7) as usize) << 8;
                        iq1_row(idx, delta, &mut l.levels[32 * ib + 8 * g..][..8]);
                    }
                }
            }
            IqType::Iq1M => {
                let sc = |i: usize| u16_at(b, 48 + 2 * i);
                l.d = iq1m_scale(b) * 0.125;
                for i in 0..16 {
                    l.scales[i] = 2 * (sc(i / 4) >> (3 * (i % 4)) & 7) as i32 + 1;
                }
                for e in 0..32 {
                    let nib = b[32 + e / 2] >> (4 * (e % 2)) & 0xf;
                    let idx = b[e] as usize | ((nib & 7) as usize) << 8;
                    let delta = if nib & 8 == 0 { 1 } else { -1 };
                    iq1_row(idx, delta, &mut l.levels[8 * e..][..8]);
                }
            }
            IqType::Iq4Nl => {
                l.d = f16_at(b, 0);
                l.scales[0] = 1;
                l.scales[1] = 1;
                for j in 0..16 {
                    l.levels[j] = KVALUES_IQ4NL[(b[2 + j] & 0xf) as usize];
                    l.levels[16 + j] = KVALUES_IQ4NL[(b[2 + j] >> 4) as usize];
                }
            }
            IqType::Iq4Xs => {
                l.d = f16_at(b, 0);
                for ib in 0..8 {
                    l.scales[ib] = iq4xs_scale(b, ib);
                    for j in 0..16 {
                        let q = b[8 + 16 * ib + j];
                        l.levels[32 * ib + j] = KVALUES_IQ4NL[(q & 0xf) as usize];
                        l.levels[32 * ib + 16 + j] = KVALUES_IQ4NL[(q >> 4) as usize];
                    }
                }
            }
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Byte `j` of a packed grid row.
fn byte_of(row: u64, j: usize) -> u8 {
    (row >> (8 * j)) as u8
}

/// Whether sign bit `j` of `s` is set: the value is negated.
fn minus(s: u8, j: usize) -> bool {
    s >> j & 1 == 1
}

/// Sub-block scales from nibbles, low nibble first: `f(nibble)` each.
fn nibble_scales(bytes: &[u8], scales: &mut [i32; 16], f: impl Fn(i32) -> i32) {
    for (i, &byte) in bytes.iter().enumerate() {
        scales[2 * i] = f((byte & 0xf) as i32);
        scales[2 * i + 1] = f((byte >> 4) as i32);
    }
}

/// IQ1's eight levels `8g ± 1` of grid row `idx`.
fn iq1_row(idx: usize, delta: i8, out: &mut [i8]) {
    let row = IQ1S_GRID[idx];
    for (j, o) in out.iter_mut().enumerate() {
        *o = 8 * byte_of(row, j) as i8 + delta;
    }
}

/// IQ1_M's f16 scale, spread over the top nibbles of its last four u16.
fn iq1m_scale(b: &[u8]) -> f32 {
    let sc = |i: usize| u16_at(b, 48 + 2 * i);
    let bits =
        (sc(0) & 0xf000) >> 12 | (sc(1) & 0xf000) >> 8 | (sc(2) & 0xf000) >> 4 | sc(3) & 0xf000;
    f16::from_bits(bits).to_f32()
}

/// Writes `bits` (an f16) as IQ1_M's scale: the top nibbles of its last four u16.
pub(crate) fn set_iq1m_scale(b: &mut [u8], bits: u16) {
    for i in 0..4 {
        let at = 48 + 2 * i;
        let v = u16_at(b, at) & 0x0fff | (bits >> (4 * i) & 0xf) << 12;
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
}

/// IQ4_XS's signed 6-bit scale of sub-block `ib`.
fn iq4xs_scale(b: &[u8], ib: usize) -> i32 {
    let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf;
    let hi = (u16_at(b, 2) >> (2 * ib)) as u8 & 3;
    (lo | hi << 4) as i32 - 32
}

fn iq2xxs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..8 {
        let aux = u32_at(b, 6 + 8 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
        for g in 0..4 {
            let row = IQ2XXS_GRID[b[2 + 8 * ib + g] as usize];
            let s = KSIGNS_IQ2XS[(aux >> (7 * g) & 127) as usize];
            for j in 0..8 {
                out[32 * ib + 8 * g + j] = signed(db * byte_of(row, j) as f32, minus(s, j));
            }
        }
    }
}

fn iq2xs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for i in 0..32 {
        let q = u16_at(b, 2 + 2 * i);
        let sc = (b[66 + i / 4] >> (4 * (i / 2 % 2))) & 0xf;
        let db = d * (0.5 + sc as f32) * 0.25;
        let row = IQ2XS_GRID[(q & 511) as usize];
        let s = KSIGNS_IQ2XS[(q >> 9) as usize];
        for j in 0..8 {
            out[8 * i + j] = signed(db * byte_of(row, j) as f32, minus(s, j));
        }
    }
}

fn iq2s(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for i in 0..32 {
        let sc = (b[74 + i / 4] >> (4 * (i / 2 % 2))) & 0xf;
        let db = d * (0.5 + sc as f32) * 0.25;
        let hi = (b[66 + i / 4] >> (2 * (i % 4)) & 3) as usize;
        let row = IQ2S_GRID[b[2 + i] as usize | hi << 8];
        for j in 0..8 {
            out[8 * i + j] = signed(db * byte_of(row, j) as f32, minus(b[34 + i], j));
        }
    }
}

fn iq3xxs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..8 {
        let aux = u32_at(b, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for g in 0..4 {
            let s = KSIGNS_IQ2XS[(aux >> (7 * g) & 127) as usize];
            for j in 0..8 {
                let row = IQ3XXS_GRID[b[2 + 8 * ib + 2 * g + j / 4] as usize] as u64;
                out[32 * ib + 8 * g + j] = signed(db * byte_of(row, j % 4) as f32, minus(s, j));
            }
        }
    }
}

fn iq3s(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for i in 0..64 {
        let sc = (b[106 + i / 16] >> (4 * (i / 8 % 2))) & 0xf;
        let db = d * (1 + 2 * sc) as f32;
        let hi = (b[66 + i / 8] >> (i % 8) & 1) as usize;
        let row = IQ3S_GRID[b[2 + i] as usize | hi << 8] as u64;
        for j in 0..4 {
            let at = 4 * i + j;
            out[at] = signed(db * byte_of(row, j) as f32, minus(b[74 + at / 8], at % 8));
        }
    }
}

fn iq1s(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..8 {
        let qh = u16_at(b, 34 + 2 * ib);
        let dl = d * (2 * (qh >> 12 & 7) + 1) as f32;
        let delta = if qh & 0x8000 == 0 {
            IQ1_DELTA
        } else {
            -IQ1_DELTA
        };
        for g in 0..4 {
            let row = IQ1S_GRID[b[2 + 4 * ib + g] as usize | ((qh >> (3 * g) & 7) as usize) << 8];
            for j in 0..8 {
                out[32 * ib + 8 * g + j] = dl * (byte_of(row, j) as i8 as f32 + delta);
            }
        }
    }
}

fn iq1m(b: &[u8], out: &mut [f32]) {
    let d = iq1m_scale(b);
    for e in 0..32 {
        let sc = u16_at(b, 48 + 2 * (e / 8)) >> (3 * (e / 2 % 4)) & 7;
        let dl = d * (2 * sc + 1) as f32;
        let nib = b[32 + e / 2] >> (4 * (e % 2)) & 0xf;
        let delta = if nib & 8 == 0 { IQ1_DELTA } else { -IQ1_DELTA };
        let row = IQ1S_GRID[b[e] as usize | ((nib & 7) as usize) << 8];
        for j in 0..8 {
            out[8 * e + j] = dl * (byte_of(row, j) as i8 as f32 + delta);
        }
    }
}

fn iq4nl(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        out[j] = d * KVALUES_IQ4NL[(b[2 + j] & 0xf) as usize] as f32;
        out[16 + j] = d * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
    }
}

fn iq4xs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..8 {
        let dl = d * iq4xs_scale(b, ib) as f32;
        for j in 0..16 {
            let q = b[8 + 16 * ib + j];
            out[32 * ib + j] = dl * KVALUES_IQ4NL[(q & 0xf) as usize] as f32;
            out[32 * ib + 16 + j] = dl * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}

/// `v`, negated where `minus`.
fn signed(v: f32, minus: bool) -> f32 {
    if minus {
        -v
    } else {
        v
    }
}

/// The dot product of one row of blocks of `t` with Q8_K activation blocks (`t` other than
/// IQ4_NL), through [`IqType::levels`]: per block, the integer sum over sub-blocks of
/// `scale · Σ level · q8`, times both blocks' scales (ggml's reference order).
pub(crate) fn dot_q8k(t: IqType, w: &[u8], act: &[u8]) -> f32 {
    const Q8K_BYTES: usize = 4 + QK_K + 32;
    let sub = t.sub_block();
    let mut l = Levels::default();
    let mut sum = 0f32;
    for (b, a) in w
        .chunks_exact(t.block_bytes())
        .zip(act.chunks_exact(Q8K_BYTES))
    {
        t.levels(b, &mut l);
        let da = f32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        let q8 = &a[4..4 + QK_K];
        let mut isum = 0i32;
        for (s, (lv, q)) in l
            .levels
            .chunks_exact(sub)
            .zip(q8.chunks_exact(sub))
            .enumerate()
        {
            let part: i32 = lv
                .iter()
                .zip(q)
                .map(|(&x, &y)| x as i32 * y as i8 as i32)
                .sum();
            isum += l.scales[s] * part;
        }
        sum += l.d * da * isum as f32;
    }
    sum
}

/// The dot product of one row of IQ4_NL blocks with Q8_0 activation blocks.
pub(crate) fn dot_iq4nl_q8_0(w: &[u8], act: &[u8]) -> f32 {
    let mut l = Levels::default();
    let mut sum = 0f32;
    for (b, a) in w.chunks_exact(18).zip(act.chunks_exact(34)) {
        IqType::Iq4Nl.levels(b, &mut l);
        let da = f16_at(a, 0);
        let isum: i32 = l.levels[..32]
            .iter()
            .zip(&a[2..34])
            .map(|(&x, &y)| x as i32 * y as i8 as i32)
            .sum();
        sum += l.d * da * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{random_blocks, ActQuant, QBuf, QType};

    /// `d · scale · level` is the dequantized value, for every value of every i-quant (the
    /// integer form the dot products take is the format's).
    #[test]
    fn levels_give_the_dequantized_values() {
        for q in QType::ALL.into_iter().filter(|q| !q.quantizable()) {
            let t = q.iq().unwrap();
            let buf = random_blocks(q, 8, 5);
            let mut l = Levels::default();
            let mut out = vec![0f32; t.block_elems()];
            for b in buf.as_bytes().chunks_exact(t.block_bytes()) {
                t.dequantize_block(b, &mut out);
                t.levels(b, &mut l);
                for (i, &v) in out.iter().enumerate() {
                    let s = l.scales[i / t.sub_block()];
                    let exact = l.d as f64 * s as f64 * l.levels[i] as f64;
                    assert!(
                        (exact - v as f64).abs() <= 1e-6 * (v.abs() as f64) + 1e-12,
                        "{q}: value {i}: {v} from the levels {exact} ({} · {s} · {})",
                        l.d,
                        l.levels[i]
                    );
                }
            }
        }
    }

    /// Each i-quant's dot product with quantized activations is the dot product of the two
    /// dequantized rows.
    #[test]
    fn dot_products_are_the_dequantized_rows() {
        let k = 1024;
        let mut state = 3u32;
        let x: Vec<f32> = (0..k)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        for q in QType::ALL.into_iter().filter(|q| !q.quantizable()) {
            let kind = q.act_quant();
            let mut acts = QBuf::zeroed(kind.row_bytes(k));
            kind.quantize_row(&x, acts.as_bytes_mut());
            let act_values = act_values(
                kind,
                &acts.as_bytes()[..k / kind.block_elems() * kind.block_bytes()],
            );
            let w = random_blocks(q, k / q.block_elems(), 9);
            let mut wv = vec![0f32; k];
            crate::quant::dequantize(q, w.as_bytes(), &mut wv);
            let want: f64 = wv
                .iter()
                .zip(&act_values)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let scale: f64 = wv
                .iter()
                .zip(&act_values)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let mut got = [0f32];
            crate::quant::dot_rows(q, k, w.as_bytes(), &[acts.as_bytes()], &mut got);
            assert!(
                (got[0] as f64 - want).abs() <= 1e-5 * scale,
                "{q}: {} where the dequantized rows give {want}",
                got[0]
            );
        }
    }

    /// The values of activation blocks of `kind` (Q8_0 or Q8_K).
    fn act_values(kind: ActQuant, blocks: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        match kind {
            ActQuant::Q8_0 => {
                for b in blocks.chunks_exact(34) {
                    let d = f16_at(b, 0);
                    out.extend(b[2..].iter().map(|&q| d * q as i8 as f32));
                }
            }
            ActQuant::Q8K => {
                for b in blocks.chunks_exact(4 + QK_K + 32) {
                    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    out.extend(b[4..4 + QK_K].iter().map(|&q| d * q as i8 as f32));
                }
            }
            ActQuant::Q8_1 => unreachable!("no i-quant takes Q8_1"),
        }
        out
    }
}
