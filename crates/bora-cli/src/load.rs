//! Options shared by the commands that load a model, and the loading itself.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bora_core::{DTypeSpec, DeviceSpec};
use bora_engine::Tokenizer;
use bora_model::Model;
use bora_weights::{
    ExpertLayout, LoadOptions, MapMode, MixtralWeights, SafetensorsStore, TensorName, WeightDType,
};

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model directory: config.json, model.safetensors or model.safetensors.index.json and its
    /// shards, and a tokenizer (tokenizer.json or tokenizer.model[.v1|.v3]).
    #[arg(long)]
    pub model: PathBuf,
    /// Tokenizer to use instead of the model directory's: tokenizer.json or a sentencepiece
    /// model (tokenizer.model, tokenizer.model.v1, tokenizer.model.v3).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtype to keep weights in: f32, bf16 or f16 (default: the checkpoint's).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Loaded> {
        if let Some(n) = self.threads {
            rayon_threads(n)?;
        }
        let device = self.device.parse::<DeviceSpec>()?.open()?;
        let dir = &self.model;
        if !dir.is_dir() {
            bail!(
                "--model {}: not a directory (expected config.json and safetensors weights)",
                dir.display()
            );
        }
        let config = bora_core::ModelConfig::from_file(&dir.join("config.json"))?;
        let store = SafetensorsStore::open_dir(dir, MapMode::Populate)?;
        let dtype = match &self.dtype {
            Some(s) => match s.parse::<DTypeSpec>()? {
                DTypeSpec::F32 => WeightDType::F32,
                DTypeSpec::BF16 => WeightDType::BF16,
                DTypeSpec::F16 => WeightDType::F16,
            },
            None => store.weight_dtype(&TensorName::Embed.hf(ExpertLayout::PerExpert))?,
        };
        let weights = MixtralWeights::load(&store, config, &LoadOptions::new(dtype, device))?;
        let model = Model::new(weights)?;
        let tok_path = match &self.tokenizer {
            Some(p) => p.clone(),
            None => Tokenizer::find_in_dir(dir)
                .context("the model needs a tokenizer: pass --tokenizer FILE")?,
        };
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        Ok(Loaded { model, tokenizer })
    }
}

fn rayon_threads(n: usize) -> Result<()> {
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    // Read by rayon's global pool (bora's kernels) and by candle when they first start.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

/// `path` for messages.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}
