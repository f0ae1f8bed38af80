//! Wire request → engine request: parse, don't validate. Errors name the field.

use bora_engine::chat::{ChatRequest, Content, Message, Tool, ToolCall};
use serde_json::Value;

use crate::wire::{
    ChatCompletionRequest, WireChunk, WireContent, WireMessage, WireTool, WireToolCall,
};

/// A request body that is not a chat completion request bora can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// Parses a `/v1/chat/completions` body into the engine's chat request.
pub fn parse_chat_request(body: &str) -> Result<ChatRequest, WireError> {
    let req: ChatCompletionRequest =
        serde_json::from_str(body).map_err(|e| WireError(format!("invalid request body: {e}")))?;
    ChatRequest::try_from(&req)
}

impl TryFrom<&ChatCompletionRequest> for ChatRequest {
    type Error = WireError;

    fn try_from(req: &ChatCompletionRequest) -> Result<Self, WireError> {
        let messages = req
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| message(m, &format!("messages[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = req
            .tools
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| tool(t, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChatRequest { messages, tools })
    }
}

fn message(m: &WireMessage, at: &str) -> Result<Message, WireError> {
    let content = |c: &Option<WireContent>| {
        c.as_ref()
            .map(|c| content(c, &format!("{at}.content")))
            .transpose()
    };
    Ok(match m {
        WireMessage::System { content: c } => Message::System {
            content: content(c)?,
        },
        WireMessage::User { content: c } => Message::User {
            content: content(c)?,
        },
        WireMessage::Assistant {
            content: c,
            tool_calls,
            prefix,
        } => Message::Assistant {
            content: content(c)?,
            tool_calls: tool_calls
                .as_ref()
                .map(|calls| {
                    calls
                        .iter()
                        .enumerate()
                        .map(|(j, call)| tool_call(call, &format!("{at}.tool_calls[{j}]")))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
            prefix: prefix.unwrap_or(false),
        },
        WireMessage::Tool {
            content: c,
            tool_call_id,
            name,
        } => Message::Tool {
            content: content(c)?,
            tool_call_id: tool_call_id.clone(),
            name: name.clone(),
        },
    })
}

fn content(c: &WireContent, at: &str) -> Result<Content, WireError> {
    match c {
        WireContent::Text(s) => Ok(Content::Text(s.clone())),
        WireContent::Chunks(chunks) => chunks
            .iter()
            .enumerate()
            .map(|(i, ch)| chunk(ch, &format!("{at}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Content::Chunks),
    }
}

fn chunk(c: &WireChunk, at: &str) -> Result<String, WireError> {
    match (c.kind.as_str(), &c.text) {
        ("text", Some(t)) => Ok(t.clone()),
        ("text", None) => Err(WireError(format!("{at}: a text chunk needs `text`"))),
        (other, _) => Err(WireError(format!(
            "{at}: content chunks of type `{other}` are not supported: Mixtral reads text only"
        ))),
    }
}

fn tool_call(c: &WireToolCall, at: &str) -> Result<ToolCall, WireError> {
    if let Some(kind) = c.kind.as_deref().filter(|k| *k != "function") {
        return Err(WireError(format!(
            "{at}.type: `{kind}` is not a function call"
        )));
    }
    let arguments = match &c.function.arguments {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(v) => {
            return Err(WireError(format!(
                "{at}.function.arguments: expected a JSON string or object, got {v}"
            )))
        }
    };
    Ok(ToolCall {
        id: c.id.clone().filter(|id| id != "null"),
        name: c.function.name.clone(),
        arguments,
    })
}

fn tool(t: &WireTool, at: &str) -> Result<Tool, WireError> {
    if let Some(kind) = t.kind.as_deref().filter(|k| *k != "function") {
        return Err(WireError(format!(
            "{at}.type: tools of type `{kind}` are not supported, only `function`"
        )));
    }
    let parameters = match &t.function.parameters {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(v) => {
            return Err(WireError(format!(
                "{at}.function.parameters: expected a JSON Schema object, got {v}"
            )))
        }
    };
    Ok(Tool {
        name: t.function.name.clone(),
        description: t.function.description.clone().unwrap_or_default(),
        parameters,
    })
}
