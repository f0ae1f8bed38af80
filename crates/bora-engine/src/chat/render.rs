//! mistral-common's `InstructTokenizerV1` and `InstructTokenizerV3`
//! (`tokens/tokenizers/instruct.py`): token ids of a validated, normalized request. Each segment
//! is encoded on its own, as sentencepiece's dummy prefix makes a difference at every start.
//!
//! For v1, which mistral-common renders without tools, bora adds its own tool format with the
//! v3 markers written as plain text (documented in the README):
//! * the last user turn starts with `[AVAILABLE_TOOLS] <tools JSON> [/AVAILABLE_TOOLS]` and
//!   [`V1_TOOL_INSTRUCTIONS`], then a blank line;
//! * an assistant tool call is `[TOOL_CALLS] <calls JSON>` then EOS;
//! * a tool result is its own instruction, `[INST] [TOOL_RESULTS] <result JSON> [/TOOL_RESULTS] [/INST]`.

use serde_json::{json, Map, Value};

use super::normalize::{normalize, Call, Turn};
use super::pyjson;
use super::types::{ChatFormat, ChatRequest, Tool};
use super::validate::validate;
use super::ChatError;
use crate::tokenizer::Tokenizer;

/// What bora tells a v1 model about calling tools, after the tool list.
pub const V1_TOOL_INSTRUCTIONS: &str =
    "To call one or more of these tools, answer with [TOOL_CALLS] followed by \
a JSON list of {\"name\": ..., \"arguments\": {...}} objects and nothing else.";

/// Validates, normalizes and renders `req` in `format`: the prompt's token ids.
pub fn render(
    format: ChatFormat,
    tok: &Tokenizer,
    req: &ChatRequest,
) -> Result<Vec<u32>, ChatError> {
    validate(format, req)?;
    let n = normalize(req);
    let mut r = Renderer {
        tok,
        out: Vec::with_capacity(256),
    };
    let first_user = n.turns.iter().position(|t| matches!(t, Turn::User(_)));
    let last_user = n.turns.iter().rposition(|t| matches!(t, Turn::User(_)));
    let sp = n.system_prompt.as_deref().filter(|s| !s.is_empty());
    r.out.extend(tok.specials().bos);
    for (i, turn) in n.turns.iter().enumerate() {
        match (format, turn) {
            (ChatFormat::V1, Turn::User(content)) => {
                let mut text = String::new();
                if Some(i) == last_user && !req.tools.is_empty() {
                    text.push_str(&v1_tools_prompt(&req.tools));
                }
                match sp.filter(|_| Some(i) == first_user) {
                    Some(sp) => text.push_str(&format!("{sp}\n\n{content}")),
                    None => text.push_str(content),
                }
                r.text(&format!("[INST] {text} [/INST]"))?;
            }
            (ChatFormat::V3, Turn::User(content)) => {
                if Some(i) == last_user && !req.tools.is_empty() {
                    r.special(tok.specials().available_tools, "[AVAILABLE_TOOLS]")?;
                    r.text(&pyjson::dumps(&tools_json(&req.tools)))?;
                    r.special(tok.specials().available_tools_end, "[/AVAILABLE_TOOLS]")?;
                }
                r.special(tok.specials().inst, "[INST]")?;
                match sp.filter(|_| Some(i) == last_user) {
                    Some(sp) => r.text(&format!("{sp}\n\n{content}"))?,
                    None => r.text(content)?,
                }
                r.special(tok.specials().inst_end, "[/INST]")?;
            }
            (
                _,
                Turn::Assistant {
                    content,
                    calls,
                    prefix,
                },
            ) => {
                if !calls.is_empty() {
                    let list = pyjson::dumps(&calls_json(calls));
                    match format {
                        ChatFormat::V1 => r.text(&format!("[TOOL_CALLS] {list}"))?,
                        ChatFormat::V3 => {
                            r.special(tok.specials().tool_calls, "[TOOL_CALLS]")?;
                            r.text(&list)?;
                        }
                    }
                } else if !content.is_empty() {
                    match format {
                        ChatFormat::V1 => r.text(content)?,
                        ChatFormat::V3 => r.text(content.trim_end_matches(' '))?,
                    }
                } else {
                    return Err(ChatError::Tokenizer(format!(
                        "Invalid assistant message: {content}"
                    )));
                }
                if !prefix {
                    r.out.extend(tok.specials().eos);
                }
            }
            (_, Turn::Tool { content, call_id }) => {
                let result = json!({
                    "content": pyjson::loads(content).unwrap_or_else(|| Value::String(content.clone())),
                    "call_id": call_id,
                });
                let result = pyjson::dumps(&result);
                match format {
                    ChatFormat::V1 => r.text(&format!(
                        "[INST] [TOOL_RESULTS] {result} [/TOOL_RESULTS] [/INST]"
                    ))?,
                    ChatFormat::V3 => {
                        r.special(tok.specials().tool_results, "[TOOL_RESULTS]")?;
                        r.text(&result)?;
                        r.special(tok.specials().tool_results_end, "[/TOOL_RESULTS]")?;
                    }
                }
            }
        }
    }
    Ok(r.out)
}

/// The tool block bora puts at the start of a v1 model's last user turn.
pub fn v1_tools_prompt(tools: &[Tool]) -> String {
    format!(
        "[AVAILABLE_TOOLS] {} [/AVAILABLE_TOOLS]\n{V1_TOOL_INSTRUCTIONS}\n\n",
        pyjson::dumps(&tools_json(tools))
    )
}

/// `[{"type": "function", "function": {"name", "description", "parameters"}}]`, as
/// mistral-common dumps its `Tool` models (without `strict`).
fn tools_json(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), Value::String(t.name.clone()));
                f.insert("description".into(), Value::String(t.description.clone()));
                f.insert("parameters".into(), t.parameters.clone());
                let mut o = Map::new();
                o.insert("type".into(), Value::String("function".into()));
                o.insert("function".into(), Value::Object(f));
                Value::Object(o)
            })
            .collect(),
    )
}

/// `[{"name", "arguments" (parsed when JSON), "id" (unless absent)}]`.
fn calls_json(calls: &[Call]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                let mut o = Map::new();
                o.insert("name".into(), Value::String(c.name.clone()));
                let args = pyjson::loads(&c.arguments)
                    .unwrap_or_else(|| Value::String(c.arguments.clone()));
                o.insert("arguments".into(), args);
                if let Some(id) = c.id.as_deref().filter(|id| !id.is_empty() && *id != "null") {
                    o.insert("id".into(), Value::String(id.to_string()));
                }
                Value::Object(o)
            })
            .collect(),
    )
}

struct Renderer<'a> {
    tok: &'a Tokenizer,
    out: Vec<u32>,
}

impl Renderer<'_> {
    /// One segment of plain text, encoded on its own.
    fn text(&mut self, s: &str) -> Result<(), ChatError> {
        let ids = self
            .tok
            .encode(s)
            .map_err(|e| ChatError::Tokenizer(e.to_string()))?;
        self.out.extend(ids);
        Ok(())
    }

    fn special(&mut self, id: Option<u32>, name: &str) -> Result<(), ChatError> {
        let id =
            id.ok_or_else(|| ChatError::Tokenizer(format!("the tokenizer has no {name} token")))?;
        self.out.push(id);
        Ok(())
    }
}
