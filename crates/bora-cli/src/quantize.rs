//! `bora quantize`: a model (safetensors directory or GGUF file) written as a GGUF file of one
//! quantized type, tensor by tensor, in the layout llama.cpp's tools read.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_engine::{ModelOptions, SpmVocab};
use bora_weights::{write_gguf, MetaValue};

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
    anyhow::ensure!(
        q.quantizable(),
        "--type {}: bora reads {q} files but does not write them; make one from a file this \
         command writes with llama-quantize (the i-quants need an importance matrix)",
        a.qtype
    );
    let started = Instant::now();
    let source = ModelArgs::source_only(a.model.clone()).resolve()?;
    let src = source
        .path()
        .map(std::path::Path::to_path_buf)
        .context("the model has no files")?;
    // Read row by row into the written file: no use repacking for the kernels. A GGUF file's
    // float tensors in f32; a checkpoint's kept in its dtype (views of the memory map).
    let opts = ModelOptions {
        repack: false,
        dtype: src.is_file().then_some(bora_core::DTypeSpec::F32),
        ..ModelOptions::default()
    };
    let (vocab, name) = if src.is_file() {
        (
            SpmVocab::from_gguf_file(&src)?,
            src.file_stem().map(|s| s.to_string_lossy().into_owned()),
        )
    } else {
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
        (
            SpmVocab::from_model_file(&spm)?,
            src.file_name().map(|s| s.to_string_lossy().into_owned()),
        )
    };
    let weights = bora_engine::load::load_weights(&source, &opts, false, &mut |_| {})?;
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
