//! The rules every request meets before its route, in one place for every route (the chat
//! API's and those added with [`crate::router_with`], files and batch jobs among them):
//!
//! * [`body_guard`]: a body is read whole before the route sees it. A declared `Content-Length`
//!   over the route's limit is 413 at once; a body that does not arrive in time is 408 (within
//!   [`crate::ServerConfig::body_timeout`], plus a second for each MiB it may hold, so that a
//!   large upload on a slow link still gets in and a stalled one lets its connection go).
//! * [`json_errors`]: every error answer is the API's error object; what a route, an extractor
//!   or axum itself answered in plain text (or with no body) is rewritten, its status kept.
//! * [`origin_guard`]: what keeps web pages off a local server. With
//!   [`crate::ServerConfig::allowed_hosts`] set (the CLI sets it on a loopback bind), a `Host`
//!   that is not a loopback name or listed is 403, so that a page whose DNS name was rebound to
//!   127.0.0.1 cannot read the API. A browser's cross-origin request (an `Origin` that is not
//!   the server's own) is 403 unless [`crate::ServerConfig::allowed_origins`] lists it, so that
//!   a page cannot post forms or uploads to it either (CSRF); for listed origins
//!   [`cors_layer`] (tower-http) answers preflights and adds the CORS headers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::routes::AppState;

/// The route that takes uploads (multipart files), whose limit is
/// [`crate::ServerConfig::upload_limit`].
const UPLOAD_PATH: &str = "/v1/files";

/// The most of an error body that [`json_errors`] reads to quote it.
const QUOTED_ERROR_BYTES: usize = 16 << 10;

/// The body limit of a request to `path` with `method`, and the `bora serve` flag that sets it.
fn limit_for(st: &AppState, method: &Method, path: &str) -> (usize, &'static str) {
    let config = st.config();
    if method == Method::POST && path.trim_end_matches('/') == UPLOAD_PATH {
        (
            config.upload_limit.max(config.body_limit),
            "--max-upload-mib",
        )
    } else {
        (config.body_limit, "--max-body-mib")
    }
}

/// The `Content-Length` a request declares, if it is a number.
fn declared_length(headers: &HeaderMap) -> Option<u128> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u128>().ok())
}

/// 413 for a body declared `n` bytes long.
fn too_large(n: u128, limit: usize, flag: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!("the request body is {n} bytes, over the limit of {limit} bytes ({flag})"),
    )
}

/// How long a body of at most `bytes` bytes may take to arrive.
fn body_time(base: Duration, bytes: u128) -> Duration {
    base + Duration::from_secs(u64::try_from(bytes >> 20).unwrap_or(u64::MAX / 2))
}

/// Reads a body of at most `limit` bytes within `timeout`.
async fn read_body(
    body: Body,
    (limit, flag): (usize, &str),
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes.to_vec()),
        Ok(Err(e)) => {
            let too_big =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.to_string().contains("length limit"));
            Err(if too_big {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    format!("the request body is over the limit of {limit} bytes ({flag})"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            })
        }
    }
}

/// Reads the body whole within its limit and time (see the module docs), then hands the
/// request on with the bytes read.
pub(crate) async fn body_guard(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let (limit, flag) = limit_for(&st, req.method(), req.uri().path());
    let (parts, body) = req.into_parts();
    let declared = declared_length(&parts.headers);
    if let Some(n) = declared.filter(|&n| n > limit as u128) {
        return too_large(n, limit, flag).into_response();
    }
    let time = body_time(st.config().body_timeout, declared.unwrap_or(limit as u128));
    match read_body(body, (limit, flag), time).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// The body of a request that [`body_guard`] let through: already in memory and within its
/// limit.
pub(crate) async fn buffered(body: Body) -> Result<Vec<u8>, ApiError> {
    axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))
}

/// Rewrites an error answer that is not JSON into the API's error object (see the module docs).
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, QUOTED_ERROR_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNAUTHORIZED => "authentication_error",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request_error",
    };
    let mut out = ApiError::new(status, kind, message).into_response();
    // What the answer said besides its body (Allow on 405, Retry-After) stays.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Whether `host` (a `Host` header's value, with or without its port) names this machine's
/// loopback: `localhost` (and `*.localhost`, RFC 6761), 127.0.0.0/8, `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A `Host` value without its port, lower-cased.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

/// Whether `host` is served under `allowed` (loopback names always; `*` anything).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    is_loopback_host(host)
        || allowed
            .iter()
            .any(|a| a == "*" || host_name(a) == host_name(host))
}

/// The request's host: its `Host` header, or the URI's authority (HTTP/2).
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// Whether `origin` (`scheme://host[:port]`) is the server's own, reached as `host`.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false; // `null` and the like: a sandboxed page or a file
    };
    host.is_some_and(|h| rest.trim_end_matches('/').eq_ignore_ascii_case(h.trim()))
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

/// The Host and Origin checks (see the module docs).
pub(crate) async fn origin_guard(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let config = st.config();
    let host = request_host(&req);
    if let (Some(allowed), Some(h)) = (&config.allowed_hosts, &host) {
        if !host_allowed(h, allowed) {
            return forbidden(format!(
                "the Host {h:?} is not served here: a local server answers loopback names \
                 only, and those given to --allowed-hosts"
            ));
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let listed = config
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(&origin));
        if !listed && !same_origin(&origin, host.as_deref()) {
            return forbidden(format!(
                "cross-origin requests from {origin:?} are refused: a browser page may call this \
                 server only from an origin given to --allowed-origins"
            ));
        }
    }
    next.run(req).await
}

/// CORS for the origins [`crate::ServerConfig::allowed_origins`] lists: preflights answered,
/// the headers added to their answers (any method and request header; the key travels in
/// `Authorization`, not in cookies).
pub(crate) fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let layer = CorsLayer::new()
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(Any);
    }
    let list: Vec<axum::http::HeaderValue> = origins
        .iter()
        .filter_map(|o| o.trim_end_matches('/').parse().ok())
        .collect();
    layer.allow_origin(AllowOrigin::list(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "a.localhost",
            "127.0.0.1",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(host_allowed(h, &[]), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1",
            "localhost.evil.example",
            "[::2]",
        ] {
            assert!(!host_allowed(h, &[]), "{h}");
        }
        let listed = ["bora.lan".to_string()];
        assert!(host_allowed("bora.lan:8080", &listed));
        assert!(host_allowed("anything", &["*".to_string()]));
        assert!(same_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(!same_origin("http://evil.example", Some("127.0.0.1:8080")));
        assert!(!same_origin("null", Some("127.0.0.1:8080")));
        assert!(!same_origin("http://127.0.0.1:8080", None));
    }

    #[test]
    fn a_large_body_gets_a_second_for_each_mib() {
        let base = Duration::from_secs(30);
        assert_eq!(body_time(base, 100), base);
        assert_eq!(body_time(base, 3 << 20), Duration::from_secs(33));
        assert!(body_time(base, u128::MAX) > Duration::from_secs(1 << 40));
    }
}
