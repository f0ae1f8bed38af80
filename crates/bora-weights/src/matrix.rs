//! [`Matrix`]: the weight of a linear layer, `[rows = out, cols = in]` as in `nn.Linear`.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use bora_kernels::cpu::packed;
use bora_kernels::{QBuf, QType, WeightRef};
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::Dtype;

use crate::store::{SafetensorsStore, StoredTensor};
use crate::{Result, WeightsError};

/// The dtypes a weight can be kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    BF16,
    F16,
}

impl WeightDType {
    pub fn size(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::BF16 | WeightDType::F16 => 2,
        }
    }

    pub fn candle(self) -> candle_core::DType {
        match self {
            WeightDType::F32 => candle_core::DType::F32,
            WeightDType::BF16 => candle_core::DType::BF16,
            WeightDType::F16 => candle_core::DType::F16,
        }
    }

    pub(crate) fn of_stored(
        t: &StoredTensor,
        name: &str,
        store: &SafetensorsStore,
    ) -> Result<Self> {
        match t.dtype {
            Dtype::F32 => Ok(WeightDType::F32),
            Dtype::BF16 => Ok(WeightDType::BF16),
            Dtype::F16 => Ok(WeightDType::F16),
            other => Err(WeightsError::DType {
                name: name.to_string(),
                file: store.path(t).to_path_buf(),
                got: format!("{other:?}"),
            }),
        }
    }
}

/// How a host matrix holds its values: floats of a dtype, or ggml's quantized blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Float(WeightDType),
    Quant(QType),
}

impl WeightFormat {
    /// Bytes of `rows` rows of `cols` values (`cols` a whole number of blocks when quantized).
    pub fn bytes(self, rows: usize, cols: usize) -> usize {
        match self {
            WeightFormat::Float(d) => rows * cols * d.size(),
            WeightFormat::Quant(q) => rows * q.row_bytes(cols).unwrap_or(0),
        }
    }

    /// The alignment the values need in memory.
    fn align(self) -> usize {
        match self {
            WeightFormat::Float(d) => d.size(),
            WeightFormat::Quant(q) => q.block_align(),
        }
    }

    /// `f32`, `bf16`, `f16`, or ggml's name of the quantized type.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Float(WeightDType::F32) => "f32",
            WeightFormat::Float(WeightDType::BF16) => "bf16",
            WeightFormat::Float(WeightDType::F16) => "f16",
            WeightFormat::Quant(q) => q.name(),
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Element storage of a host matrix: a window of a memory map, or owned values.
enum HostData {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
    },
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    Quant(QBuf),
    /// Quantized blocks repacked into tiles of `packed::PACK_ROWS` rows.
    Packed(QBuf),
}

/// A weight matrix in host memory, in its kept format; cheap to clone and to take rows of.
#[derive(Clone)]
pub struct HostMatrix {
    data: Arc<HostData>,
    format: WeightFormat,
    /// First element of this matrix in `data` (a whole number of rows).
    offset: usize,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for HostMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.data {
            HostData::Mapped { .. } => "mapped",
            _ => "owned",
        };
        write!(
            f,
            "HostMatrix({kind} {} [{}, {}])",
            self.format, self.rows, self.cols
        )
    }
}

impl HostMatrix {
    /// The stored tensor as `[rows, cols]` in `dtype`: borrowed from the memory map when it is
    /// stored in that dtype (and aligned for it), converted into owned memory otherwise.
    pub fn load(
        store: &SafetensorsStore,
        name: &str,
        t: &StoredTensor,
        rows: usize,
        cols: usize,
        dtype: WeightDType,
    ) -> Result<Self> {
        let stored = WeightDType::of_stored(t, name, store)?;
        let elems: usize = t.shape.iter().product();
        if elems != rows * cols {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                file: store.path(t).to_path_buf(),
                expected: vec![rows, cols],
                got: t.shape.clone(),
            });
        }
        let bytes = store.bytes(t);
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(stored.size());
        let data = if stored == dtype && aligned {
            HostData::Mapped {
                map: store.map(t).clone(),
                start: t.start,
            }
        } else {
            convert(bytes, stored, dtype)
        };
        Ok(Self {
            data: Arc::new(data),
            format: WeightFormat::Float(dtype),
            offset: 0,
            rows,
            cols,
        })
    }

    /// `rows × cols` values of `format` at byte `start` of a memory map (a GGUF file's tensor,
    /// whose bounds the reader checked); converted into owned memory when not aligned.
    pub fn mapped(
        map: Arc<Mmap>,
        start: usize,
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> Self {
        let len = format.bytes(rows, cols);
        assert!(start + len <= map.len(), "HostMatrix::mapped: past the map");
        let aligned = (map[start..].as_ptr() as usize).is_multiple_of(format.align());
        let data = if aligned {
            HostData::Mapped { map, start }
        } else {
            let bytes = &map[start..start + len];
            match format {
                WeightFormat::Float(d) => convert(bytes, d, d),
                WeightFormat::Quant(_) => {
                    let mut buf = QBuf::zeroed(len);
                    buf.as_bytes_mut().copy_from_slice(bytes);
                    HostData::Quant(buf)
                }
            }
        };
        Self {
            data: Arc::new(data),
            format,
            offset: 0,
            rows,
            cols,
        }
    }

    /// A matrix of owned quantized blocks (`rows` rows of `cols` values of type `q`).
    pub fn from_quant(buf: QBuf, q: QType, rows: usize, cols: usize) -> Self {
        assert_eq!(
            Some(buf.as_bytes().len()),
            q.row_bytes(cols).map(|b| b * rows),
            "HostMatrix::from_quant: wrong length"
        );
        Self {
            data: Arc::new(HostData::Quant(buf)),
            format: WeightFormat::Quant(q),
            offset: 0,
            rows,
            cols,
        }
    }

    /// This quantized matrix repacked for bora's packed kernels, when the CPU and its type
    /// have them and its rows are whole tiles (`None` otherwise: keep it as it is).
    pub fn packed(&self) -> Option<Self> {
        self.packed_with(|_| {})
    }

    /// [`HostMatrix::packed`], a few MiB at a time, calling `done` with each range of this
    /// matrix's bytes once it is copied: a loader releases those file pages there, so that
    /// packing a tensor never holds both copies of more than a chunk of it.
    pub fn packed_with(&self, mut done: impl FnMut(std::ops::Range<usize>)) -> Option<Self> {
        const CHUNK_BYTES: usize = 4 << 20;
        let WeightFormat::Quant(q) = self.format else {
            return None;
        };
        if matches!(*self.data, HostData::Packed(_)) || !packed::packable(q, self.rows, self.cols) {
            return None;
        }
        let (rows, cols) = (self.rows, self.cols);
        let mut buf = QBuf::zeroed(packed::packed_bytes(q, rows, cols));
        let src = self.bytes();
        let tile_src = self.format.bytes(packed::PACK_ROWS, cols);
        let tile_out = packed::packed_bytes(q, packed::PACK_ROWS, cols);
        let per_chunk = (CHUNK_BYTES / tile_src.max(1)).max(1);
        let tiles = rows / packed::PACK_ROWS;
        for t0 in (0..tiles).step_by(per_chunk) {
            let t1 = (t0 + per_chunk).min(tiles);
            packed::pack(
                q,
                &src[t0 * tile_src..t1 * tile_src],
                (t1 - t0) * packed::PACK_ROWS,
                cols,
                &mut buf.as_bytes_mut()[t0 * tile_out..t1 * tile_out],
            );
            done(t0 * tile_src..t1 * tile_src);
        }
        Some(Self {
            data: Arc::new(HostData::Packed(buf)),
            format: self.format,
            offset: 0,
            rows: self.rows,
            cols: self.cols,
        })
    }

    /// Whether the blocks are repacked into tiles ([`HostMatrix::packed`]).
    pub fn is_packed(&self) -> bool {
        matches!(*self.data, HostData::Packed(_))
    }

    /// This matrix quantized to `q` (row by row, with ggml's reference quantization).
    pub fn quantize(&self, q: QType) -> Self {
        let row_bytes = q
            .row_bytes(self.cols)
            .expect("HostMatrix::quantize: rows are not whole blocks");
        let mut buf = QBuf::zeroed(self.rows * row_bytes);
        self.quantize_rows_into(q, None, buf.as_bytes_mut());
        Self::from_quant(buf, q, self.rows, self.cols)
    }

    /// This matrix quantized to `q` at load, or an error naming tensor `name` of `file` when
    /// its rows are not a whole number of `q`'s blocks.
    pub(crate) fn quantize_checked(&self, q: QType, name: &str, file: &Path) -> Result<Self> {
        if !q.quantizable() {
            return Err(WeightsError::Unsupported {
                path: file.to_path_buf(),
                reason: format!(
                    "cannot quantize `{name}` to {q}: bora reads the i-quants but does not write \
                     them (llama-quantize makes them, with an importance matrix)"
                ),
            });
        }
        if q.row_bytes(self.cols).is_none() {
            return Err(WeightsError::Unsupported {
                path: file.to_path_buf(),
                reason: format!(
                    "cannot quantize `{name}` to {q}: its rows of {} values are not a multiple of {q}'s block of {}",
                    self.cols,
                    q.block_elems()
                ),
            });
        }
        Ok(self.quantize(q))
    }

    /// Every row quantized to `q` into `out` (`rows · row_bytes`), in parallel; row `i` of the
    /// output is row `order[i]` of this matrix when an order is given.
    pub fn quantize_rows_into(&self, q: QType, order: Option<&[usize]>, out: &mut [u8]) {
        use rayon::prelude::*;
        let row_bytes = q
            .row_bytes(self.cols)
            .expect("HostMatrix::quantize_rows_into: rows are not whole blocks");
        // Chunks of rows big enough that the per-chunk row buffer is amortized.
        let per_task = (1 << 20) / (self.cols * 4).max(1) + 1;
        out.par_chunks_mut(row_bytes * per_task)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut row = vec![0f32; self.cols];
                for (i, dst) in chunk.chunks_exact_mut(row_bytes).enumerate() {
                    let r = c * per_task + i;
                    self.row_f32(order.map_or(r, |o| o[r]), &mut row);
                    bora_kernels::quant::quantize(q, &row, dst);
                }
            });
    }

    /// Rows with their order changed: row `i` of the result is row `order[i]` of this one
    /// (owned; the attention projections of a GGUF file are stored in llama.cpp's row order).
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        assert!(
            !self.is_packed(),
            "HostMatrix::permute_rows: a packed matrix"
        );
        assert_eq!(
            order.len(),
            self.rows,
            "HostMatrix::permute_rows: wrong order"
        );
        let row_bytes = self.format.bytes(1, self.cols);
        let src = self.bytes();
        let mut out = QBuf::zeroed(self.rows * row_bytes);
        for (dst, &from) in out.as_bytes_mut().chunks_exact_mut(row_bytes).zip(order) {
            dst.copy_from_slice(&src[from * row_bytes..(from + 1) * row_bytes]);
        }
        let data = match self.format {
            WeightFormat::Quant(_) => HostData::Quant(out),
            WeightFormat::Float(d) => convert(out.as_bytes(), d, d),
        };
        Self {
            data: Arc::new(data),
            format: self.format,
            offset: 0,
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// The matrix's bytes, in its format (packed tiles when packed).
    fn bytes(&self) -> &[u8] {
        let first = self.offset / self.cols.max(1);
        let (start, len) = match (&*self.data, self.format) {
            (HostData::Packed(_), WeightFormat::Quant(q)) => (
                packed::packed_bytes(q, first, self.cols),
                packed::packed_bytes(q, self.rows, self.cols),
            ),
            _ => (
                self.format.bytes(first, self.cols),
                self.format.bytes(self.rows, self.cols),
            ),
        };
        let all: &[u8] = match &*self.data {
            HostData::Mapped { map, start } => &map[*start..],
            HostData::F32(v) => as_bytes(v),
            HostData::BF16(v) => as_bytes(v),
            HostData::F16(v) => as_bytes(v),
            HostData::Quant(b) | HostData::Packed(b) => b.as_bytes(),
        };
        &all[start..start + len]
    }

    /// A matrix of owned f32 values (for tests and generated weights).
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize, dtype: WeightDType) -> Self {
        assert_eq!(
            values.len(),
            rows * cols,
            "HostMatrix::from_f32: wrong length"
        );
        let data = match dtype {
            WeightDType::F32 => HostData::F32(values),
            WeightDType::BF16 => {
                HostData::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect())
            }
            WeightDType::F16 => HostData::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
        };
        Self {
            data: Arc::new(data),
            format: WeightFormat::Float(dtype),
            offset: 0,
            rows,
            cols,
        }
    }

    /// A bf16 matrix of owned values (generated weights).
    pub fn from_bf16(values: Vec<bf16>, rows: usize, cols: usize) -> Self {
        assert_eq!(
            values.len(),
            rows * cols,
            "HostMatrix::from_bf16: wrong length"
        );
        Self {
            data: Arc::new(HostData::BF16(values)),
            format: WeightFormat::Float(WeightDType::BF16),
            offset: 0,
            rows,
            cols,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes of weights this matrix holds.
    pub fn size_bytes(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the values are read straight from the file's memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.data, HostData::Mapped { .. })
    }

    /// Rows `start..start + count` as a matrix sharing this one's storage.
    pub fn slice_rows(&self, start: usize, count: usize) -> Self {
        assert!(
            start + count <= self.rows,
            "HostMatrix::slice_rows out of range"
        );
        assert!(
            !self.is_packed()
                || (start.is_multiple_of(packed::PACK_ROWS)
                    && count.is_multiple_of(packed::PACK_ROWS)),
            "HostMatrix::slice_rows: packed rows are taken in whole tiles"
        );
        Self {
            data: self.data.clone(),
            format: self.format,
            offset: self.offset + start * self.cols,
            rows: count,
            cols: self.cols,
        }
    }

    /// The values as the kernels take them.
    pub fn weights(&self) -> WeightRef<'_> {
        let (o, n) = (self.offset, self.rows * self.cols);
        let q = match self.format {
            WeightFormat::Quant(q) => q,
            WeightFormat::Float(dtype) => {
                return match &*self.data {
                    HostData::Mapped { map, start } => {
                        let p = map[*start..].as_ptr();
                        // SAFETY: the constructors checked that the window [start, start +
                        // elems·size) lies in the map and is aligned for the dtype; `o + n`
                        // never exceeds the loaded element count (slice_rows asserts it).
                        unsafe {
                            match dtype {
                                WeightDType::F32 => WeightRef::F32(std::slice::from_raw_parts(
                                    (p as *const f32).add(o),
                                    n,
                                )),
                                WeightDType::BF16 => WeightRef::BF16(std::slice::from_raw_parts(
                                    (p as *const bf16).add(o),
                                    n,
                                )),
                                WeightDType::F16 => WeightRef::F16(std::slice::from_raw_parts(
                                    (p as *const f16).add(o),
                                    n,
                                )),
                            }
                        }
                    }
                    HostData::F32(v) => WeightRef::F32(&v[o..o + n]),
                    HostData::BF16(v) => WeightRef::BF16(&v[o..o + n]),
                    HostData::F16(v) => WeightRef::F16(&v[o..o + n]),
                    HostData::Quant(_) | HostData::Packed(_) => {
                        unreachable!("float format over quantized data")
                    }
                };
            }
        };
        match &*self.data {
            HostData::Packed(_) => WeightRef::Packed(q, self.bytes()),
            _ => WeightRef::Quant(q, self.bytes()),
        }
    }

    /// Row `r` widened into `out` (an embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match self.weights() {
            WeightRef::F32(w) => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            WeightRef::BF16(w) => out
                .iter_mut()
                .zip(&w[r * c..(r + 1) * c])
                .for_each(|(o, v)| *o = v.to_f32()),
            WeightRef::F16(w) => out
                .iter_mut()
                .zip(&w[r * c..(r + 1) * c])
                .for_each(|(o, v)| *o = v.to_f32()),
            WeightRef::Quant(q, w) => {
                let rb = w.len() / self.rows;
                bora_kernels::quant::dequantize(q, &w[r * rb..(r + 1) * rb], out)
            }
            WeightRef::Packed(q, w) => {
                let mut blocks = vec![0u8; q.row_bytes(c).unwrap_or(0)];
                packed::unpack_row(q, w, c, r, &mut blocks);
                bora_kernels::quant::dequantize(q, &blocks, out)
            }
        }
    }

    /// Every value widened to f32 (the candle path's copy of a quantized matrix).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_f32(r, row);
        }
        out
    }

    /// `x[M, cols] · selfᵀ` as a `[M, rows]` f32 CPU tensor; `x` is f32 on the CPU.
    pub fn matmul_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!(
                "matmul: input has {k} columns, weight [{}, {}]",
                self.rows,
                self.cols
            )
        }
        let mut out = vec![0f32; m * self.rows];
        with_cpu_f32(x, |xs| {
            bora_kernels::matmul_xwt(xs, m, k, self.weights(), self.rows, &mut out)
        })?;
        Tensor::from_vec(out, (m, self.rows), &Device::Cpu)
    }
}

fn convert(bytes: &[u8], from: WeightDType, to: WeightDType) -> HostData {
    let widen = |b: &[u8]| -> f32 {
        match from {
            WeightDType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            WeightDType::BF16 => bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            WeightDType::F16 => f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        }
    };
    let vals = bytes.chunks_exact(from.size()).map(widen);
    match to {
        WeightDType::F32 => HostData::F32(vals.collect()),
        WeightDType::BF16 => HostData::BF16(vals.map(bf16::from_f32).collect()),
        WeightDType::F16 => HostData::F16(vals.map(f16::from_f32).collect()),
    }
}

/// The bytes of a slice of plain numbers.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32/bf16/f16 are plain data without padding; the length is the slice's size.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor, without copying them.
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    with_cpu(t, f)
}

/// Runs `f` on the values of a contiguous CPU tensor of dtype `T`, without copying them.
pub fn with_cpu<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> R,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor")
    };
    let all = cpu.as_slice::<T>()?;
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor")
    };
    Ok(f(&all[a..b]))
}

/// The weight of a linear layer.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// Host memory, computed on by bora's CPU kernels in its kept dtype.
    Host(HostMatrix),
    /// A candle tensor `[rows, cols]` on any device, computed on by candle.
    Tensor(Tensor),
    /// ggml blocks `[rows, cols]` in a candle quantized tensor on any device (candle's
    /// quantized products: on CUDA, a GEMV over the blocks for a few rows, a GEMM otherwise).
    Quant(Arc<QTensor>),
}

impl Matrix {
    /// `(rows, cols)`: `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Matrix::Host(h) => (h.rows, h.cols),
            Matrix::Tensor(t) => t.dims2().unwrap_or((0, 0)),
            Matrix::Quant(q) => q.shape().dims2().unwrap_or((0, 0)),
        }
    }

    /// `x[M, in] → [M, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Matrix::Host(h) => h.matmul_t(&x.contiguous()?),
            Matrix::Tensor(w) => x.matmul(&w.t()?),
            Matrix::Quant(q) => x
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(q.as_ref())?
                .to_dtype(x.dtype()),
        }
    }

    /// `x[M, in]` through several matrices at once (one parallel region when all are host
    /// matrices): the q/k/v projections of one input.
    pub fn forward_many(x: &Tensor, ws: &[&Matrix]) -> candle_core::Result<Vec<Tensor>> {
        let hosts: Option<Vec<&HostMatrix>> = ws
            .iter()
            .map(|w| match w {
                Matrix::Host(h) => Some(h),
                Matrix::Tensor(_) | Matrix::Quant(_) => None,
            })
            .collect();
        let Some(hosts) = hosts else {
            return ws.iter().map(|w| w.forward(x)).collect();
        };
        let x = x.contiguous()?;
        let (m, k) = x.dims2()?;
        if let Some(h) = hosts.iter().find(|h| h.cols != k) {
            candle_core::bail!(
                "matmul: input has {k} columns, weight [{}, {}]",
                h.rows,
                h.cols
            )
        }
        let mut outs: Vec<Vec<f32>> = hosts.iter().map(|h| vec![0f32; m * h.rows]).collect();
        with_cpu_f32(&x, |xs| {
            let mut products: Vec<bora_kernels::Product<'_>> = hosts
                .iter()
                .zip(outs.iter_mut())
                .map(|(h, out)| bora_kernels::Product {
                    twin: None,
                    x: xs,
                    m,
                    k,
                    w: h.weights(),
                    n: h.rows,
                    out,
                })
                .collect();
            bora_kernels::matmul_many(&mut products);
        })?;
        outs.into_iter()
            .zip(&hosts)
            .map(|(o, h)| Tensor::from_vec(o, (m, h.rows), &Device::Cpu))
            .collect()
    }

    /// Bytes of weights this matrix holds.
    pub fn size_bytes(&self) -> usize {
        match self {
            Matrix::Host(h) => h.size_bytes(),
            Matrix::Tensor(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Quant(q) => q.storage_size_in_bytes(),
        }
    }
}

/// Quantized host matrices of one type (a layer's experts, or one matrix) as one candle
/// quantized tensor of `shape` on `device`, their blocks one after another; `None` when they
/// are not quantized or not of one type.
pub fn upload_quant(
    ms: &[&HostMatrix],
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Option<QTensor>> {
    let mut blocks: Vec<Cow<'_, [u8]>> = Vec::with_capacity(ms.len());
    let mut qtype = None;
    for m in ms {
        match m.weights() {
            WeightRef::Quant(q, b) if qtype.is_none_or(|t| t == q) => {
                qtype = Some(q);
                blocks.push(Cow::Borrowed(b));
            }
            // Repacked tiles (host experts going to a device cache): the file's blocks back.
            WeightRef::Packed(q, b) if qtype.is_none_or(|t| t == q) => {
                qtype = Some(q);
                let rb = q.row_bytes(m.cols).unwrap_or(0);
                let mut rows = vec![0u8; rb * m.rows];
                for (r, out) in rows.chunks_exact_mut(rb.max(1)).enumerate() {
                    packed::unpack_row(q, b, m.cols, r, out);
                }
                blocks.push(Cow::Owned(rows));
            }
            _ => return Ok(None),
        }
    }
    let Some(q) = qtype else { return Ok(None) };
    let bytes: Vec<u8> = blocks.concat();
    let want = q
        .row_bytes(*shape.last().unwrap_or(&0))
        .map(|r| r * shape.iter().rev().skip(1).product::<usize>());
    if want != Some(bytes.len()) {
        candle_core::bail!(
            "{} bytes of {} blocks do not make a tensor of shape {shape:?}",
            bytes.len(),
            q.name()
        )
    }
    // A type candle lacks (the i-quants) is not uploaded as blocks: the caller widens it.
    let Some(dtype) = q.candle() else {
        return Ok(None);
    };
    let storage = QStorage::from_data(Cow::Owned(bytes), device, dtype)?;
    Ok(Some(QTensor::new(storage, shape)?))
}
