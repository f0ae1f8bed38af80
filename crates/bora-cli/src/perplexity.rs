//! `bora perplexity`: score a text file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bora_engine::chat::{render, ChatFormat, ChatRequest, Content, Message};
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
    /// Score the text as the prompt of a chat request of one user message, rendered as the
    /// chat API renders it (what its `prompt_logprobs` score), instead of as plain text.
    #[arg(long)]
    chat: bool,
    /// Print {"tokens": N, "nll": X, "ppl": Y}.
    #[arg(long)]
    json: bool,
    /// With --json: also each token's id and negative log-likelihood ("token_ids": the text's
    /// tokens, BOS first; "token_nll": one per token after the first).
    #[arg(long, requires = "json")]
    per_token: bool,
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
    let ids: Vec<u32> = if a.chat {
        let req = ChatRequest {
            messages: vec![Message::User {
                content: Some(Content::Text(text)),
            }],
            tools: Vec::new(),
        };
        render(ChatFormat::detect(tok), tok, &req)
            .map_err(|e| anyhow::anyhow!("{}: {}: {e}", shown(&a.file), e.class()))?
    } else {
        cfg.bos_token_id
            .into_iter()
            .chain(tok.encode_long(&text)?)
            .collect()
    };
    if ids.len() < 2 {
        anyhow::bail!("{} has no tokens to score", shown(&a.file));
    }
    let p = perplexity(model, &ids, a.ctx.unwrap_or(cfg.context()))?;
    if a.json {
        let mut out = serde_json::json!({"tokens": p.tokens, "nll": p.nll, "ppl": p.ppl()});
        if a.per_token {
            out["token_ids"] = serde_json::json!(ids);
            out["token_nll"] = serde_json::json!(p.token_nll);
        }
        println!("{out}");
    } else {
        println!("tokens {}  nll {:.4}  ppl {:.4}", p.tokens, p.nll, p.ppl());
    }
    Ok(())
}
