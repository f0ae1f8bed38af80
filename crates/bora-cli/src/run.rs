//! `bora run`: a completion streamed to stdout: of the prompt as one user turn in the model's
//! chat format, or of the raw prompt (`--raw`: BOS + prompt).

use std::io::Write;

use anyhow::{anyhow, Result};
use bora_engine::chat::{render, ChatFormat, ChatRequest, Content, Message};
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
    /// A system prompt (chat mode).
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// v1 or v3 (chat mode; default: from the tokenizer).
    #[arg(long, conflicts_with = "raw")]
    chat_format: Option<String>,
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
    let loaded = a.model.load()?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let cfg = model.config();
    let ids = if a.raw {
        let mut ids: Vec<u32> = cfg.bos_token_id.into_iter().collect();
        ids.extend(tok.encode(&a.prompt)?);
        ids
    } else {
        let format = match &a.chat_format {
            Some(f) => f
                .parse::<ChatFormat>()
                .map_err(|e| anyhow!("--chat-format: {e}"))?,
            None => ChatFormat::detect(tok),
        };
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::System {
                content: Some(Content::Text(s.clone())),
            });
        }
        messages.push(Message::User {
            content: Some(Content::Text(a.prompt.clone())),
        });
        let req = ChatRequest {
            messages,
            tools: Vec::new(),
        };
        render(format, tok, &req).map_err(|e| anyhow!("{}: {e}", e.class()))?
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: 0,
            seed: a.seed,
        },
        stop_tokens: cfg.eos_token_ids.clone(),
        context: cfg.context(),
    };
    let mut out = std::io::stdout().lock();
    // A raw completion continues the prompt's text; a chat answer is text of its own, whose
    // leading space sentencepiece drops (as mistral-common's decode does).
    let mut dec = if a.raw {
        IncrementalDecoder::after(&ids)
    } else {
        IncrementalDecoder::new()
    };
    if a.raw {
        write!(out, "{}", a.prompt)?;
        out.flush()?;
    }
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
