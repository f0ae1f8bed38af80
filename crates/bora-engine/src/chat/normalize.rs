//! mistral-common's `InstructRequestNormalizer` (`protocol/instruct/normalize.py`): system
//! prompts gathered, runs of one role merged, text chunks joined, tool-call arguments and tool
//! results re-serialized as Python's `json.dumps` would.

use super::pyjson;
use super::types::{ChatRequest, Content, Message};

const JOIN: &str = "\n\n";

/// A message after normalization.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Turn {
    User(String),
    Assistant {
        content: String,
        calls: Vec<Call>,
        prefix: bool,
    },
    Tool {
        content: String,
        call_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub id: Option<String>,
    pub name: String,
    /// Normalized: re-serialized JSON, `{}` for empty, the raw text when not JSON.
    pub arguments: String,
}

pub(crate) struct Normalized {
    pub system_prompt: Option<String>,
    pub turns: Vec<Turn>,
}

/// The non-empty texts of several contents, joined with a blank line.
fn aggregate<'a>(contents: impl Iterator<Item = Option<&'a Content>>) -> String {
    contents
        .flatten()
        .flat_map(|c| c.texts())
        .collect::<Vec<_>>()
        .join(JOIN)
}

/// `_normalize_json_content`: `{}` when empty, `json.dumps(json.loads(s))` when JSON.
fn normalize_json(s: &str) -> String {
    if s.is_empty() {
        return "{}".into();
    }
    pyjson::loads(s).map_or_else(|| s.to_string(), |v| pyjson::dumps(&v))
}

pub(crate) fn normalize(req: &ChatRequest) -> Normalized {
    let prompts: Vec<String> = req
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::System { content: Some(c) } if c.is_truthy() => {
                Some(aggregate(std::iter::once(Some(c))))
            }
            _ => None,
        })
        .collect();
    let system_prompt = (!prompts.is_empty()).then(|| prompts.join(JOIN));

    let mut turns = Vec::new();
    let mut run: Vec<&Message> = Vec::new();
    for m in &req.messages {
        if run.first().is_some_and(|r| r.role() != m.role()) {
            flush(&run, &mut turns);
            run.clear();
        }
        run.push(m);
    }
    flush(&run, &mut turns);
    if !matches!(turns.first(), Some(Turn::User(_))) {
        turns.insert(0, Turn::User(String::new()));
    }
    Normalized {
        system_prompt,
        turns,
    }
}

/// Turns of one run of same-role messages (system runs give none).
fn flush(run: &[&Message], turns: &mut Vec<Turn>) {
    let Some(first) = run.first() else { return };
    match first {
        Message::System { .. } => {}
        Message::User { .. } => turns.push(Turn::User(aggregate(run.iter().map(|m| m.content())))),
        Message::Tool { .. } => {
            for m in run {
                if let Message::Tool {
                    content,
                    tool_call_id,
                    ..
                } = m
                {
                    turns.push(Turn::Tool {
                        content: normalize_json(&aggregate(std::iter::once(content.as_ref()))),
                        call_id: tool_call_id.clone(),
                    });
                }
            }
        }
        Message::Assistant { .. } => {
            let mut calls = Vec::new();
            let mut prefix = false;
            for m in run {
                if let Message::Assistant {
                    tool_calls,
                    prefix: p,
                    ..
                } = m
                {
                    for c in tool_calls.iter().flatten() {
                        calls.push(Call {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            arguments: normalize_json(&c.arguments),
                        });
                    }
                    prefix |= p;
                }
            }
            turns.push(Turn::Assistant {
                content: aggregate(run.iter().map(|m| m.content())),
                calls,
                prefix,
            });
        }
    }
}
