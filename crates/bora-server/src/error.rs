//! Errors in the API's shape: `{"object": "error", "message", "type", "param", "code"}`, with a
//! `detail` list on 422 (what the `mistralai` SDK parses into `HTTPValidationError`), always as
//! `application/json`. Deterministic failures are 4xx, never 5xx, which the openai SDK retries.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bora_engine::EngineError;
use serde_json::{json, Value};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The error's `type`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Pydantic-style entries (`type`, `loc`, `msg`, `input`), sent on 422.
    pub detail: Vec<Value>,
    /// Seconds, on 429 and 503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with this status, type and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            detail: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 422 for the field at `loc` (after `body`): `kind` is the pydantic error type.
    pub fn invalid_field(loc: &[Value], kind: &str, msg: &str, input: Option<&Value>) -> Self {
        let mut full = vec![json!("body")];
        full.extend_from_slice(loc);
        let param = field_name(loc);
        let mut entry = json!({"type": kind, "loc": full, "msg": msg});
        if let Some(input) = input {
            entry["input"] = input.clone();
        }
        Self {
            param: (!param.is_empty()).then(|| param.clone()),
            detail: vec![entry],
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                if param.is_empty() {
                    msg.to_string()
                } else {
                    format!("{param}: {msg}")
                },
            )
        }
    }

    /// 503 while the model loads.
    pub fn loading() -> Self {
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the model is still loading; retry shortly",
            )
        }
    }

    /// 401.
    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    /// 404 for an unknown route.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// With `param`.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// 500 `internal_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// A request for a model that is not the one served (Mistral's 400, code 1500).
    pub fn invalid_model(model: &str) -> Self {
        Self {
            code: Some("1500"),
            param: Some("model".into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_model",
                format!("Invalid model: {model}"),
            )
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "object": "error",
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        });
        if !self.detail.is_empty() {
            body["detail"] = Value::Array(self.detail.clone());
        }
        body
    }
}

/// `a.b[0].c` from a loc list.
fn field_name(loc: &[Value]) -> String {
    let mut out = String::new();
    for part in loc {
        match part {
            Value::Number(n) => out.push_str(&format!("[{n}]")),
            Value::String(s) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(s);
            }
            _ => {}
        }
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Chat(c) => ApiError::bad_request(c.to_string()),
            EngineError::EmptyPrompt
            | EngineError::PromptTooLong { .. }
            | EngineError::ContextExceeded { .. } => {
                ApiError::bad_request(message).with_param("messages")
            }
            EngineError::Tokenizer(_) => ApiError::bad_request(message),
            // A schema or tool choice the constraint engine cannot enforce.
            EngineError::Constraint(_) => {
                ApiError::bad_request(message).with_param("response_format")
            }
            EngineError::Sampling { name, reason } => {
                ApiError::invalid_field(&[json!(name)], "value_error", &reason, None)
            }
            EngineError::Overloaded { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            EngineError::Config(_) => ApiError {
                retry_after: Some(5),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    message,
                )
            },
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message),
        }
    }
}
