//! `bora run`: a raw completion, streamed to stdout.

use std::io::Write;

use anyhow::{bail, Result};
use bora_engine::{generate, GenerateOptions, IncrementalDecoder, SamplingParams};

use crate::load::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Use the prompt as it is (BOS + prompt), without a chat format.
    #[arg(long)]
    raw: bool,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn main(a: Args) -> Result<()> {
    if !a.raw {
        bail!("bora run takes --raw for now (BOS + prompt, no chat format); chat formatting is not built yet");
    }
    let loaded = a.model.load()?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let cfg = model.config();
    let mut ids: Vec<u32> = cfg.bos_token_id.into_iter().collect();
    ids.extend(tok.encode(&a.prompt)?);
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: 0,
            seed: a.seed,
        },
        stop_tokens: cfg.eos_token_ids.clone(),
        context: cfg.max_position_embeddings,
    };
    let mut out = std::io::stdout().lock();
    let mut dec = IncrementalDecoder::after(&ids);
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let g = generate(model, &ids, &opts, |t| {
        if let Some(piece) = dec.push(tok, t)? {
            // A closed stdout (a pipe into `head`) ends the output, not the program with a panic.
            let _ = write!(out, "{piece}").and_then(|_| out.flush());
        }
        Ok(())
    })?;
    if let Some(piece) = dec.flush(tok)? {
        let _ = write!(out, "{piece}");
    }
    let _ = writeln!(out);
    let n = g.tokens.len();
    eprintln!(
        "[{} prompt tokens, {n} generated, finish: {:?}; prefill {:.1} tok/s, decode {:.1} tok/s]",
        g.prompt_tokens,
        g.finish,
        g.prompt_tokens as f64 / g.prefill_time.as_secs_f64(),
        n.saturating_sub(1) as f64 / g.decode_time.as_secs_f64().max(1e-9),
    );
    Ok(())
}
