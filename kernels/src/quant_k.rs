//! bora's own quantizers for Q4_K and Q5_K: ggml's current reference algorithm (a weighted
//! search over scale and minimum for each 32-value sub-block), which candle's ports predate.
//!
//! Each sub-block of 32 values gets a scale `d` and minimum `m` such that `x ≈ d·q − m` with
//! `q` in `0..=nmax`; the pair is chosen by least squares, weighted by `rms(sub-block) + |x|`
//! (large values matter more), over a few candidate step sizes around `(max − min) / nmax`.
//! The eight scales and minimums of a 256-value block are then quantized to 6 bits against
//! the block's largest, and the values re-quantized against those.

use half::f16;

const QK_K: usize = 256;

fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Weighted least-squares scale and minimum of `x` for levels `0..=nmax`: returns
/// `(scale, -min)` and writes the levels to `levels`.
fn weighted_scale_min(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: usize,
) -> (f32, f32) {
    let n = x.len();
    let mut lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_w: f32 = weights.iter().sum();
    let sum_x: f32 = x.iter().zip(weights).map(|(v, w)| v * w).sum();
    if lo > 0.0 {
        lo = 0.0;
    }
    if hi == lo {
        levels.iter_mut().for_each(|l| *l = 0);
        return (0.0, -lo);
    }
    let level = |iscale: f32, v: f32, lo: f32| nearest_int(iscale * (v - lo)).clamp(0, nmax) as u8;
    let mut iscale = nmax as f32 / (hi - lo);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        levels[i] = level(iscale, x[i], lo);
        let diff = scale * levels[i] as f32 + lo - x[i];
        best += weights[i] * diff * diff;
    }
    let mut trial = [0u8; 32];
    let trial = &mut trial[..n];
    for step in 0..=nstep {
        iscale = (rmin + rdelta * step as f32 + nmax as f32) / (hi - lo);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = level(iscale, x[i], lo);
            trial[i] = l;
            let (l, w) = (l as f32, weights[i]);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let err: f32 = (0..n)
            .map(|i| {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                weights[i] * diff * diff
            })
            .sum();
        if err < best {
            levels.copy_from_slice(trial);
            best = err;
            scale = this_scale;
            lo = this_min;
        }
    }
    (scale, -lo)
}

/// The 6-bit scale and minimum of sub-block `j` in the 12-byte packed `scales`.
fn scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Scales, minimums and levels of one 256-value block: `(d, dmin, packed scales, levels)`.
fn block_levels(x: &[f32], nmax: i32, rmin: f32, nstep: usize) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let sub = &x[32 * j..32 * (j + 1)];
        let rms = (sub.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = rms + v.abs();
        }
        (scales[j], mins[j]) = weighted_scale_min(
            sub,
            &weights,
            nmax,
            &mut levels[32 * j..32 * (j + 1)],
            rmin,
            0.1,
            nstep,
        );
    }
    let max_scale = scales.iter().copied().fold(0f32, f32::max);
    let max_min = mins.iter().copied().fold(0f32, f32::max);
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = scale_min(j, &packed);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * (j + 1) {
            levels[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, levels)
}

/// `x` (whole blocks of 256) as Q4_K blocks in `out` (144 bytes each).
pub fn quantize_q4k(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(144)) {
        let (d, dmin, packed, levels) = block_levels(xb, 15, -1.0, 20);
        ob[0..2].copy_from_slice(&d.to_le_bytes());
        ob[2..4].copy_from_slice(&dmin.to_le_bytes());
        ob[4..16].copy_from_slice(&packed);
        let qs = &mut ob[16..144];
        for (c, chunk) in levels.chunks_exact(64).enumerate() {
            for l in 0..32 {
                qs[32 * c + l] = chunk[l] | (chunk[l + 32] << 4);
            }
        }
    }
}

/// `x` (whole blocks of 256) as Q5_K blocks in `out` (176 bytes each).
pub fn quantize_q5k(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(176)) {
        let (d, dmin, packed, levels) = block_levels(xb, 31, -0.5, 15);
        ob[0..2].copy_from_slice(&d.to_le_bytes());
        ob[2..4].copy_from_slice(&dmin.to_le_bytes());
        ob[4..16].copy_from_slice(&packed);
        let (qh, qs) = ob[16..176].split_at_mut(32);
        qh.iter_mut().for_each(|b| *b = 0);
        for (c, chunk) in levels.chunks_exact(64).enumerate() {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for j in 0..32 {
                let (mut l1, mut l2) = (chunk[j], chunk[j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                qs[32 * c + j] = l1 | (l2 << 4);
            }
        }
    }
}
