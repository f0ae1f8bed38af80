//! Response bodies: completions, stream chunks and model cards, in the shapes the SDKs parse
//! (../shared/design/mistral-api.md §2, §3, §5).

use bora_engine::chat::ToolCall;
use bora_engine::{FinishReason, Logprob, TokenLogprobs, Usage};
use serde_json::{json, Value};

/// The tool calls of a message: `arguments` as a JSON string, `index` in order.
pub fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "id": c.id.clone().unwrap_or_else(|| "null".into()),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                    "index": i,
                })
            })
            .collect(),
    )
}

/// `usage`, with `total_tokens` the sum of the others; where predicted tokens were verified,
/// OpenAI's `completion_tokens_details` counts those kept and those rejected (the rejected are
/// not in `completion_tokens`).
pub fn usage_json(u: &Usage) -> Value {
    let mut usage = json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens(),
    });
    if u.accepted_prediction_tokens + u.rejected_prediction_tokens > 0 {
        usage["completion_tokens_details"] = json!({
            "accepted_prediction_tokens": u.accepted_prediction_tokens,
            "rejected_prediction_tokens": u.rejected_prediction_tokens,
        });
    }
    usage
}

/// A `logprobs` or `prompt_logprobs` object: `{"content": [TokenLogprob]}`, each item
/// `{token, logprob, bytes, token_id, top_logprobs}` (../shared/design/mistral-api-more.md
/// §1.3); `top_logprobs` is always a list.
pub fn logprobs_json(content: &[TokenLogprobs]) -> Value {
    let one = |l: &Logprob| {
        json!({
            "token": l.token,
            "logprob": l.logprob,
            "bytes": l.bytes,
            "token_id": l.token_id,
        })
    };
    let items: Vec<Value> = content
        .iter()
        .map(|t| {
            let mut item = one(&t.chosen);
            item["top_logprobs"] = t.top.iter().map(one).collect();
            item
        })
        .collect();
    json!({ "content": items })
}

/// One choice of a whole completion, as [`choice_json`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceBody<'a> {
    pub index: usize,
    pub text: &'a str,
    pub calls: &'a [ToolCall],
    pub reason: Option<FinishReason>,
    /// The generated tokens' log-probabilities, when asked.
    pub logprobs: Option<&'a [TokenLogprobs]>,
    /// The prompt's log-probabilities, when asked.
    pub prompt_logprobs: Option<&'a [TokenLogprobs]>,
}

/// One choice of a whole completion.
pub fn choice_json(c: ChoiceBody<'_>) -> Value {
    let (content, tool_calls) = if c.calls.is_empty() {
        (c.text.to_string(), Value::Null)
    } else {
        (String::new(), tool_calls_json(c.calls))
    };
    let mut choice = json!({
        "index": c.index,
        "message": {
            "role": "assistant",
            "content": content,
            "tool_calls": tool_calls,
            "prefix": false,
        },
        "finish_reason": c.reason.unwrap_or(FinishReason::Error).as_str(),
        "logprobs": c.logprobs.map_or(Value::Null, logprobs_json),
    });
    if let Some(p) = c.prompt_logprobs {
        choice["prompt_logprobs"] = logprobs_json(p);
    }
    choice
}

/// A whole completion.
pub fn completion_json(
    id: &str,
    created: u64,
    model: &str,
    choices: Vec<Value>,
    usage: &Usage,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_json(usage),
    })
}

/// A stream chunk; `usage` rides on the last one.
pub fn chunk_json(
    id: &str,
    created: u64,
    model: &str,
    choices: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let mut chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        chunk["usage"] = usage_json(u);
    }
    chunk
}

/// One choice of a chunk: every choice carries a `finish_reason` key, null until its end.
pub fn chunk_choice(index: usize, delta: Value, reason: Option<FinishReason>) -> Value {
    json!({
        "index": index,
        "delta": delta,
        "finish_reason": reason.map(|r| r.as_str()),
        "logprobs": null,
    })
}

/// What `/v1/models` says of the served model.
#[derive(Debug, Clone)]
pub struct ModelCard {
    pub id: String,
    pub created: u64,
    pub description: String,
    pub function_calling: bool,
    pub max_context_length: usize,
    pub default_temperature: f64,
}

impl ModelCard {
    /// The card in Mistral's `BaseModelCard` shape (openai reads `id`, `object`, `created`,
    /// `owned_by`).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "bora",
            "type": "base",
            "name": self.id,
            "description": self.description,
            "capabilities": {
                "completion_chat": true,
                "function_calling": self.function_calling,
                "completion_fim": false,
                "fine_tuning": false,
                "vision": false,
                "classification": false,
            },
            "max_context_length": self.max_context_length,
            "aliases": [],
            "deprecation": null,
            "default_model_temperature": self.default_temperature,
        })
    }
}
