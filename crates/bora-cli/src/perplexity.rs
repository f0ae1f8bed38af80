//! `bora perplexity`: score a text file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bora_engine::perplexity;

use crate::load::{shown, ModelArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file to score (UTF-8).
    #[arg(long)]
    file: PathBuf,
    /// Window length in tokens (default: the model's context).
    #[arg(long)]
    ctx: Option<usize>,
    /// Print {"tokens": N, "nll": X, "ppl": Y}.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<()> {
    if a.ctx.is_some_and(|c| c < 2) {
        anyhow::bail!("--ctx must be at least 2 tokens");
    }
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {} as UTF-8 text", shown(&a.file)))?;
    let loaded = a.model.load()?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let cfg = model.config();
    let mut ids: Vec<u32> = cfg.bos_token_id.into_iter().collect();
    ids.extend(tok.encode(&text)?);
    if ids.len() < 2 {
        anyhow::bail!("{} has no tokens to score", shown(&a.file));
    }
    let p = perplexity(model, &ids, a.ctx.unwrap_or(cfg.context()))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"tokens": p.tokens, "nll": p.nll, "ppl": p.ppl()})
        );
    } else {
        println!("tokens {}  nll {:.4}  ppl {:.4}", p.tokens, p.nll, p.ppl());
    }
    Ok(())
}
