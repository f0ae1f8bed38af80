//! The HTTP routes, on axum: chat completions (JSON or SSE), models, health and metrics.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bora_engine::chat::ChatFormat;
use bora_engine::{CompletionStream, Engine, Event};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::answer::{unix_now, AnswerMeta, Chunks, Whole};
use crate::api::ModelCard;
use crate::convert::{parse_request, ParsedRequest, DEFAULT_TEMPERATURE};
use crate::error::ApiError;
use crate::guard::{body_guard, buffered, cors_layer, json_errors, origin_guard};
use crate::metrics::Metrics;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name the model answers to (`model` in requests, `id` in `/v1/models`).
    pub model_name: String,
    /// What `/v1/models` says the model is.
    pub description: String,
    /// When set, `/v1/*` requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Refuse unknown request fields with 422, as Mistral's cloud does.
    pub strict_api: bool,
    /// Request bodies over this many bytes get 413.
    pub body_limit: usize,
    /// Uploads (`POST /v1/files`) may be this large (at least `body_limit`).
    pub upload_limit: usize,
    /// When set, only requests whose `Host` is a loopback name or listed here (`*`: any) are
    /// served; others get 403 (DNS rebinding). `None`: any host.
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins that may call the API across origins (`*`: any); other cross-origin
    /// requests get 403.
    pub allowed_origins: Vec<String>,
    /// A request body must arrive within this time, plus a second for each MiB it may hold
    /// (408 otherwise).
    pub body_timeout: Duration,
    /// An SSE comment goes out after this long without an event (a long prompt being read).
    pub keep_alive: Duration,
    /// A request head (line and headers) must arrive within this time; the connection is
    /// closed otherwise.
    pub header_timeout: Duration,
    /// Request heads over this many bytes get 431.
    pub max_header_bytes: usize,
    /// Connections served at once at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// At shutdown, requests in flight get this long to finish.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// Defaults for a model called `model_name`.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            description: String::new(),
            api_key: None,
            strict_api: false,
            body_limit: 16 << 20,
            upload_limit: 16 << 20,
            allowed_hosts: None,
            allowed_origins: Vec::new(),
            body_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            max_connections: 256,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share: the settings, the engine once it is loaded, the metrics.
pub struct AppState {
    config: ServerConfig,
    engine: OnceLock<Engine>,
    metrics: Metrics,
    created: u64,
}

impl AppState {
    /// A server with no engine yet: everything but `/health` and `/metrics` answers 503 until
    /// [`AppState::set_engine`].
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            engine: OnceLock::new(),
            metrics: Metrics::new(),
            created: unix_now(),
        })
    }

    /// A server on a loaded engine.
    pub fn with_engine(config: ServerConfig, engine: Engine) -> Arc<Self> {
        let state = Self::new(config);
        state.set_engine(engine);
        state
    }

    /// The model is loaded: start answering.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or 503 while it loads.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(ApiError::loading)
    }

    /// The server's settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    fn card(&self, engine: &Engine) -> ModelCard {
        ModelCard {
            id: self.config.model_name.clone(),
            created: self.created,
            description: self.config.description.clone(),
            function_calling: engine.chat_format() == ChatFormat::V3,
            max_context_length: engine.context(),
            default_temperature: DEFAULT_TEMPERATURE,
        }
    }
}

/// The whole API.
pub fn router(state: Arc<AppState>) -> Router {
    router_with(state, Router::new())
}

/// [`router`] with more `/v1` routes (files and batch jobs, say), which get the same key check,
/// limits and counting.
pub fn router_with(state: Arc<AppState>, more_v1: Router) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/chat/completions/render", post(render_chat))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .with_state(state.clone())
        .merge(more_v1)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let app = Router::new()
        .route("/", get(crate::page::index))
        .route("/stats", get(crate::page::stats))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/get_load", get(get_load))
        .with_state(state.clone())
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), body_guard));
    // CORS headers only where some origin is let in.
    let app = if state.config.allowed_origins.is_empty() {
        app
    } else {
        app.layer(cors_layer(&state.config.allowed_origins))
    };
    app.layer(middleware::from_fn_with_state(state.clone(), origin_guard))
        .layer(middleware::from_fn_with_state(state.clone(), head_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state, count))
}

/// 431 for a request head over the limit: the request line and every header counted.
async fn head_limit(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = st.config.max_header_bytes;
    let size = req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > limit {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            format!("the request's headers take {size} bytes, over the limit of {limit}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts every answer by status.
async fn count(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    st.metrics.request(resp.status().as_u16());
    resp
}

/// Checks the bearer token when a key is configured.
async fn auth(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &st.config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match given {
            None => return ApiError::unauthorized("missing bearer token").into_response(),
            Some(g) if !bool::from(g.as_bytes().ct_eq(key.as_bytes())) => {
                return ApiError::unauthorized("invalid API key").into_response()
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is case-insensitive
/// (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.engine() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => {
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "loading"})),
            )
                .into_response();
            if let Some(secs) = e.retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            resp
        }
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let stats = st.engine.get().map(|e| e.stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(stats.as_ref()),
    )
        .into_response()
}

/// The load vllm-router's `power_of_two` policy polls: requests running and waiting (`load`, their
/// sum), and the KV cache's blocks held as a fraction of all; 503 while the model loads.
async fn get_load(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let s = st.engine()?.stats();
    let total = s.blocks_used + s.blocks_free;
    let kv = if total == 0 {
        0.0
    } else {
        s.blocks_used as f64 / total as f64
    };
    Ok(Json(json!({
        "load": s.running + s.waiting,
        "num_requests_running": s.running,
        "num_requests_waiting": s.waiting,
        "kv_cache_usage_perc": kv,
    }))
    .into_response())
}

async fn models(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let engine = st.engine()?;
    Ok(Json(json!({"object": "list", "data": [st.card(engine).to_json()]})).into_response())
}

async fn model(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let engine = st.engine()?;
    if id != st.config.model_name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_model",
            format!("Model not found: {id}"),
        ));
    }
    Ok(Json(st.card(engine).to_json()).into_response())
}

async fn chat(State(st): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let bytes = buffered(body).await?;
    let ParsedRequest {
        model,
        stream,
        completion,
    } = parse_request(&bytes, st.config.strict_api)?;
    let engine = st.engine()?.clone();
    if model != st.config.model_name {
        return Err(ApiError::invalid_model(&model));
    }
    let meta = AnswerMeta::new(&model, &completion);
    // Rendering and tokenizing a long conversation is CPU work: off the async workers.
    let events = off_workers(move || engine.chat(&completion)).await??;
    let reply = Reply {
        meta,
        arrived,
        last_token: None,
    };
    if stream {
        Ok(reply.stream(st, events))
    } else {
        Ok(reply.whole(&st, events).await.into_response())
    }
}

/// Runs `f` (CPU work: rendering and tokenizing a long conversation) off the async workers.
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("request task failed: {e}"),
        )
    })
}

/// `POST /v1/chat/completions/render`, as vLLM serves it: the prompt's token ids as bora renders
/// a chat request (`token_ids`), nothing run. KV-aware routers (vllm-router's `kv_aware`) ask a
/// worker for them to find which replica's cache holds the longest prefix.
async fn render_chat(State(st): State<Arc<AppState>>, body: Body) -> Result<Json<Value>, ApiError> {
    let bytes = buffered(body).await?;
    let ParsedRequest {
        model, completion, ..
    } = parse_request(&bytes, st.config.strict_api)?;
    let engine = st.engine()?.clone();
    if model != st.config.model_name {
        return Err(ApiError::invalid_model(&model));
    }
    // Checked as the chat route checks it (context, settings, schemas), nothing run.
    let ids = off_workers(move || engine.prompt(&completion)).await??;
    Ok(Json(
        json!({"model": model, "token_ids": ids, "features": null}),
    ))
}

/// `v` as one line of JSON for an SSE `data:` field, with the characters that some line
/// splitters take for line ends (NEL, U+2028, U+2029; Python's `str.splitlines` among them)
/// written as escapes, so that a generated text holding them cannot cut an event in two. JSON
/// reads the escapes as the same characters.
fn sse_json(v: &Value) -> String {
    let s = v.to_string();
    if !s.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        return s;
    }
    s.replace('\u{85}', "\\u0085")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// One request's answer as it is timed and sent.
struct Reply {
    meta: AnswerMeta,
    arrived: Instant,
    last_token: Option<Instant>,
}

impl Reply {
    /// Times text as it comes: the first token, then the gaps between tokens.
    fn timed(&mut self, metrics: &Metrics) {
        let now = Instant::now();
        match self.last_token {
            None => metrics.first_token(now - self.arrived),
            Some(t) => metrics.inter_token(now - t),
        }
        self.last_token = Some(now);
    }

    /// Waits for the whole answer.
    async fn whole(mut self, st: &AppState, mut events: CompletionStream) -> Json<Value> {
        let mut whole = Whole::new(self.meta.clone());
        loop {
            let e = events.next().await;
            if matches!(e, Some(Event::Delta { .. } | Event::ToolCalls { .. })) {
                self.timed(&st.metrics);
            }
            if whole.on(e) {
                break;
            }
        }
        if let Some(message) = whole.error() {
            tracing::error!(id = %self.meta.id, "generation failed: {message}");
        }
        let usage = whole.usage();
        st.metrics
            .tokens(usage.prompt_tokens, usage.completion_tokens);
        Json(whole.json())
    }

    /// Answers with server-sent events, fed by a task that follows the engine's events. A
    /// client that goes away closes the channel; the task then drops the engine stream, which
    /// cancels the generation.
    fn stream(self, st: Arc<AppState>, events: CompletionStream) -> Response {
        let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
        let keep_alive = st.config.keep_alive;
        tokio::spawn(self.follow(st, events, tx));
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
        });
        Sse::new(body)
            .keep_alive(KeepAlive::new().interval(keep_alive))
            .into_response()
    }

    async fn follow(
        mut self,
        st: Arc<AppState>,
        mut events: CompletionStream,
        tx: tokio::sync::mpsc::Sender<SseEvent>,
    ) {
        let mut chunks = Chunks::new(self.meta.clone());
        let data = |c: &Value| SseEvent::default().data(sse_json(c));
        let mut out: Vec<SseEvent> = chunks.start().iter().map(data).collect();
        loop {
            for e in out.drain(..) {
                if tx.send(e).await.is_err() {
                    return; // the client left: dropping `events` cancels the request
                }
            }
            if chunks.ended() {
                let _ = tx.send(SseEvent::default().data("[DONE]")).await;
                return;
            }
            let event = tokio::select! {
                e = events.next() => e,
                _ = tx.closed() => return,
            };
            match &event {
                Some(Event::Delta { .. } | Event::ToolCalls { .. }) => self.timed(&st.metrics),
                Some(Event::Done { usage }) => st
                    .metrics
                    .tokens(usage.prompt_tokens, usage.completion_tokens),
                Some(Event::Error { message }) => {
                    tracing::error!(id = %self.meta.id, "generation failed: {message}")
                }
                None => tracing::error!(id = %self.meta.id, "the engine stopped mid-request"),
                Some(
                    Event::Finish { .. } | Event::Logprobs { .. } | Event::PromptLogprobs { .. },
                ) => {}
            }
            out.extend(chunks.on(event.as_ref()).iter().map(data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_engine::chat::ToolCall;
    use bora_engine::{FinishReason, Usage};

    fn reply(n: usize) -> Reply {
        Reply {
            meta: AnswerMeta {
                id: "cmpl-test".into(),
                created: 1,
                model: "m".into(),
                n,
                logprobs: false,
                prompt_logprobs: false,
            },
            arrived: Instant::now(),
            last_token: None,
        }
    }

    /// The chunks of an SSE body (`[DONE]` as a string).
    async fn chunks(resp: Response) -> Vec<Value> {
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        chunks_of(std::str::from_utf8(&body).unwrap())
    }

    fn chunks_of(body: &str) -> Vec<Value> {
        body.split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.into())))
            .collect()
    }

    /// Issue 16, found by the soak: a generated U+2028 split a chunk for a client that splits
    /// lines as Python does; such characters go out escaped, and read back the same.
    #[tokio::test]
    async fn line_separators_in_text_are_escaped_in_events() {
        let state = AppState::new(ServerConfig::new("m"));
        let (tx, events) = CompletionStream::channel();
        let text = "a\u{2028}b\u{2029}c\u{85}d\ne";
        tx.send(Event::Delta {
            choice: 0,
            text: text.into(),
        })
        .unwrap();
        tx.send(Event::Finish {
            choice: 0,
            reason: FinishReason::Stop,
        })
        .unwrap();
        drop(tx);
        let body = axum::body::to_bytes(reply(1).stream(state, events).into_body(), 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            !body.contains(['\u{85}', '\u{2028}', '\u{2029}']),
            "{body:?}"
        );
        let c = chunks_of(&body);
        assert_eq!(c[1]["choices"][0]["delta"]["content"], text);
    }

    #[tokio::test]
    async fn an_error_mid_stream_ends_it_with_finish_reason_error() {
        let state = AppState::new(ServerConfig::new("m"));
        let (tx, events) = CompletionStream::channel();
        tx.send(Event::Delta {
            choice: 0,
            text: "Hel".into(),
        })
        .unwrap();
        tx.send(Event::Finish {
            choice: 1,
            reason: FinishReason::Stop,
        })
        .unwrap();
        tx.send(Event::Error {
            message: "boom".into(),
        })
        .unwrap();
        let c = chunks(reply(2).stream(state, events)).await;
        // Two role chunks, the delta, choice 1's finish, choice 0 ended by the error, [DONE].
        assert_eq!(c.len(), 6, "{c:?}");
        assert_eq!(c[2]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(c[3]["choices"][0]["index"], 1);
        assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(c[4]["choices"][0]["index"], 0);
        assert_eq!(c[4]["choices"][0]["finish_reason"], "error");
        assert_eq!(c[5], "[DONE]");
    }

    #[tokio::test]
    async fn tool_calls_arrive_whole_with_the_finish_and_usage() {
        let state = AppState::new(ServerConfig::new("m"));
        let (tx, events) = CompletionStream::channel();
        let call = |name: &str| ToolCall {
            id: Some("abcABC123".into()),
            name: name.into(),
            arguments: "{\"a\": 1}".into(),
        };
        tx.send(Event::ToolCalls {
            choice: 0,
            calls: vec![call("f"), call("g")],
        })
        .unwrap();
        tx.send(Event::Finish {
            choice: 0,
            reason: FinishReason::ToolCalls,
        })
        .unwrap();
        tx.send(Event::Done {
            usage: Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                ..Usage::default()
            },
        })
        .unwrap();
        let c = chunks(reply(1).stream(state, events)).await;
        assert_eq!(c.len(), 3, "{c:?}");
        let last = &c[1];
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        // Every call the engine reports (parallel_tool_calls is the engine's to apply);
        // arguments stay a JSON string.
        let calls = last["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1]["function"]["name"], "g");
        assert_eq!(calls[0]["function"]["arguments"], "{\"a\": 1}");
        assert_eq!(calls[0]["id"], "abcABC123");
        assert_eq!(last["usage"]["total_tokens"], 12);
        assert_eq!(c[2], "[DONE]");
    }
}
