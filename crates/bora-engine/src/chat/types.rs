//! A chat request as the engine takes it: messages and tools, already parsed from the wire.

use std::str::FromStr;

/// The prompt format of an instruct model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// Mixtral 8x7B Instruct: `[INST]` as plain text, system prompt on the first user turn.
    V1,
    /// Mixtral 8x22B Instruct: control tokens, tools, system prompt on the last user turn.
    V3,
}

impl ChatFormat {
    /// The format a tokenizer was made for: v3 where `[INST]` is a control token, v1 otherwise.
    pub fn detect(tok: &crate::Tokenizer) -> Self {
        if tok.specials().inst.is_some() {
            ChatFormat::V3
        } else {
            ChatFormat::V1
        }
    }
}

impl FromStr for ChatFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(ChatFormat::V1),
            "v3" => Ok(ChatFormat::V3),
            _ => Err(format!("unknown chat format `{s}`: expected v1 or v3")),
        }
    }
}

/// Message content: a string or a list of text chunks.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// One string.
    Text(String),
    /// Text chunks, joined with a blank line.
    Chunks(Vec<String>),
}

impl Content {
    /// Python's truthiness of the content: a non-empty string or a non-empty list.
    pub fn is_truthy(&self) -> bool {
        match self {
            Content::Text(s) => !s.is_empty(),
            Content::Chunks(c) => !c.is_empty(),
        }
    }

    /// The non-empty texts, in order.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        let (one, many): (Option<&str>, &[String]) = match self {
            Content::Text(s) => (Some(s.as_str()), &[]),
            Content::Chunks(c) => (None, c.as_slice()),
        };
        one.into_iter()
            .chain(many.iter().map(|s| s.as_str()))
            .filter(|s| !s.is_empty())
    }
}

/// A call of a tool, as the assistant made it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// `None` where the wire had none (mistral-common's `"null"`).
    pub id: Option<String>,
    /// The function's name.
    pub name: String,
    /// The arguments as sent: JSON text, or any other string.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
/// A message of a conversation.
pub enum Message {
    /// Instructions for the assistant.
    System {
        /// Its text.
        content: Option<Content>,
    },
    /// What the user says.
    User {
        /// Its text.
        content: Option<Content>,
    },
    /// What the assistant said: text or tool calls.
    Assistant {
        /// Its text.
        content: Option<Content>,
        /// Its tool calls.
        tool_calls: Option<Vec<ToolCall>>,
        /// True on a final message the model must continue.
        prefix: bool,
    },
    /// A tool's result.
    Tool {
        /// The result (JSON or text).
        content: Option<Content>,
        /// The id of the call it answers.
        tool_call_id: Option<String>,
        /// The called function's name.
        name: Option<String>,
    },
}

impl Message {
    /// The role's name as mistral-common writes it in messages.
    pub fn role(&self) -> &'static str {
        match self {
            Message::System { .. } => "system",
            Message::User { .. } => "user",
            Message::Assistant { .. } => "assistant",
            Message::Tool { .. } => "tool",
        }
    }

    pub(crate) fn content(&self) -> Option<&Content> {
        match self {
            Message::System { content } | Message::User { content } => content.as_ref(),
            Message::Assistant { content, .. } | Message::Tool { content, .. } => content.as_ref(),
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// The function's name (`[a-zA-Z0-9_-]{1,64}`).
    pub name: String,
    /// What the function does, for the model.
    pub description: String,
    /// A JSON Schema (draft 7) object.
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Default)]
/// A conversation and the tools the model may call.
pub struct ChatRequest {
    /// The messages, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<Tool>,
}
