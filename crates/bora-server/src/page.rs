//! The page at `/`: a chat box that streams from the model and a live view of the expert load
//! per layer, one file with no external assets (it works offline); and `/stats`, the engine's
//! state as JSON, which the page polls.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::routes::AppState;

static PAGE: &str = include_str!("page.html");

/// `GET /`: the page.
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /stats`: the model's name and context, and the engine's state: sequences running and waiting, KV
/// blocks, steps, and the tokens routed to each expert of each layer since the start.
pub async fn stats(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let engine = st.engine()?;
    let s = engine.stats();
    Ok(Json(json!({
        "model": st.config().model_name,
        "context": engine.context(),
        "running": s.running,
        "waiting": s.waiting,
        "blocks_used": s.blocks_used,
        "blocks_total": s.blocks_total,
        "steps": s.steps,
        "expert_tokens": s.expert_tokens,
    })))
}
