//! `bora tokenize`: token ids of a text or of a rendered chat request, as JSON.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use bora_engine::chat::{render, ChatFormat};
use bora_engine::Tokenizer;
use serde_json::json;

use crate::load::shown;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model (directory, GGUF file or Hugging Face repo id in the local cache), or a tokenizer
    /// file (tokenizer.json, tokenizer.model[.v1|.v3]). Default: the demo model's tokenizer.
    #[arg(long)]
    model: Option<String>,
    /// Plain text to encode (no BOS; control-token spellings stay text).
    #[arg(
        long,
        conflicts_with = "chat_json",
        required_unless_present = "chat_json"
    )]
    text: Option<String>,
    /// A file holding a /v1/chat/completions request body, rendered in the chat format.
    #[arg(long)]
    chat_json: Option<PathBuf>,
    /// v1 or v3 (default: from the tokenizer).
    #[arg(long)]
    chat_format: Option<String>,
    /// Also print each token's piece.
    #[arg(long)]
    pieces: bool,
}

pub fn main(a: Args) -> Result<()> {
    let path = match &a.model {
        // A tokenizer file (or a GGUF file, whose vocabulary is read) is taken as it is.
        Some(m) if PathBuf::from(m).is_file() => PathBuf::from(m),
        _ => {
            let source = crate::load::ModelArgs::source_only(a.model.clone());
            Tokenizer::find_in_dir(&source.dir()?)?
        }
    };
    let tok = Tokenizer::from_file(&path)?;
    let ids = match (&a.text, &a.chat_json) {
        (Some(text), _) => tok.encode(text)?,
        (None, Some(file)) => {
            let body = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", shown(file)))?;
            let req = bora_server::parse_chat_request(&body)
                .map_err(|e| anyhow!("{}: {e}", shown(file)))?;
            let format = match &a.chat_format {
                Some(f) => f
                    .parse::<ChatFormat>()
                    .map_err(|e| anyhow!("--chat-format: {e}"))?,
                None => ChatFormat::detect(&tok),
            };
            render(format, &tok, &req)
                .map_err(|e| anyhow!("{}: {}: {e}", shown(file), e.class()))?
        }
        (None, None) => unreachable!("clap requires --text or --chat-json"),
    };
    if a.pieces {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| tok.piece(i).unwrap_or_default())
            .collect();
        println!("{}", json!({"ids": ids, "pieces": pieces}));
    } else {
        println!("{}", json!(ids));
    }
    Ok(())
}
