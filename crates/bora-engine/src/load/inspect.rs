//! What a model's files hold, read from their headers only (`bora inspect`): a safetensors
//! directory's config and headers, or a GGUF file's metadata and tensor descriptions.

use std::collections::BTreeMap;

use bora_core::ModelConfig;
use bora_weights::{gguf_config, GgufStore, MapMode, SafetensorsStore};

use super::{LoadError, ModelSource};

/// One tensor as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name in the file.
    pub name: String,
    /// Its dtype or ggml type, lowercase for safetensors (`bf16`), as ggml names it for GGUF
    /// (`Q4_K`).
    pub dtype: String,
    /// Its shape, as stored.
    pub shape: Vec<usize>,
}

/// What a model's files hold.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The model's configuration.
    pub config: ModelConfig,
    /// `safetensors` or `gguf`.
    pub format: &'static str,
    /// How the experts are stored: `per-expert`, `fused` (safetensors) or `merged` (GGUF).
    pub layout: &'static str,
    /// Tensors per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// Every tensor, in layer order (`layers.10` after `layers.9`).
    pub tensors: Vec<TensorInfo>,
    /// Bytes of the files.
    pub size: u64,
    /// Files (shards or split parts).
    pub files: usize,
}

/// Reads the headers of `source`'s files (resolved without downloading; a random model has
/// none).
pub fn inspect(source: &ModelSource) -> Result<ModelInfo, LoadError> {
    match source.resolve(false, &mut |_| {})? {
        ModelSource::Gguf(path) => {
            let store = GgufStore::open(&path)?;
            let tensors = store
                .tensors()
                .map(|(_, t)| TensorInfo {
                    name: t.name.clone(),
                    dtype: t.dtype.name().to_string(),
                    shape: t.shape(),
                })
                .collect();
            Ok(info(
                gguf_config(&store)?,
                "gguf",
                if store.contains("blk.0.ffn_gate_exps.weight") {
                    "merged"
                } else {
                    "per-expert"
                },
                tensors,
                store.files().iter().map(|f| f.map.len() as u64).sum(),
                store.files().len(),
            ))
        }
        ModelSource::Dir(dir) => {
            let config = ModelConfig::from_file(&dir.join("config.json"))?;
            let store = SafetensorsStore::open_dir(&dir, MapMode::Lazy)?;
            let mut tensors = Vec::new();
            for name in store.names() {
                let t = store.get(name)?;
                tensors.push(TensorInfo {
                    name: name.to_string(),
                    dtype: format!("{:?}", t.dtype).to_lowercase(),
                    shape: t.shape.clone(),
                });
            }
            let fused = store
                .names()
                .any(|n| n.contains("mlp.experts.gate_up_proj"));
            Ok(info(
                config,
                "safetensors",
                if fused { "fused" } else { "per-expert" },
                tensors,
                store.size_on_disk(),
                store.file_paths().count(),
            ))
        }
        other => Err(LoadError::Option {
            name: "model",
            reason: format!("{other} has no files to inspect"),
        }),
    }
}

fn info(
    config: ModelConfig,
    format: &'static str,
    layout: &'static str,
    mut tensors: Vec<TensorInfo>,
    size: u64,
    files: usize,
) -> ModelInfo {
    tensors.sort_by_key(|t| sort_key(&t.name));
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tensors {
        *dtypes.entry(t.dtype.clone()).or_default() += 1;
    }
    ModelInfo {
        config,
        format,
        layout,
        dtypes,
        tensors,
        size,
        files,
    }
}

/// Orders `model.layers.10` after `model.layers.9`.
fn sort_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|p| (p.parse().unwrap_or(u64::MAX), p.to_string()))
        .collect()
}
