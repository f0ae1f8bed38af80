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
    let calls: Vec<(String, String)> = match serde_json::from_str(s.trim()) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|item| {
                let name = item.get("name")?.as_str()?.to_string();
                let arguments = match item.get("arguments") {
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => pyjson::dumps(v),
                };
                Some((name, arguments))
            })
            .collect::<Option<Vec<_>>>()?,
        Ok(_) => return None,
        // Valid JSON that serde_json will not hold as a `Value`: a number beyond a double's
        // range (`18e387223339`, which the grammar of an unbounded `number` admits). The
        // arguments are kept as the model wrote them, as a JSON parser reading them as a
        // double (Python's, JavaScript's) takes them: the call is still a call.
        Err(_) => raw_calls(s.trim())?,
    };
    let calls: Vec<ToolCall> = calls
        .into_iter()
        .map(|(name, arguments)| ToolCall {
            id: Some(new_tool_call_id()),
            name,
            arguments,
        })
        .collect();
    (!calls.is_empty()).then_some(calls)
}

/// The calls with their arguments as raw JSON text, numbers unread.
fn raw_calls(s: &str) -> Option<Vec<(String, String)>> {
    #[derive(serde::Deserialize)]
    struct RawCall<'a> {
        name: String,
        #[serde(borrow)]
        arguments: Option<&'a serde_json::value::RawValue>,
    }
    let items: Vec<RawCall> = serde_json::from_str(s).ok()?;
    items
        .into_iter()
        .map(|c| {
            let arguments = match c.arguments.map(|a| a.get()) {
                None | Some("null") => "{}".to_string(),
                Some(a) if a.starts_with('"') => serde_json::from_str(a).ok()?,
                Some(a) => a.to_string(),
            };
            Some((c.name, arguments))
        })
        .collect()
}

/// A fresh tool-call id: 9 characters of `[a-zA-Z0-9]`, as Mistral's API makes them.
pub fn new_tool_call_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..9)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, item 5: a number past a double's range is valid JSON and the grammar of an
    /// unbounded `number` admits it; the answer is still a tool call, its arguments as written.
    #[test]
    fn numbers_beyond_a_double_keep_the_call_a_call() {
        let calls = parse_calls(
            r#"[{"name": "f", "arguments": {"x": 18e387223339, "y": [-1E+400, 2]}}, {"name": "g", "arguments": "{\"a\": 1}"}]"#,
        )
        .expect("two calls");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "f");
        assert_eq!(
            calls[0].arguments,
            r#"{"x": 18e387223339, "y": [-1E+400, 2]}"#
        );
        assert_eq!(calls[1].arguments, r#"{"a": 1}"#);
        // What fits in a double is written as Python's json.dumps writes it.
        let calls = parse_calls(r#"[{"name":"f","arguments":{"x":1.5e3}}]"#).unwrap();
        assert_eq!(calls[0].arguments, r#"{"x": 1500.0}"#);
        // Not a list of calls: text.
        assert!(parse_calls(r#"[{"arguments": {"x": 1e999}}]"#).is_none());
        assert!(parse_calls(r#"{"name": "f"}"#).is_none());
        assert!(parse_calls("[]").is_none());
    }
}
