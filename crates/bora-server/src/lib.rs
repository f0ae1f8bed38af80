//! bora-server: Mistral's chat API over HTTP, so that the official `mistralai` and `openai`
//! SDKs work unchanged against a local engine. The only crate that knows the JSON wire format.
//!
//! * [`wire`]: request bodies as the SDKs send them; [`convert`]: into engine requests, with
//!   422s that name the field;
//! * [`api`]: response bodies, stream chunks and model cards; [`answer`]: an answer's engine
//!   events as those bodies; [`error`]: the error shape;
//! * [`routes`]: the axum router (`/v1/chat/completions`, `/v1/models`, `/health`,
//!   `/metrics`); [`metrics`]: Prometheus text;
//! * [`local`]: the same API in process, JSON in and out, for the Python and C bindings;
//! * `guard`: what every request meets before its route (bodies read within their limit and
//!   time, error answers always the API's error object, the Host and Origin checks);
//! * [`listen`]: the accept loop ([`serve`]): hyper with header timeouts, a connection cap and a
//!   bounded drain at shutdown.

pub mod answer;
pub mod api;
pub mod convert;
pub mod error;
mod guard;
pub mod kv_events;
pub mod listen;
pub mod local;
pub mod metrics;
mod page;
pub mod routes;
pub mod wire;

pub use convert::{parse_chat_request, parse_request, ParsedRequest, WireError};
pub use error::ApiError;
pub use listen::{serve, serve_with};
pub use routes::{router, router_with, AppState, ServerConfig};

/// The name a model is served under by default: the cloud's name for the two Mixtral shapes
/// (so that scripts written for the cloud run as they are), else `fallback` (the directory's
/// or the repo's name).
pub fn default_model_name(cfg: &bora_core::ModelConfig, fallback: &str) -> String {
    match (
        cfg.num_local_experts,
        cfg.hidden_size,
        cfg.num_hidden_layers,
    ) {
        (8, 4096, 32) => "open-mixtral-8x7b".into(),
        (8, 6144, 56) => "open-mixtral-8x22b".into(),
        _ => fallback.to_string(),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
