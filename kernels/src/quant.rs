//! ggml's quantized block formats: the types, their sizes, and row conversion.
//!
//! A quantized matrix is `N` rows of `K / block_elems` blocks each, byte for byte as ggml and
//! GGUF store them. The block layouts and the reference (de)quantization and dot products are
//! candle's (`candle_core::quantized::k_quants`, a port of ggml's), so that a block bora
//! quantizes is the block llama.cpp would have written; this module maps a [`QType`] to them.
//! The i-quants, which candle lacks, are bora's own (`quant_iq`): read and computed on, never
//! written (llama-quantize makes them, from an importance matrix).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;

use crate::quant_iq::{self, IqType};

/// A quantized weight format (ggml's type, with its GGUF type id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ1S,
    IQ1M,
    IQ2XXS,
    IQ2XS,
    IQ2S,
    IQ3XXS,
    IQ3S,
    IQ4NL,
    IQ4XS,
}

/// The block format activations are quantized to for a weight type's integer dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActQuant {
    Q8_0,
    Q8_1,
    Q8K,
}

/// Calls `$body` with `$t` bound to the candle block type of `$q`.
macro_rules! with_block {
    ($q:expr, $t:ident => $body:expr) => {
        match $q {
            QType::Q4_0 => {
                type $t = BlockQ4_0;
                $body
            }
            QType::Q4_1 => {
                type $t = BlockQ4_1;
                $body
            }
            QType::Q5_0 => {
                type $t = BlockQ5_0;
                $body
            }
            QType::Q5_1 => {
                type $t = BlockQ5_1;
                $body
            }
            QType::Q8_0 => {
                type $t = BlockQ8_0;
                $body
            }
            QType::Q2K => {
                type $t = BlockQ2K;
                $body
            }
            QType::Q3K => {
                type $t = BlockQ3K;
                $body
            }
            QType::Q4K => {
                type $t = BlockQ4K;
                $body
            }
            QType::Q5K => {
                type $t = BlockQ5K;
                $body
            }
            QType::Q6K => {
                type $t = BlockQ6K;
                $body
            }
            q => unreachable!("{q:?} is not one of candle's block types"),
        }
    };
}

impl QType {
    /// Every type bora reads.
    pub const ALL: [QType; 19] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q2K,
        QType::Q3K,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
        QType::IQ1S,
        QType::IQ1M,
        QType::IQ2XXS,
        QType::IQ2XS,
        QType::IQ2S,
        QType::IQ3XXS,
        QType::IQ3S,
        QType::IQ4NL,
        QType::IQ4XS,
    ];

    /// The i-quant this is, if it is one.
    pub(crate) fn iq(self) -> Option<IqType> {
        Some(match self {
            QType::IQ1S => IqType::Iq1S,
            QType::IQ1M => IqType::Iq1M,
            QType::IQ2XXS => IqType::Iq2Xxs,
            QType::IQ2XS => IqType::Iq2Xs,
            QType::IQ2S => IqType::Iq2S,
            QType::IQ3XXS => IqType::Iq3Xxs,
            QType::IQ3S => IqType::Iq3S,
            QType::IQ4NL => IqType::Iq4Nl,
            QType::IQ4XS => IqType::Iq4Xs,
            _ => return None,
        })
    }

    /// Whether bora quantizes to this type ([`quantize`]).
    pub fn quantizable(self) -> bool {
        self.iq().is_none()
    }

    /// Elements per block: 32, or 256 for the k-quants and most i-quants.
    pub fn block_elems(self) -> usize {
        match self.iq() {
            Some(t) => t.block_elems(),
            None => with_block!(self, T => T::BLCK_SIZE),
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self.iq() {
            Some(t) => t.block_bytes(),
            None => with_block!(self, T => std::mem::size_of::<T>()),
        }
    }

    /// The alignment a block needs in memory (the i-quants' blocks are read bytewise).
    pub fn block_align(self) -> usize {
        match self.iq() {
            Some(_) => 2,
            None => with_block!(self, T => std::mem::align_of::<T>()),
        }
    }

    /// Bytes of one row of `cols` elements; `None` when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems())
            .then(|| cols / self.block_elems() * self.block_bytes())
    }

    /// ggml's type id, as GGUF files store it.
    pub fn ggml_id(self) -> u32 {
        match self {
            QType::Q4_0 => 2,
            QType::Q4_1 => 3,
            QType::Q5_0 => 6,
            QType::Q5_1 => 7,
            QType::Q8_0 => 8,
            QType::Q2K => 10,
            QType::Q3K => 11,
            QType::Q4K => 12,
            QType::Q5K => 13,
            QType::Q6K => 14,
            QType::IQ2XXS => 16,
            QType::IQ2XS => 17,
            QType::IQ3XXS => 18,
            QType::IQ1S => 19,
            QType::IQ4NL => 20,
            QType::IQ3S => 21,
            QType::IQ2S => 22,
            QType::IQ4XS => 23,
            QType::IQ1M => 29,
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<Self> {
        QType::ALL.into_iter().find(|q| q.ggml_id() == id)
    }

    /// candle's name for this type (candle's quantized tensors, on any device); `None` for the
    /// i-quants, which candle lacks.
    pub fn candle(self) -> Option<GgmlDType> {
        Some(match self {
            QType::Q4_0 => GgmlDType::Q4_0,
            QType::Q4_1 => GgmlDType::Q4_1,
            QType::Q5_0 => GgmlDType::Q5_0,
            QType::Q5_1 => GgmlDType::Q5_1,
            QType::Q8_0 => GgmlDType::Q8_0,
            QType::Q2K => GgmlDType::Q2K,
            QType::Q3K => GgmlDType::Q3K,
            QType::Q4K => GgmlDType::Q4K,
            QType::Q5K => GgmlDType::Q5K,
            QType::Q6K => GgmlDType::Q6K,
            _ => return None,
        })
    }

    pub fn from_candle(t: GgmlDType) -> Option<Self> {
        QType::ALL.into_iter().find(|q| q.candle() == Some(t))
    }

    /// Byte offsets in a block of its f16 scale and, for the types with one, of the f16
    /// scale of its minimums: what a random block must set to finite values. `None` for
    /// IQ1_M, whose scale is spread over four nibbles ([`QType::set_block_scales`]).
    pub fn scale_offsets(self) -> Option<(usize, Option<usize>)> {
        Some(match self {
            QType::Q8_0 | QType::Q4_0 | QType::Q5_0 => (0, None),
            QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => (0, Some(2)),
            QType::Q2K => (80, Some(82)),
            QType::Q3K => (108, None),
            QType::Q6K => (208, None),
            QType::IQ1M => return None,
            _ => (0, None),
        })
    }

    /// Sets a block's f16 scale to `d` and, for the types with one, its minimums' scale to
    /// `dmin`: a block of random bits becomes one of small finite values.
    pub fn set_block_scales(self, block: &mut [u8], d: f32, dmin: f32) {
        let d = half::f16::from_f32(d).to_bits();
        match self.scale_offsets() {
            Some((at, min_at)) => {
                block[at..at + 2].copy_from_slice(&d.to_le_bytes());
                if let Some(o) = min_at {
                    let dmin = half::f16::from_f32(dmin).to_bits();
                    block[o..o + 2].copy_from_slice(&dmin.to_le_bytes());
                }
            }
            None => quant_iq::set_iq1m_scale(block, d),
        }
    }

    /// ggml's name: `Q4_0`, `Q4_K`, ...
    pub fn name(self) -> &'static str {
        match self {
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q5_0 => "Q5_0",
            QType::Q5_1 => "Q5_1",
            QType::Q8_0 => "Q8_0",
            QType::Q2K => "Q2_K",
            QType::Q3K => "Q3_K",
            QType::Q4K => "Q4_K",
            QType::Q5K => "Q5_K",
            QType::Q6K => "Q6_K",
            QType::IQ1S => "IQ1_S",
            QType::IQ1M => "IQ1_M",
            QType::IQ2XXS => "IQ2_XXS",
            QType::IQ2XS => "IQ2_XS",
            QType::IQ2S => "IQ2_S",
            QType::IQ3XXS => "IQ3_XXS",
            QType::IQ3S => "IQ3_S",
            QType::IQ4NL => "IQ4_NL",
            QType::IQ4XS => "IQ4_XS",
        }
    }

    /// The type named `s` (`q4_k`, `Q8_0`, ...), case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        QType::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s))
    }

    /// How activations are quantized for this type's dot products.
    pub fn act_quant(self) -> ActQuant {
        match self {
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 | QType::IQ4NL => ActQuant::Q8_0,
            QType::Q4_1 | QType::Q5_1 => ActQuant::Q8_1,
            _ => ActQuant::Q8K,
        }
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_elems() as f64
    }
}

impl std::fmt::Display for QType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ActQuant {
    pub(crate) fn block_elems(self) -> usize {
        match self {
            ActQuant::Q8_0 => BlockQ8_0::BLCK_SIZE,
            ActQuant::Q8_1 => BlockQ8_1::BLCK_SIZE,
            ActQuant::Q8K => BlockQ8K::BLCK_SIZE,
        }
    }

    pub(crate) fn block_bytes(self) -> usize {
        match self {
            ActQuant::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            ActQuant::Q8_1 => std::mem::size_of::<BlockQ8_1>(),
            ActQuant::Q8K => std::mem::size_of::<BlockQ8K>(),
        }
    }

    /// Quantizes `x` (a whole number of blocks) into `out`, `x.len() / block_elems` blocks.
    pub(crate) fn quantize(self, x: &[f32], out: &mut [u8]) {
        match self {
            ActQuant::Q8_0 => crate::cpu::qdot::quantize_q8_0(x, out),
            ActQuant::Q8_1 => BlockQ8_1::from_float(x, blocks_mut(out)),
            ActQuant::Q8K => crate::cpu::qdot::quantize_q8k(x, out),
        }
    }

    /// Bytes of one activation row of `k` values as the matrix products keep it: its blocks,
    /// and for Q8_K a tail of `k / 32` f32 (each 32 values' byte sum times their block's
    /// scale) with which the Q4_K kernels apply the minimums.
    pub(crate) fn row_bytes(self, k: usize) -> usize {
        let blocks = k / self.block_elems() * self.block_bytes();
        match self {
            ActQuant::Q8K => blocks + k / 32 * 4,
            _ => blocks,
        }
    }

    /// Quantizes one row `x` into `out` ([`ActQuant::row_bytes`] long): its blocks, then the
    /// tail.
    pub(crate) fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        let (blocks, tail) = out.split_at_mut(x.len() / self.block_elems() * self.block_bytes());
        self.quantize(x, blocks);
        if self == ActQuant::Q8K {
            let size = std::mem::size_of::<BlockQ8K>();
            for (block, sums) in blocks.chunks_exact(size).zip(tail.chunks_exact_mut(32)) {
                let d = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
                let bsum = |i: usize| i16::from_le_bytes([block[260 + 2 * i], block[261 + 2 * i]]);
                for (j, s) in sums.chunks_exact_mut(4).enumerate() {
                    let sum = bsum(2 * j) as f32 + bsum(2 * j + 1) as f32;
                    s.copy_from_slice(&(d * sum).to_le_bytes());
                }
            }
        }
    }
}

/// `bytes` as blocks of `T`.
///
/// # Panics
/// If `bytes` is not aligned for `T` or not a whole number of blocks.
pub(crate) fn blocks<T: GgmlType>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()),
        "quantized data is not aligned for its blocks"
    );
    assert!(
        bytes.len().is_multiple_of(size),
        "quantized data is not a whole number of blocks"
    );
    // SAFETY: candle's block types are `repr(C)` plain data (floats and integer arrays: every
    // bit pattern is a value); the pointer is aligned and the length whole, as checked above.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) }
}

/// `bytes` as mutable blocks of `T` (same conditions as [`blocks`]).
pub(crate) fn blocks_mut<T: GgmlType>(bytes: &mut [u8]) -> &mut [T] {
    let size = std::mem::size_of::<T>();
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()),
        "quantized data is not aligned for its blocks"
    );
    assert!(
        bytes.len().is_multiple_of(size),
        "quantized data is not a whole number of blocks"
    );
    // SAFETY: as in `blocks`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut T, bytes.len() / size) }
}

/// The values of `data` (whole blocks of type `q`) into `out` (`blocks · block_elems` long).
pub fn dequantize(q: QType, data: &[u8], out: &mut [f32]) {
    match q.iq() {
        Some(t) => {
            assert!(
                data.len().is_multiple_of(t.block_bytes())
                    && out.len() == data.len() / t.block_bytes() * t.block_elems(),
                "dequantize: {q} data is not whole blocks of its output"
            );
            let blocks = data.chunks_exact(t.block_bytes());
            for (b, o) in blocks.zip(out.chunks_exact_mut(t.block_elems())) {
                t.dequantize_block(b, o);
            }
        }
        None => with_block!(q, T => T::to_float(blocks::<T>(data), out)),
    }
}

/// `x` (a whole number of blocks of `q`) quantized into `out` (`x.len() / block_elems ·
/// block_bytes` bytes, aligned for the block), with ggml's reference quantization: bora's own
/// for Q4_K and Q5_K (`quant_k`), candle's port for the others.
///
/// # Panics
/// For a type bora does not write (the i-quants: [`QType::quantizable`]).
pub fn quantize(q: QType, x: &[f32], out: &mut [u8]) {
    assert!(q.quantizable(), "bora does not quantize to {q}");
    match q {
        QType::Q4K => crate::quant_k::quantize_q4k(x, out),
        QType::Q5K => crate::quant_k::quantize_q5k(x, out),
        _ => with_block!(q, T => T::from_float(x, blocks_mut::<T>(out))),
    }
}

/// An owned buffer of quantized blocks, aligned for every block type.
#[derive(Clone, Default)]
pub struct QBuf {
    words: Vec<u64>,
    len: usize,
}

impl QBuf {
    pub fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// Dot products of one weight row (`w`, whole blocks of `q`) with activation rows already
/// quantized for it (`acts[r]`, whole blocks of `q.act_quant()`), written to `out[r]`.
pub(crate) fn dot_rows(q: QType, k: usize, w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
    use crate::cpu::iqdot;
    if iqdot::takes(q) {
        let w = &w[..k / q.block_elems() * q.block_bytes()];
        for (a, o) in acts
            .chunks(iqdot::IQ_ACT_ROWS)
            .zip(out.chunks_mut(iqdot::IQ_ACT_ROWS))
        {
            iqdot::dot(q, w, a, o);
        }
        return;
    }
    candle_dot_rows(q, k, w, acts, out)
}

/// [`dot_rows`] by candle's dot products (the types candle has).
pub(crate) fn candle_dot_rows(q: QType, k: usize, w: &[u8], acts: &[&[u8]], out: &mut [f32]) {
    with_block!(q, T => {
        let w = blocks::<T>(w);
        for (o, a) in out.iter_mut().zip(acts) {
            *o = T::vec_dot(k, w, blocks::<<T as GgmlType>::VecDotType>(a));
        }
    })
}

/// `blocks` seeded random blocks of `q` with small finite scales: the weights of tests for
/// the types bora does not quantize to.
#[cfg(test)]
pub(crate) fn random_blocks(q: QType, blocks: usize, seed: u64) -> QBuf {
    let mut state = seed;
    let mut buf = QBuf::zeroed(blocks * q.block_bytes());
    for b in buf.as_bytes_mut().iter_mut() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *b = (state >> 33) as u8;
    }
    for (i, block) in buf
        .as_bytes_mut()
        .chunks_exact_mut(q.block_bytes())
        .enumerate()
    {
        q.set_block_scales(block, 1e-3 * (1.0 + (i % 8) as f32 / 7.0), 1e-3);
    }
    buf
}

/// Row-major weights `w` (`rows · k` values) as blocks of `q`: quantized when bora writes `q`,
/// otherwise seeded random blocks. Returns the blocks and their values.
#[cfg(test)]
pub(crate) fn test_weights(q: QType, w: &[f32], seed: u64) -> (QBuf, Vec<f32>) {
    let blocks = w.len() / q.block_elems();
    let b = if q.quantizable() {
        let mut b = QBuf::zeroed(blocks * q.block_bytes());
        quantize(q, w, b.as_bytes_mut());
        b
    } else {
        random_blocks(q, blocks, seed)
    };
    let mut back = vec![0f32; w.len()];
    dequantize(q, b.as_bytes(), &mut back);
    (b, back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_ggml_sizes() {
        let want = [
            (QType::Q4_0, 32, 18, 2),
            (QType::Q4_1, 32, 20, 3),
            (QType::Q5_0, 32, 22, 6),
            (QType::Q5_1, 32, 24, 7),
            (QType::Q8_0, 32, 34, 8),
            (QType::Q2K, 256, 84, 10),
            (QType::Q3K, 256, 110, 11),
            (QType::Q4K, 256, 144, 12),
            (QType::Q5K, 256, 176, 13),
            (QType::Q6K, 256, 210, 14),
            (QType::IQ1S, 256, 50, 19),
            (QType::IQ1M, 256, 56, 29),
            (QType::IQ2XXS, 256, 66, 16),
            (QType::IQ2XS, 256, 74, 17),
            (QType::IQ2S, 256, 82, 22),
            (QType::IQ3XXS, 256, 98, 18),
            (QType::IQ3S, 256, 110, 21),
            (QType::IQ4NL, 32, 18, 20),
            (QType::IQ4XS, 256, 136, 23),
        ];
        for (q, elems, bytes, id) in want {
            assert_eq!(
                (q.block_elems(), q.block_bytes(), q.ggml_id()),
                (elems, bytes, id)
            );
            assert_eq!(QType::from_ggml_id(id), Some(q));
            assert_eq!(QType::parse(&q.name().to_lowercase()), Some(q));
        }
        assert_eq!(QType::from_ggml_id(9), None);
        assert_eq!(want.len(), QType::ALL.len());
        assert_eq!(QType::Q4K.row_bytes(512), Some(288));
        assert_eq!(QType::Q4K.row_bytes(100), None);
    }

    /// With the scales at `scale_offsets` zeroed, a block dequantizes to zeros: they are the
    /// scales (what `cuda::fill_random_blocks` and random weights set).
    #[test]
    fn scale_offsets_are_the_scales() {
        let mut state = 99u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state
        };
        for q in QType::ALL {
            assert_eq!(
                q.candle().and_then(QType::from_candle),
                q.candle().map(|_| q)
            );
            let mut block = vec![0u8; q.block_bytes()];
            if q.quantizable() {
                let x: Vec<f32> = (0..q.block_elems())
                    .map(|_| (next() >> 8) as f32 / (1u32 << 24) as f32 - 0.3)
                    .collect();
                quantize(q, &x, &mut block);
            } else {
                block.iter_mut().for_each(|b| *b = (next() >> 13) as u8);
                q.set_block_scales(&mut block, 0.01, 0.01);
            }
            let mut y = vec![0f32; q.block_elems()];
            dequantize(q, &block, &mut y);
            assert!(y.iter().any(|&v| v != 0.0), "{q:?}");
            q.set_block_scales(&mut block, 0.0, 0.0);
            dequantize(q, &block, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{q:?}: {y:?}");
        }
    }

    /// Every type dequantizes to gguf-py's values, bit for bit: the seeded random blocks of
    /// models/fixtures/dequant (models/gen_quant_reference.py), each followed by the f32
    /// values gguf-py's numpy code gives for them.
    #[test]
    fn dequantization_is_gguf_pys_bit_for_bit() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fixtures/dequant");
        for q in QType::ALL {
            let file = std::fs::read(format!("{dir}/{}.bin", q.name()))
                .unwrap_or_else(|e| panic!("{dir}/{}.bin: {e}", q.name()));
            let per_block = q.block_bytes() + 4 * q.block_elems();
            assert!(file.len().is_multiple_of(per_block), "{q}");
            let blocks = file.len() / per_block;
            let (data, want) = file.split_at(blocks * q.block_bytes());
            let mut buf = QBuf::zeroed(data.len());
            buf.as_bytes_mut().copy_from_slice(data);
            let mut got = vec![0f32; blocks * q.block_elems()];
            dequantize(q, buf.as_bytes(), &mut got);
            let mut differ = 0;
            for (i, (g, w)) in got.iter().zip(want.chunks_exact(4)).enumerate() {
                let w = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                if g.to_bits() != w.to_bits() {
                    if differ < 5 {
                        eprintln!("{q}: value {i}: {g} where gguf-py has {w}");
                    }
                    differ += 1;
                }
            }
            assert_eq!(differ, 0, "{q}: {differ} of {} values differ", got.len());
        }
    }

    /// The weighted search's round trip is closer than candle's older one (ggml's `qkx1`).
    #[test]
    fn k_quant_search_beats_the_older_one() {
        let mut state = 12345u32;
        let x: Vec<f32> = (0..4096)
            .map(|_| {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (state >> 8) as f32 / (1u32 << 24) as f32;
                (u - 0.5) * (1.0 + 3.0 * u * u)
            })
            .collect();
        let mse = |deq: &[f32]| -> f32 { x.iter().zip(deq).map(|(a, b)| (a - b) * (a - b)).sum() };
        for q in [QType::Q4K, QType::Q5K] {
            let mut ours = QBuf::zeroed(q.row_bytes(x.len()).unwrap());
            quantize(q, &x, ours.as_bytes_mut());
            let mut old = QBuf::zeroed(q.row_bytes(x.len()).unwrap());
            with_block!(q, T => T::from_float(&x, blocks_mut::<T>(old.as_bytes_mut())));
            let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            dequantize(q, ours.as_bytes(), &mut a);
            dequantize(q, old.as_bytes(), &mut b);
            assert!(mse(&a) < mse(&b), "{q}: {} vs {}", mse(&a), mse(&b));
        }
    }

    #[test]
    fn round_trip_error_shrinks_with_bits() {
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let err = |q: QType| {
            let mut buf = QBuf::zeroed(q.row_bytes(x.len()).unwrap());
            quantize(q, &x, buf.as_bytes_mut());
            let mut y = vec![0f32; x.len()];
            dequantize(q, buf.as_bytes(), &mut y);
            let mse: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
            mse / x.len() as f32
        };
        assert!(err(QType::Q8_0) < err(QType::Q6K));
        assert!(err(QType::Q6K) < err(QType::Q4K));
        assert!(err(QType::Q4K) < err(QType::Q2K));
        assert!(err(QType::Q8_0) < 1e-4, "{}", err(QType::Q8_0));
    }
}
