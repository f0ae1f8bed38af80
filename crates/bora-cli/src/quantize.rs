//! `bora quantize`: a model (safetensors directory, GGUF file, or a `random:` shape) written as
//! a GGUF file of one quantized type, tensor by tensor, in the layout llama.cpp's tools read.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_engine::load::{ModelSource, QType};
use bora_engine::{ModelOptions, SpmVocab};
use bora_weights::{write_gguf, MetaValue};

use crate::load::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The source model: a directory (config.json, safetensors, a sentencepiece
    /// tokenizer.model), a GGUF file, a repo id in the local Hugging Face cache, or a
    /// `random:` shape (written as made, one layer at a time: any type bora reads).
    #[arg(long)]
    model: Option<String>,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
    /// The type of the linear layers: q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k,
    /// q6_k (routers and norms stay f32); for a `random:` shape also the i-quants (iq1_s,
    /// iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq4_nl, iq4_xs).
    #[arg(long = "type", value_name = "TYPE")]
    qtype: String,
}

pub fn main(a: Args) -> Result<()> {
    let q = crate::load::parse_qtype("--type", &a.qtype)?;
    let started = Instant::now();
    let source = ModelArgs::source_only(a.model.clone()).resolve()?;
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| indicatif::ProgressBar::new(0).with_message("quantizing"));
    let progress = |done: usize, total: usize| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    };
    if let ModelSource::Random(name) = &source {
        // Made one layer at a time in `q` itself, and written as made.
        let bytes = bora_engine::load::write_random_gguf(name, q, &a.out, progress)?;
        return done(bar, &a.out, q, bytes, started);
    }
    anyhow::ensure!(
        q.quantizable(),
        "--type {}: bora reads {q} files but does not write them; make one from a file this \
         command writes with llama-quantize (the i-quants need an importance matrix)",
        a.qtype
    );
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
    let bytes = write_gguf(&weights, q, meta, &a.out, progress)?;
    done(bar, &a.out, q, bytes, started)
}

/// Closes the progress bar and says what was written.
fn done(
    bar: Option<indicatif::ProgressBar>,
    out: &std::path::Path,
    q: QType,
    bytes: u64,
    started: Instant,
) -> Result<()> {
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "bora: wrote {} ({q}, {:.1} MB of tensors) in {:.1} s",
        out.display(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
