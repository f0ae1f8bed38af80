//! Wire request → engine request. Wrong types and out-of-range values are 422s that name the
//! field (with pydantic-style `detail`); what bora cannot do is a 400 that says so.

use bora_engine::chat::{ChatRequest, Content, Message, Tool, ToolCall};
use bora_engine::ToolChoice as EngineToolChoice;
use bora_engine::{Completion, SamplingParams, MAX_TOP_LOGPROBS};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::wire::{
    ChatCompletionRequest, PromptLogprobs, ResponseFormat, Stop, ToolChoice, ToolChoiceMode,
    WireChunk, WireContent, WireMessage, WireTool, WireToolCall, KNOWN_FIELDS,
};

/// Mistral's guardrail system prompt, prepended when `safe_prompt` is true.
pub const SAFE_PROMPT: &str = "Always assist with care, respect, and truth. Respond with utmost \
utility yet securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure replies \
promote fairness and positivity.";

/// Temperature when the request sets none: the model card's `default_model_temperature`, as
/// the cloud does for Mixtral.
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

/// A request body that is not a chat completion request bora can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// A chat completion request, ready for the engine.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// The model asked for.
    pub model: String,
    /// Whether to answer with server-sent events.
    pub stream: bool,
    /// What the engine runs.
    pub completion: Completion,
}

/// Parses a `/v1/chat/completions` body into the engine's chat request (for tools that take
/// the wire format, e.g. `bora tokenize --chat-json`).
pub fn parse_chat_request(body: &str) -> Result<ChatRequest, WireError> {
    parse_request(body.as_bytes(), false)
        .map(|r| r.completion.chat)
        .map_err(|e| WireError(e.message))
}

/// Parses and checks a request body; `strict` refuses unknown top-level fields.
pub fn parse_request(body: &[u8], strict: bool) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_field(
            &[json!(e.column())],
            "json_invalid",
            &format!("JSON decode error: {e}"),
            None,
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::invalid_field(
            &[],
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
            Some(&value),
        ));
    };
    if strict {
        let extra: Vec<Value> = obj
            .iter()
            .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| {
                json!({"type": "extra_forbidden", "loc": ["body", k],
                       "msg": "Extra inputs are not permitted", "input": v})
            })
            .collect();
        if let Some(first) = extra.first() {
            let mut err = ApiError::invalid_field(
                &[first["loc"][1].clone()],
                "extra_forbidden",
                "Extra inputs are not permitted",
                Some(&first["input"]),
            );
            err.detail = extra;
            return Err(err);
        }
    }
    let req: ChatCompletionRequest =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let loc: Vec<Value> = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Seq { index } => Some(json!(index)),
                    serde_path_to_error::Segment::Map { key } => Some(json!(key)),
                    serde_path_to_error::Segment::Enum { variant } => Some(json!(variant)),
                    serde_path_to_error::Segment::Unknown => None,
                })
                .collect();
            let input = lookup(&value, &loc);
            ApiError::invalid_field(&loc, "type_error", &e.inner().to_string(), input)
        })?;
    convert(req, strict)
}

/// The value at `loc` in `v`.
fn lookup<'a>(v: &'a Value, loc: &[Value]) -> Option<&'a Value> {
    loc.iter().try_fold(v, |v, k| match k {
        Value::Number(n) => v.get(n.as_u64()? as usize),
        Value::String(s) => v.get(s),
        _ => None,
    })
}

fn range_error(field: &str, msg: &str, input: impl Into<Value>) -> ApiError {
    ApiError::invalid_field(&[json!(field)], "value_error", msg, Some(&input.into()))
}

fn convert(req: ChatCompletionRequest, strict: bool) -> Result<ParsedRequest, ApiError> {
    let model = req.model.clone().ok_or_else(|| {
        ApiError::invalid_field(&[json!("model")], "missing", "Field required", None)
    })?;
    let wire_messages = req.messages.as_ref().ok_or_else(|| {
        ApiError::invalid_field(&[json!("messages")], "missing", "Field required", None)
    })?;
    let temperature = req.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(range_error(
            "temperature",
            "Input should be greater than or equal to 0",
            temperature,
        ));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(range_error(
            "top_p",
            "Input should be greater than 0 and less than or equal to 1",
            top_p,
        ));
    }
    let top_k = req.top_k.unwrap_or(0);
    if top_k < 0 {
        return Err(range_error(
            "top_k",
            "Input should be greater than or equal to 0",
            top_k,
        ));
    }
    let (max_field, max_tokens) = match (req.max_tokens, req.max_completion_tokens) {
        (Some(m), _) => ("max_tokens", Some(m)),
        (None, Some(m)) => ("max_completion_tokens", Some(m)),
        (None, None) => ("max_tokens", None),
    };
    if let Some(m) = max_tokens.filter(|&m| m < 1) {
        return Err(range_error(
            max_field,
            "Input should be greater than or equal to 1",
            m,
        ));
    }
    let (seed_field, seed) = match (req.random_seed, req.seed) {
        (Some(s), _) => ("random_seed", Some(s)),
        (None, Some(s)) => ("seed", Some(s)),
        (None, None) => ("random_seed", None),
    };
    if let Some(s) = seed.filter(|&s| s < 0) {
        return Err(range_error(
            seed_field,
            "Input should be greater than or equal to 0",
            s,
        ));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(range_error("n", "Input should be between 1 and 16", n));
    }
    let penalty = |field: &str, v: Option<f64>| -> Result<f32, ApiError> {
        let v = v.unwrap_or(0.0);
        if (-2.0..=2.0).contains(&v) {
            Ok(v as f32)
        } else {
            Err(range_error(field, "Input should be between -2 and 2", v))
        }
    };
    let presence_penalty = penalty("presence_penalty", req.presence_penalty)?;
    let repetition_penalty = req.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        return Err(range_error(
            "repetition_penalty",
            "Input should be greater than 0",
            repetition_penalty,
        ));
    }
    let min_tokens = req.min_tokens.unwrap_or(0);
    if min_tokens < 0 {
        return Err(range_error(
            "min_tokens",
            "Input should be greater than or equal to 0",
            min_tokens,
        ));
    }
    if let Some(m) = max_tokens.filter(|&m| min_tokens > m) {
        return Err(range_error(
            "min_tokens",
            &format!("Input should be at most max_tokens ({m})"),
            min_tokens,
        ));
    }
    let frequency_penalty = penalty("frequency_penalty", req.frequency_penalty)?;
    let (logprobs, prompt_logprobs) = logprobs(&req)?;
    let prediction = prediction(&req)?;
    unsupported(&req, strict)?;
    let stop = match req.stop.clone() {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.iter().any(|s| s.is_empty()) {
        return Err(range_error(
            "stop",
            "Stop strings must not be empty",
            stop.clone(),
        ));
    }
    let text_json = match &req.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            if !json_schema.schema.is_object() && !json_schema.schema.is_boolean() {
                return Err(ApiError::invalid_field(
                    &[
                        json!("response_format"),
                        json!("json_schema"),
                        json!("schema"),
                    ],
                    "type_error",
                    "Input should be a JSON Schema object",
                    Some(&json_schema.schema),
                ));
            }
            Some(json_schema.schema.clone())
        }
    };
    let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    let tool_choice = match &req.tool_choice {
        None | Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => EngineToolChoice::Auto,
        Some(ToolChoice::Mode(ToolChoiceMode::None)) => EngineToolChoice::None,
        Some(ToolChoice::Mode(_)) => EngineToolChoice::Required,
        Some(ToolChoice::Named(named)) => EngineToolChoice::Named(named.function.name.clone()),
    };
    if matches!(
        tool_choice,
        EngineToolChoice::Required | EngineToolChoice::Named(_)
    ) && !has_tools
    {
        return Err(ApiError::bad_request(
            "tool_choice requires a tool call, but the request has no tools",
        )
        .with_param("tool_choice"));
    }

    let mut messages = wire_messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(m, &format!("messages[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if req.safe_prompt.or(req.safe_mode).unwrap_or(false) {
        messages.insert(
            0,
            Message::System {
                content: Some(Content::Text(SAFE_PROMPT.to_string())),
            },
        );
    }
    let tools = req
        .tools
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| tool(t, &format!("tools[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;

    let mut completion = Completion::new(ChatRequest { messages, tools });
    completion.sampling = SamplingParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: top_k as usize,
        seed: 0,
    };
    completion.seed = seed.map(|s| s as u64);
    completion.max_tokens = max_tokens.map(|m| m as usize);
    completion.stop = stop;
    completion.n = n as usize;
    completion.presence_penalty = presence_penalty;
    completion.frequency_penalty = frequency_penalty;
    completion.repetition_penalty = repetition_penalty as f32;
    completion.min_tokens = min_tokens as usize;
    completion.logprobs = logprobs;
    completion.prompt_logprobs = prompt_logprobs;
    completion.prediction = prediction;
    completion.tool_choice = tool_choice;
    completion.parallel_tool_calls = req.parallel_tool_calls.unwrap_or(true);
    completion.response_format = text_json;
    Ok(ParsedRequest {
        model,
        stream: req.stream.unwrap_or(false),
        completion,
    })
}

/// `logprobs`/`top_logprobs` and `prompt_logprobs`/`top_prompt_logprobs`: the alternatives per
/// generated and per prompt token, where their log-probabilities are asked for.
fn logprobs(req: &ChatCompletionRequest) -> Result<(Option<usize>, Option<usize>), ApiError> {
    let count = |field: &str, k: i64| -> Result<usize, ApiError> {
        if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
            Ok(k as usize)
        } else {
            Err(range_error(
                field,
                &format!("Input should be between 0 and {MAX_TOP_LOGPROBS}"),
                k,
            ))
        }
    };
    let top = req
        .top_logprobs
        .map(|k| count("top_logprobs", k))
        .transpose()?;
    let generated = match (req.logprobs, top) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(k)) if k > 0 => {
            return Err(range_error(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
                k as i64,
            ))
        }
        _ => None,
    };
    let top_prompt = req
        .top_prompt_logprobs
        .map(|k| count("top_prompt_logprobs", k))
        .transpose()?;
    let prompt = match (req.prompt_logprobs, top_prompt) {
        (Some(PromptLogprobs::Flag(true)), top) => Some(top.unwrap_or(0)),
        (Some(PromptLogprobs::Top(k)), top) => Some(top.unwrap_or(count("prompt_logprobs", k)?)),
        (_, Some(k)) if k > 0 => {
            return Err(range_error(
                "top_prompt_logprobs",
                "top_prompt_logprobs needs prompt_logprobs: true",
                k as i64,
            ))
        }
        _ => None,
    };
    Ok((generated, prompt))
}

/// `prediction`'s text (`None` when empty).
fn prediction(req: &ChatCompletionRequest) -> Result<Option<String>, ApiError> {
    let Some(p) = &req.prediction else {
        return Ok(None);
    };
    if p.kind.as_deref().is_some_and(|k| k != "content") {
        return Err(ApiError::invalid_field(
            &[json!("prediction"), json!("type")],
            "literal_error",
            "Input should be 'content'",
            p.kind.as_ref().map(|k| json!(k)).as_ref(),
        ));
    }
    let text = match &p.content {
        None => String::new(),
        Some(c) => match content(c, "prediction.content")? {
            Content::Text(t) => t,
            Content::Chunks(chunks) => chunks.concat(),
        },
    };
    Ok((!text.is_empty()).then_some(text))
}

/// Fields of the SDK that ask for what bora has not (a reasoning mode, a moderation model):
/// ignored, or under `--strict-api` refused with a 422 naming them. A guardrail that would
/// block is refused in any mode: content must not pass as if it had been checked.
fn unsupported(req: &ChatCompletionRequest, strict: bool) -> Result<(), ApiError> {
    let refuse = |field: &str, msg: &str, input: &Value| {
        Err(ApiError::invalid_field(
            &[json!(field)],
            "value_error",
            msg,
            Some(input),
        ))
    };
    for (i, g) in req.guardrails.iter().flatten().enumerate() {
        let blocks = ["moderation_llm_v1", "moderation_llm_v2"]
            .iter()
            .any(|m| g[m]["action"] == "block");
        if blocks
            || (strict
                && g.as_object()
                    .is_some_and(|o| o.values().any(Value::is_object)))
        {
            return refuse(
                &format!("guardrails[{i}]"),
                "bora has no moderation model: a guardrail cannot be applied",
                g,
            );
        }
    }
    if !strict {
        return Ok(());
    }
    if let Some(e) = req.reasoning_effort.as_deref().filter(|&e| e != "none") {
        return refuse(
            "reasoning_effort",
            "Mixtral has no reasoning mode: only \"none\" is taken",
            &json!(e),
        );
    }
    if let Some(m) = &req.prompt_mode {
        return refuse(
            "prompt_mode",
            "Mixtral has no reasoning system prompt",
            &json!(m),
        );
    }
    Ok(())
}

fn message(m: &WireMessage, at: &str) -> Result<Message, ApiError> {
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

fn content(c: &WireContent, at: &str) -> Result<Content, ApiError> {
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

fn chunk(c: &WireChunk, at: &str) -> Result<String, ApiError> {
    match (c.kind.as_str(), &c.text) {
        ("text", Some(t)) => Ok(t.clone()),
        ("text", None) => {
            Err(ApiError::bad_request(format!("{at}: a text chunk needs `text`")).with_param(at))
        }
        (other, _) => Err(ApiError::bad_request(format!(
            "{at}: content chunks of type `{other}` are not supported: Mixtral reads text only"
        ))
        .with_param(at)),
    }
}

fn tool_call(c: &WireToolCall, at: &str) -> Result<ToolCall, ApiError> {
    if let Some(kind) = c.kind.as_deref().filter(|k| *k != "function") {
        return Err(
            ApiError::bad_request(format!("{at}.type: `{kind}` is not a function call"))
                .with_param(&format!("{at}.type")),
        );
    }
    let arguments = match &c.function.arguments {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(v) => {
            return Err(ApiError::invalid_field(
                &field_loc(&format!("{at}.function.arguments")),
                "type_error",
                "expected a JSON string or object",
                Some(v),
            ))
        }
    };
    Ok(ToolCall {
        id: c.id.clone().filter(|id| id != "null"),
        name: c.function.name.clone(),
        arguments,
    })
}

fn tool(t: &WireTool, at: &str) -> Result<Tool, ApiError> {
    if let Some(kind) = t.kind.as_deref().filter(|k| *k != "function") {
        return Err(ApiError::bad_request(format!(
            "{at}.type: tools of type `{kind}` are not supported, only `function`"
        ))
        .with_param(&format!("{at}.type")));
    }
    let parameters = match &t.function.parameters {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(v) => {
            return Err(ApiError::invalid_field(
                &field_loc(&format!("{at}.function.parameters")),
                "type_error",
                "expected a JSON Schema object",
                Some(v),
            ))
        }
    };
    Ok(Tool {
        name: t.function.name.clone(),
        description: t.function.description.clone().unwrap_or_default(),
        parameters,
    })
}

/// `a[0].b` → `["a", 0, "b"]`.
fn field_loc(path: &str) -> Vec<Value> {
    let mut loc = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            loc.push(json!(&rest[..i]));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse::<u64>() {
                    loc.push(json!(n));
                }
                rest = &rest[end + 1..];
            }
        } else {
            loc.push(json!(rest));
        }
    }
    loc
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn parse(body: Value) -> Result<ParsedRequest, ApiError> {
        parse_request(body.to_string().as_bytes(), false)
    }

    #[test]
    fn sdk_shapes_parse() {
        let r = parse(json!({
            "model": "m", "stream": false, "temperature": null, "max_tokens": null,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "", "prefix": false,
                 "tool_calls": [{"id": "abcABC123", "type": "function", "index": 0,
                                 "function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "{}", "tool_call_id": "abcABC123"},
            ],
            "seed": 7, "max_completion_tokens": 5, "stream_options": {"include_usage": true},
            "user": "u", "unknown_field": 1, "stop": "x"
        }))
        .unwrap();
        assert_eq!(r.completion.seed, Some(7));
        assert_eq!(r.completion.max_tokens, Some(5));
        assert_eq!(r.completion.stop, vec!["x".to_string()]);
        assert_eq!(
            r.completion.sampling.temperature,
            DEFAULT_TEMPERATURE as f32
        );
        assert!(!r.stream);
        match &r.completion.chat.messages[1] {
            Message::Assistant { tool_calls, .. } => {
                assert_eq!(tool_calls.as_ref().unwrap()[0].arguments, r#"{"x":1}"#)
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse(json!({"model": "m", "messages": [], "temperature": "hot"})).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert_eq!(e.detail[0]["loc"], json!(["body", "temperature"]));
        assert_eq!(e.detail[0]["input"], json!("hot"));
        let e =
            parse(json!({"model": "m", "messages": [{"role": "user", "content": 5}]})).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.starts_with("messages[0]"), "{}", e.message);
        let e = parse(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
            .unwrap_err();
        assert!(e.message.contains("robot"), "{}", e.message);
        let e = parse(json!({"messages": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn ranges_are_checked() {
        for (field, value) in [
            ("temperature", json!(-1)),
            ("top_p", json!(0)),
            ("top_p", json!(1.5)),
            ("max_tokens", json!(0)),
            ("random_seed", json!(-3)),
            ("n", json!(0)),
            ("presence_penalty", json!(3)),
            ("stop", json!([""])),
            ("repetition_penalty", json!(0)),
            ("repetition_penalty", json!(-1.5)),
            ("min_tokens", json!(-1)),
        ] {
            let mut body = json!({"model": "m", "messages": []});
            body[field] = value;
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
            assert_eq!(e.param.as_deref(), Some(field));
        }
    }

    #[test]
    fn vllms_sampling_fields_are_taken() {
        let body = json!({"model": "m", "messages": [], "min_tokens": 3,
                          "repetition_penalty": 1.2, "max_tokens": 8});
        let r = parse_request(body.to_string().as_bytes(), true).unwrap();
        assert_eq!(r.completion.min_tokens, 3);
        assert!((r.completion.repetition_penalty - 1.2).abs() < 1e-6);
        // null is unset, as the SDK sends it.
        let body = json!({"model": "m", "messages": [], "min_tokens": null,
                          "repetition_penalty": null});
        let r = parse_request(body.to_string().as_bytes(), true).unwrap();
        assert_eq!(
            (r.completion.min_tokens, r.completion.repetition_penalty),
            (0, 1.0)
        );
        let e = parse(json!({"model": "m", "messages": [], "min_tokens": 9, "max_tokens": 8}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("min_tokens"));
    }

    #[test]
    fn strict_mode_refuses_unknown_fields() {
        let body = json!({"model": "m", "messages": [], "bogus": 1}).to_string();
        assert!(parse_request(body.as_bytes(), false).is_ok());
        let e = parse_request(body.as_bytes(), true).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.detail[0]["type"], "extra_forbidden");
        assert_eq!(e.detail[0]["loc"], json!(["body", "bogus"]));
    }

    #[test]
    fn malformed_json_and_unsupported_features() {
        let e = parse_request(b"{\"model\": ", false).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.detail[0]["type"], "json_invalid");
        let e = parse(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}))
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse(json!({"model": "m", "messages": [], "tool_choice": "any"})).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let r = parse(json!({"model": "m", "messages": [], "tool_choice": "none",
                             "safe_mode": true}))
        .unwrap();
        assert_eq!(r.completion.tool_choice, EngineToolChoice::None);
        assert!(matches!(&r.completion.chat.messages[0],
            Message::System { content: Some(Content::Text(t)) } if t == SAFE_PROMPT));
    }
}
