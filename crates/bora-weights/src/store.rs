//! Memory-mapped safetensors files, one or sharded, validated before any tensor is read.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};
use safetensors::{Dtype, SafeTensors};

use crate::{Result, WeightsError};

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the file's memory map.
    pub start: usize,
    pub end: usize,
}

/// How the files are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapMode {
    /// Pages are mapped as they are first read (reading headers only, as `inspect` does).
    Lazy,
    /// Every page is mapped when the file is opened (loading a model: the first forward pass
    /// then takes no page faults).
    Populate,
}

/// The tensors of one checkpoint, across its shards.
pub struct SafetensorsStore {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    tensors: HashMap<String, StoredTensor>,
}

impl SafetensorsStore {
    /// Opens `dir/model.safetensors.index.json` and its shards, or `dir/model.safetensors`.
    pub fn open_dir(dir: &Path, mode: MapMode) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            return Self::open_files(&shards_of(&index, dir)?, mode);
        }
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::open_files(&[single], mode);
        }
        Err(WeightsError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// Memory-maps and validates each file; a tensor name found twice is an error.
    pub fn open_files(paths: &[PathBuf], mode: MapMode) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let io = |source| WeightsError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io)?;
            // SAFETY: the map is read-only; bora never writes model files while it runs, and
            // a file truncated under it is the one hazard mmap cannot guard against.
            let map = unsafe {
                match mode {
                    MapMode::Lazy => MmapOptions::new().map(&file),
                    MapMode::Populate => MmapOptions::new().populate().map(&file),
                }
            }
            .map_err(io)?;
            let bad = |reason: String| WeightsError::BadFile {
                path: path.clone(),
                reason,
            };
            let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - base;
                let t = StoredTensor {
                    file: fi,
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                };
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(bad(format!(
                        "tensor `{name}` appears in more than one file"
                    )));
                }
            }
            files.push((path.clone(), Arc::new(map)));
        }
        Ok(Self { files, tensors })
    }

    /// The stored tensor called `name`, or an error naming it and the files searched.
    pub fn get(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_string(),
                where_: self.describe(),
            })
    }

    /// The weight dtype tensor `name` is stored in.
    pub fn weight_dtype(&self, name: &str) -> Result<crate::WeightDType> {
        crate::WeightDType::of_stored(self.get(name)?, name, self)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn path(&self, t: &StoredTensor) -> &Path {
        &self.files[t.file].0
    }

    pub fn map(&self, t: &StoredTensor) -> &Arc<Mmap> {
        &self.files[t.file].1
    }

    pub fn bytes(&self, t: &StoredTensor) -> &[u8] {
        &self.files[t.file].1[t.start..t.end]
    }

    /// Drops the resident pages of `t`'s bytes (those wholly inside it): after a tensor was
    /// quantized into memory of its own, its file pages need not stay, and quantizing a model
    /// tensor by tensor then peaks near the quantized size, not the file's. A page read again
    /// later is read from the file again.
    pub fn release(&self, t: &StoredTensor) {
        release_pages(&self.files[t.file].1, t.start, t.end);
    }

    /// Bytes of all files.
    pub fn size_on_disk(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.len() as u64).sum()
    }

    /// Reads every page of every file into memory (what [`MapMode::Populate`] does at open),
    /// 64 MB at a time, calling `progress` with the bytes read so far: for a progress bar.
    pub fn prefault(&self, mut progress: impl FnMut(u64)) {
        const CHUNK: usize = 64 << 20;
        let mut done = 0u64;
        for (_, map) in &self.files {
            for start in (0..map.len()).step_by(CHUNK) {
                let len = CHUNK.min(map.len() - start);
                // Read-ahead hint; the loop below faults the pages in either way.
                let _ = map.advise_range(memmap2::Advice::WillNeed, start, len);
                let mut sum = 0u8;
                for page in (start..start + len).step_by(4096) {
                    sum = sum.wrapping_add(map[page]);
                }
                std::hint::black_box(sum);
                done += len as u64;
                progress(done);
            }
        }
    }

    pub fn file_paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    fn describe(&self) -> String {
        match self.files.as_slice() {
            [(p, _)] => p.display().to_string(),
            fs => format!(
                "{} shards ({}, ...)",
                fs.len(),
                fs.first()
                    .map(|(p, _)| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }
}

fn shards_of(index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let bad = |reason: String| WeightsError::BadIndex {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|source| WeightsError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{name}` is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!("shard name `{file}` is not a plain file name")));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    if shards.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    shards.sort();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// Drops the resident pages of a read-only file map wholly inside bytes `start..end` (see
/// [`SafetensorsStore::release`]): a tensor converted into memory of its own (quantized, or
/// repacked for the kernels) need not keep its file pages too.
pub(crate) fn release_pages(map: &memmap2::Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let base = map.as_ptr() as usize;
    let first = (base + start).next_multiple_of(PAGE) - base;
    let last = ((base + end) / PAGE * PAGE).saturating_sub(base);
    if last > first && last <= map.len() {
        // SAFETY: the map is a read-only mapping of a file; MADV_DONTNEED on it discards the
        // cached pages of this process's view only, and any later access reads the file's
        // unchanged contents back. Callers keep their own copy of these bytes and read the
        // map there again only through a new fault.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
        };
    }
}
