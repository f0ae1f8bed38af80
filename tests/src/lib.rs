//! Helpers for bora's integration tests: fixture paths, reference outputs, comparisons.

pub mod fuzz;
pub mod steps;
pub mod zmtp;

use std::collections::HashMap;
use std::path::PathBuf;

use bora_model::{Batch, KvCache, Logits, Model};
use bora_weights::{Backend, LoadOptions, MixtralWeights, WeightDType};
use candle_core::{Device, Tensor};

/// `models/fixtures/NAME` in the repository.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/fixtures")
        .join(name)
}

/// transformers' outputs for a fixture (see models/gen_fixtures.py).
pub struct Reference {
    tensors: HashMap<String, Tensor>,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        Self::load_prefixed(&fixture(name).join("reference.safetensors"), "")
    }

    /// The outputs stored under `PREFIX.` in `path` (one file of references for several models).
    pub fn load_prefixed(path: &std::path::Path, prefix: &str) -> Self {
        let all = candle_core::safetensors::load(path, &Device::Cpu).expect("reference outputs");
        let tensors = all
            .into_iter()
            .filter_map(|(k, v)| match prefix {
                "" => Some((k, v)),
                p => k.strip_prefix(&format!("{p}.")).map(|k| (k.to_string(), v)),
            })
            .collect();
        Self { tensors }
    }

    pub fn prompts(&self) -> usize {
        (0..)
            .take_while(|k| self.tensors.contains_key(&format!("p{k}.ids")))
            .count()
    }

    pub fn ids(&self, k: usize) -> Vec<u32> {
        self.ints(&format!("p{k}.ids"))
    }

    pub fn greedy(&self, k: usize) -> Vec<u32> {
        self.ints(&format!("p{k}.greedy"))
    }

    /// `[rows, V]`.
    pub fn logits(&self, k: usize) -> Vec<Vec<f32>> {
        self.rows(&format!("p{k}.logits"))
    }

    pub fn decode_logits(&self, k: usize) -> Vec<Vec<f32>> {
        self.rows(&format!("p{k}.decode_logits"))
    }

    fn ints(&self, key: &str) -> Vec<u32> {
        self.tensors[key]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    fn rows(&self, key: &str) -> Vec<Vec<f32>> {
        self.tensors[key].to_vec2::<f32>().unwrap()
    }
}

/// Loads a fixture model.
pub fn load(name: &str, dtype: WeightDType, backend: Backend) -> Model {
    let opts = LoadOptions {
        dtype,
        device: Device::Cpu,
        backend,
        quantize: None,
        pack: true,
        kv_dtype: None,
        host_experts: Vec::new(),
    };
    let w = MixtralWeights::load_dir(&fixture(name), &opts).expect("fixture loads");
    Model::new(w).expect("model")
}

/// Loads a GGUF fixture (`models/fixtures/gguf/FILE`) on bora's CPU kernels.
pub fn load_gguf(file: &str) -> Model {
    load_gguf_packed(file, true)
}

/// [`load_gguf`], its quantized weights repacked for the packed kernels or not (`pack`).
pub fn load_gguf_packed(file: &str, pack: bool) -> Model {
    let store = bora_weights::GgufStore::open(&fixture("gguf").join(file)).expect("GGUF opens");
    let cfg = bora_weights::gguf_config(&store).expect("GGUF config");
    let opts = LoadOptions {
        dtype: WeightDType::F32,
        device: Device::Cpu,
        backend: Backend::Host,
        quantize: None,
        pack,
        kv_dtype: None,
        host_experts: Vec::new(),
    };
    Model::new(MixtralWeights::load_gguf(&store, cfg, &opts).expect("GGUF loads")).expect("model")
}

/// Largest absolute difference between two equally shaped row sets.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row lengths differ");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Logits of every position of `ids` in one prefill.
pub fn prefill_all(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(1, ids.len()).unwrap();
    let b = Batch::single(ids.to_vec(), 0, cache.slot(0), Logits::All);
    model.forward(&b, &mut cache).unwrap().to_vec2().unwrap()
}

/// Prefill then `steps` greedy decode steps with the cache: (greedy tokens, decode logits).
pub fn greedy_decode(model: &Model, ids: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache: KvCache = model.new_cache(1, ids.len() + steps).unwrap();
    let last = model
        .forward(
            &Batch::single(ids.to_vec(), 0, cache.slot(0), Logits::Last),
            &mut cache,
        )
        .unwrap();
    let mut tok = argmax(&last.to_vec2::<f32>().unwrap()[0]);
    let (mut greedy, mut logits) = (vec![tok], Vec::new());
    for i in 0..steps {
        let b = Batch::single(vec![tok], ids.len() + i, cache.slot(0), Logits::Last);
        let row = model
            .forward(&b, &mut cache)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0);
        tok = argmax(&row);
        greedy.push(tok);
        logits.push(row);
    }
    (greedy, logits)
}
