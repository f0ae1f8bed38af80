//! GGUF files (versions 2 and 3, little-endian), memory-mapped; split files as one store.
//!
//! bora reads GGUF itself rather than through candle's reader: a file's counts and lengths are
//! checked against the bytes that are left before anything is allocated, so a corrupt or
//! hostile file is an error naming what is wrong, never a panic or an absurd allocation (the
//! `gguf` fuzz target and the corruption tests hold it to that).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bora_kernels::QType;
use memmap2::{Mmap, MmapOptions};

use crate::{Result, WeightsError};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// At most this many dimensions per tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;
/// At most this many elements in a metadata array (vocabularies hold a few hundred thousand).
const MAX_ARRAY_LEN: u64 = 1 << 24;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for listings: arrays as their length and first items.
    pub fn summary(&self) -> String {
        match self {
            MetaValue::String(s) if s.len() > 60 => {
                format!("{:?}…", &s[..s.floor_char_boundary(60)])
            }
            MetaValue::String(s) => format!("{s:?}"),
            MetaValue::Array(a) => format!("[{} items]", a.len()),
            MetaValue::Bool(b) => b.to_string(),
            MetaValue::F32(v) => v.to_string(),
            MetaValue::F64(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// The element type of a GGUF tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Quant(QType),
    /// A type GGUF defines that bora cannot compute with (its id and ggml's name).
    Unsupported(u32, &'static str),
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            30 => GgmlType::BF16,
            _ => match QType::from_ggml_id(id) {
                Some(q) => GgmlType::Quant(q),
                None => GgmlType::Unsupported(id, unsupported_name(id)?),
            },
        })
    }

    /// ggml's type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::BF16 => 30,
            GgmlType::Quant(q) => q.ggml_id(),
            GgmlType::Unsupported(id, _) => id,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Quant(q) => q.name(),
            GgmlType::Unsupported(_, name) => name,
        }
    }

    /// (elements, bytes) per block.
    fn block(self) -> Option<(u64, u64)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Quant(q) => Some((q.block_elems() as u64, q.block_bytes() as u64)),
            GgmlType::Unsupported(..) => None,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// ggml's names of the types bora does not compute with; `None` past the last id ggml defines.
fn unsupported_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        9 => "Q8_1",
        15 => "Q8_K",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        31 => "Q4_0_4_4 (removed from ggml)",
        32 => "Q4_0_4_8 (removed from ggml)",
        33 => "Q4_0_8_8 (removed from ggml)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36 => "IQ4_NL_4_4 (removed from ggml)",
        37 => "IQ4_NL_4_8 (removed from ggml)",
        38 => "IQ4_NL_8_8 (removed from ggml)",
        39 => "MXFP4",
        40 => "NVFP4",
        _ => return None,
    })
}

/// One tensor's description in a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml's order: `dims[0]` is the length of a row (the innermost dimension).
    pub dims: Vec<usize>,
    pub dtype: GgmlType,
    /// Byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl GgufTensorInfo {
    /// The shape in row-major order (outermost first), as safetensors and candle write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The parsed header of a GGUF file: everything but the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// Where the tensor data starts.
    pub data_start: usize,
}

/// Parses a whole GGUF file's bytes (header, metadata, tensor infos; checks that every
/// tensor's data lies in `bytes`). The error says what is wrong, for the caller to add the
/// file's name.
pub fn parse(bytes: &[u8]) -> std::result::Result<GgufHeader, String> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4, "the magic number")?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file: it starts with {magic:02x?}, not the magic \"GGUF\""
        ));
    }
    let version = r.u32("the version")?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err("big-endian GGUF files are not supported".into());
    }
    if version != 2 && version != 3 {
        return Err(format!(
            "GGUF version {version} is not supported (versions 2 and 3 are)"
        ));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    // Each key-value pair takes at least 12 bytes, each tensor info at least 24.
    r.check_count(n_kv, 12, "metadata entries")?;
    r.check_count(n_tensors, 24, "tensors")?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&format!("the key of metadata entry {i}"))?;
        let ty = r.u32(&format!("the type of metadata `{key}`"))?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(format!(
                    "general.alignment {} is not a power of two",
                    v.summary()
                ))
            }
        },
    };
    let mut raw = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string(&format!("the name of tensor {i}"))?;
        let n_dims = r.u32(&format!("the rank of tensor `{name}`"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} are allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            dims.push(r.u64(&format!("dimension {d} of tensor `{name}`"))?);
        }
        let id = r.u32(&format!("the type of tensor `{name}`"))?;
        let dtype = GgmlType::from_id(id)
            .ok_or_else(|| format!("tensor `{name}` has type id {id}, which is out of range"))?;
        let offset = r.u64(&format!("the offset of tensor `{name}`"))?;
        raw.push((name, dims, dtype, offset));
    }
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = HashMap::new();
    for (name, dims, dtype, offset) in raw {
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= 1 << 48)
            .ok_or_else(|| format!("tensor `{name}` has absurd dimensions {dims:?}"))?;
        if !offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor `{name}` starts at offset {offset}, not a multiple of the alignment {alignment}"
            ));
        }
        let size = match dtype.block() {
            Some((be, bb)) => {
                if dims[0] % be != 0 {
                    return Err(format!(
                        "tensor `{name}` of type {dtype} has rows of {} values, not a multiple of its block of {be}",
                        dims[0]
                    ));
                }
                elems / be * bb
            }
            // Unsupported types are described but never read: their size is unknown here.
            None => 0,
        };
        let end = offset.checked_add(size).filter(|&e| e <= data_len).ok_or_else(|| {
            format!(
                "tensor `{name}` ({size} bytes at offset {offset}) lies past the end of the file's {data_len} bytes of data (truncated?)"
            )
        })?;
        if seen.insert(name.clone(), ()).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims: dims.iter().map(|&d| d as usize).collect(),
            dtype,
            start: (data_start + offset) as usize,
            end: (data_start + end) as usize,
        });
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        data_start: data_start as usize,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(format!(
                "the file ends at byte {} while reading {what} ({n} bytes needed, {left} left): truncated?",
                self.bytes.len()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &str,
    ) -> std::result::Result<(), String> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count.saturating_mul(min_size) > left {
            return Err(format!(
                "the file claims {count} {what}, more than its remaining {left} bytes can hold (corrupt or truncated?)"
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if len > left {
            return Err(format!(
                "{what}: a string of {len} bytes, longer than the {left} bytes left in the file (corrupt or truncated?)"
            ));
        }
        let s = self.take(len as usize, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn value(
        &mut self,
        ty: u32,
        key: &str,
        depth: usize,
    ) -> std::result::Result<MetaValue, String> {
        let what = format!("the value of `{key}`");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(self.u32(&what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("{what} is a bool of value {b}, not 0 or 1")),
            },
            8 => MetaValue::String(self.string(&what)?),
            9 => {
                if depth > 0 {
                    return Err(format!(
                        "{what} nests arrays, which GGUF readers do not take"
                    ));
                }
                let ety = self.u32(&format!("the element type of `{key}`"))?;
                let len = self.u64(&format!("the length of `{key}`"))?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => {
                        return Err(format!(
                            "{what} is an array of arrays, which bora does not read"
                        ))
                    }
                    _ => {
                        return Err(format!(
                            "{what} has element type id {ety}, which is out of range"
                        ))
                    }
                };
                self.check_count(len, min, &format!("elements in `{key}`"))?;
                // An element is held in 32 bytes however few it takes in the file: a limit,
                // and capacity that grows with what is actually read, keep a corrupt length
                // from asking for many times the file's size.
                if len > MAX_ARRAY_LEN {
                    return Err(format!(
                        "{what} is an array of {len} elements, more than the {MAX_ARRAY_LEN} a GGUF reader takes"
                    ));
                }
                let mut items = Vec::with_capacity((len as usize).min(1 << 16));
                for _ in 0..len {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(&what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(format!(
                    "metadata `{key}` has type id {ty}, which is out of range"
                ))
            }
        })
    }
}

/// One memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub map: Arc<Mmap>,
    pub header: GgufHeader,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only; a file changed underneath it while bora runs is outside
        // what any mmap-based loader can guard against (llama.cpp maps its files the same way).
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let header = parse(&map).map_err(|reason| WeightsError::BadGguf {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            header,
        })
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.header.metadata.get(key)
    }
}

/// The files of one GGUF model (one, or the parts of a split model) and where each tensor is.
pub struct GgufStore {
    files: Vec<GgufFile>,
    tensors: HashMap<String, (usize, usize)>,
}

/// `(stem, part, parts)` of a split file name: `model-00001-of-00003.gguf`.
fn split_name(path: &Path) -> Option<(String, usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let (base, part) = head.rsplit_once('-')?;
    let ok = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !ok(part) || !ok(total) {
        return None;
    }
    Some((base.to_string(), part.parse().ok()?, total.parse().ok()?))
}

impl GgufStore {
    /// Opens `path`; when it is one part of a split model (`-0000K-of-0000N.gguf`), every part.
    pub fn open(path: &Path) -> Result<Self> {
        let paths = match split_name(path) {
            Some((base, _, total)) if total > 1 => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let parts: Vec<PathBuf> = (1..=total)
                    .map(|k| dir.join(format!("{base}-{k:05}-of-{total:05}.gguf")))
                    .collect();
                if let Some(missing) = parts.iter().find(|p| !p.is_file()) {
                    return Err(WeightsError::BadGguf {
                        path: path.to_path_buf(),
                        reason: format!(
                            "it is part of a model split in {total} files, and {} is missing",
                            missing.display()
                        ),
                    });
                }
                parts
            }
            _ => vec![path.to_path_buf()],
        };
        let files = paths
            .iter()
            .map(|p| GgufFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        let mut tensors = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            if files.len() > 1 {
                let count = f.meta("split.count").and_then(MetaValue::as_u64);
                if count != Some(files.len() as u64) {
                    return Err(WeightsError::BadGguf {
                        path: f.path.clone(),
                        reason: format!(
                            "split.count is {:?}, but the file name says {} parts",
                            count,
                            files.len()
                        ),
                    });
                }
            }
            for (ti, t) in f.header.tensors.iter().enumerate() {
                if tensors.insert(t.name.clone(), (fi, ti)).is_some() {
                    return Err(WeightsError::BadGguf {
                        path: f.path.clone(),
                        reason: format!("tensor `{}` is in more than one part", t.name),
                    });
                }
            }
        }
        Ok(Self { files, tensors })
    }

    /// The first file (which holds the model's metadata).
    pub fn main(&self) -> &GgufFile {
        &self.files[0]
    }

    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.main().meta(key)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor called `name`, with its file.
    pub fn get(&self, name: &str) -> Result<(&GgufFile, &GgufTensorInfo)> {
        let &(fi, ti) = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_string(),
                where_: self.main().path.display().to_string(),
            })?;
        let f = &self.files[fi];
        Ok((f, &f.header.tensors[ti]))
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = (&GgufFile, &GgufTensorInfo)> {
        self.files
            .iter()
            .flat_map(|f| f.header.tensors.iter().map(move |t| (f, t)))
    }

    /// Bytes of tensor data over all files.
    pub fn data_bytes(&self) -> u64 {
        self.tensors().map(|(_, t)| (t.end - t.start) as u64).sum()
    }

    /// Touches every page of tensor data, calling `progress(done, total)` as it goes (the
    /// reading phase of a load; afterwards the first forward pass takes no page faults).
    pub fn prefault(&self, mut progress: impl FnMut(u64, u64)) {
        let total: u64 = self.files.iter().map(|f| f.map.len() as u64).sum();
        let mut done = 0u64;
        let mut sink = 0u8;
        for f in &self.files {
            for chunk in f.map.chunks(64 << 20) {
                for page in chunk.chunks(4096) {
                    sink ^= page[0];
                }
                done += chunk.len() as u64;
                progress(done, total);
            }
        }
        std::hint::black_box(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!(
            split_name(Path::new("/m/mixtral-Q4_K_M-00002-of-00003.gguf")),
            Some(("mixtral-Q4_K_M".into(), 2, 3))
        );
        assert_eq!(split_name(Path::new("mixtral.gguf")), None);
        assert_eq!(split_name(Path::new("a-1-of-3.gguf")), None);
    }
}
