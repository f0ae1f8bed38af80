//! What the model generated, as text or tool calls. A v3 model starts a call with its
//! `[TOOL_CALLS]` token, a v1 model (bora's format) with the text `[TOOL_CALLS]`; a JSON list of
//! `{"name", "arguments"}` follows. Each call gets a fresh 9-character id.

use rand::RngExt;
use serde_json::Value;

use super::pyjson;
use super::types::{ChatFormat, ToolCall};
use crate::tokenizer::Tokenizer;
use crate::Result;

#[derive(Debug, Clone, PartialEq)]
/// A model's answer: text or tool calls.
pub enum ParsedOutput {
    /// Plain text.
    Text(String),
    /// Tool calls, each with a fresh id.
    ToolCalls(Vec<ToolCall>),
}

/// Parses generated ids (without the final EOS). Output that announces tool calls but does not
/// hold a valid list of them is returned as text.
pub fn parse_output(format: ChatFormat, tok: &Tokenizer, ids: &[u32]) -> Result<ParsedOutput> {
    let marker = tok.specials().tool_calls;
    let calls_json = match (format, ids.first()) {
        (ChatFormat::V3, Some(&first)) if Some(first) == marker => Some(tok.decode(&ids[1..])?),
        _ => None,
    };
    let text = tok.decode(ids)?;
    let calls_json = calls_json.or_else(|| match format {
        ChatFormat::V1 => text
            .trim_start()
            .strip_prefix("[TOOL_CALLS]")
            .map(str::to_string),
        ChatFormat::V3 => None,
    });
    Ok(match calls_json.as_deref().and_then(parse_calls) {
        Some(calls) => ParsedOutput::ToolCalls(calls),
        None => ParsedOutput::Text(text),
    })
}

fn parse_calls(s: &str) -> Option<Vec<ToolCall>> {
    let Value::Array(items) = serde_json::from_str(s.trim()).ok()? else {
        return None;
    };
    items
        .into_iter()
        .map(|item| {
            let name = item.get("name")?.as_str()?.to_string();
            let arguments = match item.get("arguments") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => pyjson::dumps(v),
            };
            Some(ToolCall {
                id: Some(new_tool_call_id()),
                name,
                arguments,
            })
        })
        .collect::<Option<Vec<_>>>()
        .filter(|calls| !calls.is_empty())
}

/// A fresh tool-call id: 9 characters of `[a-zA-Z0-9]`, as Mistral's API makes them.
pub fn new_tool_call_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..9)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
