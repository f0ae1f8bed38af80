//! `bora quantize`: a model (safetensors directory or GGUF file) written as a GGUF file of one
//! quantized type, tensor by tensor, in the layout llama.cpp's tools read.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use bora_engine::SpmVocab;
use bora_weights::{
    gguf_config, write_gguf, ExpertLayout, GgufStore, LoadOptions, MapMode, MetaValue,
    MixtralWeights, SafetensorsStore, TensorName,
};

use crate::load::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The source model: a directory (config.json, safetensors, a sentencepiece
    /// tokenizer.model), a GGUF file, or a repo id in the local Hugging Face cache.
    #[arg(long)]
    model: Option<String>,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
    /// The type of the linear layers: q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k,
    /// q6_k (routers and norms stay f32).
    #[arg(long = "type", value_name = "TYPE")]
    qtype: String,
}

pub fn main(a: Args) -> Result<()> {
    let q = crate::load::parse_qtype("--type", &a.qtype)?;
    let started = Instant::now();
    let src = ModelArgs::source_only(a.model.clone()).dir()?;
    let cpu = || "cpu".parse::<bora_core::DeviceSpec>()?.open();
    // Read row by row into the written file: no use repacking for the kernels.
    let opts = LoadOptions {
        pack: false,
        ..LoadOptions::new(bora_weights::WeightDType::F32, cpu()?)
    };
    let (weights, vocab, name) = if src.is_file() {
        let store = GgufStore::open(&src)?;
        let cfg = gguf_config(&store)?;
        let vocab = SpmVocab::from_gguf(&store)?;
        let w = MixtralWeights::load_gguf(&store, cfg, &opts)?;
        (
            w,
            vocab,
            src.file_stem().map(|s| s.to_string_lossy().into_owned()),
        )
    } else {
        let cfg = bora_core::ModelConfig::from_file(&src.join("config.json"))?;
        let store = SafetensorsStore::open_dir(&src, MapMode::Lazy)?;
        // Kept in the file's dtype: the matrices are views of the memory map, read row by row.
        let dtype = store.weight_dtype(&TensorName::Embed.hf(ExpertLayout::PerExpert))?;
        let opts = LoadOptions::new(dtype, cpu()?);
        let Some(spm) = [
            "tokenizer.model.v3",
            "tokenizer.model.v1",
            "tokenizer.model",
        ]
        .iter()
        .map(|n| src.join(n))
        .find(|p| p.is_file()) else {
            bail!(
                "{} has no sentencepiece tokenizer.model: GGUF files carry the sentencepiece vocabulary",
                src.display()
            );
        };
        let vocab = SpmVocab::from_model_file(&spm)?;
        let w = MixtralWeights::load(&store, cfg, &opts)?;
        (
            w,
            vocab,
            src.file_name().map(|s| s.to_string_lossy().into_owned()),
        )
    };
    let mut meta = vocab.gguf_metadata();
    if let Some(n) = name {
        meta.push(("general.name".into(), MetaValue::String(n)));
    }
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| indicatif::ProgressBar::new(0).with_message("quantizing"));
    let bytes = write_gguf(&weights, q, meta, &a.out, |done, total| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "bora: wrote {} ({q}, {:.1} MB of tensors) in {:.1} s",
        a.out.display(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
