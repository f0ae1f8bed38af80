//! The body of `POST /v1/chat/completions` as the SDKs send it (see
//! ../shared/design/mistral-api.md): Mistral's `ChatCompletionRequest`, and the OpenAI names
//! that arrive at the same endpoint. JSON `null` means unset; unknown fields are ignored (or,
//! in strict mode, refused: [`KNOWN_FIELDS`]).

use serde::Deserialize;
use serde_json::Value;

/// The top-level fields bora takes; in strict mode any other is a 422.
pub const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "metadata",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "safe_prompt",
    "parallel_tool_calls",
    "prediction",
    "min_tokens",
    "repetition_penalty",
    "logprobs",
    "top_logprobs",
    "prompt_logprobs",
    "top_prompt_logprobs",
    "prompt_cache_key",
    "service_tier",
    "reasoning_effort",
    "prompt_mode",
    "guardrails",
    // Old clients' name of safe_prompt.
    "safe_mode",
    // OpenAI's names.
    "seed",
    "max_completion_tokens",
    "stream_options",
    "user",
];

/// A chat completion request.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<WireMessage>>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Not in Mistral's API; llama.cpp and vLLM take it.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub random_seed: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub tools: Option<Vec<WireTool>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// vLLM's `min_tokens`: no end of sequence before this many tokens.
    #[serde(default)]
    pub min_tokens: Option<i64>,
    /// vLLM's `repetition_penalty` (1: none).
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub safe_prompt: Option<bool>,
    #[serde(default)]
    pub safe_mode: Option<bool>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Report each generated token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per generated token (with `logprobs`).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Report the prompt tokens' log-probabilities (Mistral: a bool; vLLM: the number of
    /// alternatives).
    #[serde(default)]
    pub prompt_logprobs: Option<PromptLogprobs>,
    /// Alternatives per prompt token (with `prompt_logprobs`).
    #[serde(default)]
    pub top_prompt_logprobs: Option<i64>,
    /// The expected answer, verified instead of generated where the answer follows it.
    #[serde(default, deserialize_with = "object")]
    pub prediction: Option<Prediction>,
    /// A hint for routing to a server that holds the prefix: bora's prefix cache finds shared
    /// prefixes by itself.
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    /// `auto` or `standard_only`: one tier here.
    #[serde(default)]
    pub service_tier: Option<ServiceTier>,
    /// For reasoning models: Mixtral has no reasoning mode (`none` is what it does).
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// `reasoning`: the reasoning system prompt, which Mixtral has not.
    #[serde(default)]
    pub prompt_mode: Option<String>,
    /// Moderation by a guardrail model, which bora has not.
    #[serde(default)]
    pub guardrails: Option<Vec<Value>>,
    /// Usage is always in the last chunk: accepted and ignored.
    #[serde(default)]
    pub stream_options: Option<Value>,
    #[serde(default)]
    pub user: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// An object field: serde's derived structs also take a list of their fields in order (so `[]`
/// would pass as an object of defaults); the API's objects are JSON objects only.
fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    Option::<serde_json::Map<String, Value>>::deserialize(d)?
        .map(|m| T::deserialize(Value::Object(m)).map_err(D::Error::custom))
        .transpose()
}

/// `prediction`: `{"type": "content", "content": "..."}` (OpenAI's content may be a list of
/// text parts).
#[derive(Debug, Clone, Deserialize)]
pub struct Prediction {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub content: Option<WireContent>,
}

/// `prompt_logprobs`: Mistral's bool, or vLLM's number of alternatives.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum PromptLogprobs {
    Flag(bool),
    Top(i64),
}

/// `service_tier` (a closed enum in the SDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceTier {
    Auto,
    StandardOnly,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub schema: Value,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`: a mode, or one named function.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(ToolChoiceMode),
    Named(NamedToolChoice),
}

/// `tool_choice` as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    Auto,
    None,
    Any,
    Required,
}

/// `{"type": "function", "function": {"name": ...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedToolChoice {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub function: NamedFunction,
}

/// The function of a [`NamedToolChoice`].
#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    pub name: String,
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
