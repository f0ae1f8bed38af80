//! The body of `POST /v1/chat/completions` as the SDKs send it (see
//! ../shared/design/mistral-api.md). JSON `null` means unset; unknown fields are ignored.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub tools: Option<Vec<WireTool>>,
}

/// A message, told apart by its `role`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum WireMessage {
    System {
        #[serde(default)]
        content: Option<WireContent>,
    },
    User {
        #[serde(default)]
        content: Option<WireContent>,
    },
    Assistant {
        #[serde(default)]
        content: Option<WireContent>,
        #[serde(default)]
        tool_calls: Option<Vec<WireToolCall>>,
        #[serde(default)]
        prefix: Option<bool>,
    },
    Tool {
        #[serde(default)]
        content: Option<WireContent>,
        #[serde(default)]
        tool_call_id: Option<String>,
        #[serde(default)]
        name: Option<String>,
    },
}

/// A string, or a list of content chunks.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WireContent {
    Text(String),
    Chunks(Vec<WireChunk>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireChunk {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireToolCall {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub function: WireFunctionCall,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireFunctionCall {
    pub name: String,
    /// A JSON string, or (as the SDKs allow) an object.
    #[serde(default)]
    pub arguments: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireTool {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub function: WireFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireFunction {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}
