//! Writing GGUF files (version 3) that llama.cpp's tools read: the header and metadata first,
//! then each tensor's data in order, so that a model can be quantized tensor by tensor
//! straight into the file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::gguf::{GgmlType, MetaValue};
use crate::{Result, WeightsError};

const ALIGNMENT: u64 = 32;

/// A GGUF file being written: [`GgufWriter::create`] writes everything but the tensor data,
/// [`GgufWriter::tensor`] appends the next tensor's bytes, [`GgufWriter::finish`] checks that
/// all were written.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// (name, bytes) of the tensors still to write, in order.
    pending: std::collections::VecDeque<(String, u64)>,
    written: u64,
}

/// A tensor to be written: its name, ggml-order dimensions (row length first) and type.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlType,
}

impl TensorSpec {
    fn bytes(&self) -> Option<u64> {
        let elems: usize = self.dims.iter().product();
        let row = self.dims.first().copied().unwrap_or(1);
        match self.dtype {
            GgmlType::F32 => Some(elems as u64 * 4),
            GgmlType::F16 | GgmlType::BF16 => Some(elems as u64 * 2),
            GgmlType::Quant(q) => q.row_bytes(row).map(|b| (elems / row.max(1) * b) as u64),
            GgmlType::Unsupported(..) => None,
        }
    }
}

impl GgufWriter {
    /// Creates `path` with `metadata` and the descriptions of `tensors`.
    pub fn create(
        path: &Path,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
    ) -> Result<Self> {
        let err = |reason: String| WeightsError::Write {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::create(path).map_err(|e| err(e.to_string()))?;
        let mut buf: Vec<u8> = Vec::new();
        buf.extend_from_slice(b"GGUF");
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut buf, key);
            buf.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut buf, value).map_err(|e| err(format!("metadata `{key}`: {e}")))?;
        }
        let mut offset = 0u64;
        let mut pending = std::collections::VecDeque::new();
        for t in tensors {
            let size = t.bytes().ok_or_else(|| {
                err(format!(
                    "tensor `{}`: cannot write type {}",
                    t.name, t.dtype
                ))
            })?;
            put_string(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                buf.extend_from_slice(&(d as u64).to_le_bytes());
            }
            buf.extend_from_slice(&t.dtype.id().to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            pending.push_back((t.name.clone(), size));
            offset = (offset + size).next_multiple_of(ALIGNMENT);
        }
        let pad = (buf.len() as u64).next_multiple_of(ALIGNMENT) as usize - buf.len();
        buf.resize(buf.len() + pad, 0);
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&buf).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            pending,
            written: 0,
        })
    }

    fn err(&self, reason: String) -> WeightsError {
        WeightsError::Write {
            path: self.path.clone(),
            reason,
        }
    }

    /// Appends the data of the next tensor (in the order given to `create`).
    pub fn tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some((want, size)) = self.pending.pop_front() else {
            return Err(self.err(format!("tensor `{name}` was not declared")));
        };
        if want != name || size != data.len() as u64 {
            return Err(self.err(format!(
                "expected tensor `{want}` of {size} bytes next, got `{name}` of {} bytes",
                data.len()
            )));
        }
        let pad = size.next_multiple_of(ALIGNMENT) - size;
        let res = self
            .out
            .write_all(data)
            .and_then(|_| self.out.write_all(&vec![0u8; pad as usize]));
        res.map_err(|e| self.err(e.to_string()))?;
        self.written += size + pad;
        Ok(())
    }

    /// Flushes the file; an error when tensors declared were not written.
    pub fn finish(mut self) -> Result<u64> {
        if let Some((name, _)) = self.pending.front() {
            return Err(self.err(format!("tensor `{name}` was declared but not written")));
        }
        self.out.flush().map_err(|e| self.err(e.to_string()))?;
        Ok(self.written)
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_value(buf: &mut Vec<u8>, v: &MetaValue) -> std::result::Result<(), String> {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.push(*x as u8),
        MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(u8::from(*x)),
        MetaValue::String(s) => put_string(buf, s),
        MetaValue::Array(items) => {
            let ety = items.first().map(type_id).unwrap_or(4);
            if items.iter().any(|i| type_id(i) != ety) {
                return Err("an array mixes element types".into());
            }
            if ety == 9 {
                return Err("nested arrays are not written".into());
            }
            buf.extend_from_slice(&ety.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(buf, i)?;
            }
        }
    }
    Ok(())
}
