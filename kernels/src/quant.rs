//! ggml's quantized block formats: the types, their sizes, and row conversion.
//!
//! A quantized matrix is `N` rows of `K / block_elems` blocks each, byte for byte as ggml and
//! GGUF store them. The block layouts and the reference (de)quantization and dot products are
//! candle's (`candle_core::quantized::k_quants`, a port of ggml's), so that a block bora
//! quantizes is the block llama.cpp would have written; this module maps a [`QType`] to them.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;

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
        }
    };
}

impl QType {
    pub const ALL: [QType; 10] = [
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
    ];

    /// Elements per block: 32, or 256 for the k-quants.
    pub fn block_elems(self) -> usize {
        with_block!(self, T => T::BLCK_SIZE)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        with_block!(self, T => std::mem::size_of::<T>())
    }

    /// The alignment a block needs in memory.
    pub fn block_align(self) -> usize {
        with_block!(self, T => std::mem::align_of::<T>())
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
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<Self> {
        QType::ALL.into_iter().find(|q| q.ggml_id() == id)
    }

    /// candle's name for this type (candle's quantized tensors, on any device).
    pub fn candle(self) -> GgmlDType {
        match self {
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
        }
    }

    pub fn from_candle(t: GgmlDType) -> Option<Self> {
        QType::ALL.into_iter().find(|q| q.candle() == t)
    }

    /// Byte offsets in a block of its f16 scale and, for the types with one, of the f16
    /// scale of its minimums: what a random block must set to finite values.
    pub fn scale_offsets(self) -> (usize, Option<usize>) {
        match self {
            QType::Q8_0 | QType::Q4_0 | QType::Q5_0 => (0, None),
            QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => (0, Some(2)),
            QType::Q2K => (80, Some(82)),
            QType::Q3K => (108, None),
            QType::Q6K => (208, None),
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
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => ActQuant::Q8_0,
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
    with_block!(q, T => T::to_float(blocks::<T>(data), out))
}

/// `x` (a whole number of blocks of `q`) quantized into `out` (`x.len() / block_elems ·
/// block_bytes` bytes, aligned for the block), with ggml's reference quantization: bora's own
/// for Q4_K and Q5_K (`quant_k`), candle's port for the others.
pub fn quantize(q: QType, x: &[f32], out: &mut [u8]) {
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
    with_block!(q, T => {
        let w = blocks::<T>(w);
        for (o, a) in out.iter_mut().zip(acts) {
            *o = T::vec_dot(k, w, blocks::<<T as GgmlType>::VecDotType>(a));
        }
    })
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
        assert_eq!(QType::Q4K.row_bytes(512), Some(288));
        assert_eq!(QType::Q4K.row_bytes(100), None);
    }

    /// With the scales at `scale_offsets` zeroed, a random block dequantizes to zeros: they
    /// are the scales (what `cuda::fill_random_blocks` sets).
    #[test]
    fn scale_offsets_are_the_scales() {
        let mut state = 99u32;
        for q in QType::ALL {
            assert_eq!(QType::from_candle(q.candle()), Some(q));
            let x: Vec<f32> = (0..q.block_elems())
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 - 0.3
                })
                .collect();
            let mut block = vec![0u8; q.block_bytes()];
            quantize(q, &x, &mut block);
            let mut y = vec![0f32; q.block_elems()];
            dequantize(q, &block, &mut y);
            assert!(y.iter().any(|&v| v != 0.0), "{q:?}");
            let (d, dmin) = q.scale_offsets();
            for o in std::iter::once(d).chain(dmin) {
                block[o] = 0;
                block[o + 1] = 0;
            }
            dequantize(q, &block, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{q:?}: {y:?}");
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
