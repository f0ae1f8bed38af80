//! The accept loop: connections served by hyper with the limits a client cannot get around.
//!
//! * A request head must arrive within [`crate::ServerConfig::header_timeout`] and fit in
//!   [`HEAD_BUFFER`] bytes (hyper answers 431 past that; heads over
//!   [`crate::ServerConfig::max_header_bytes`] get bora's JSON 431 from the router).
//! * At most [`crate::ServerConfig::max_connections`] connections are served at once; one more is
//!   answered 503 with a JSON error and closed, and the server goes on accepting.
//! * What hyper answers by itself, before any route runs, to a request it cannot parse (400, a
//!   URI over its 64 KiB: 414, a head over [`HEAD_BUFFER`]: 431) goes out as the API's error
//!   object too (`JsonParseErrors`).
//! * On shutdown the listener closes, idle connections close, requests in flight (streams
//!   included) get [`crate::ServerConfig::drain_timeout`] to finish; a second signal, or the end of
//!   that time, stops the rest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::routes::AppState;

/// hyper's read buffer, the largest request head it parses (it answers 431 with no body past
/// it).
pub const HEAD_BUFFER: usize = 1 << 20;

/// Refusals being written at once at most; past it a connection is closed unanswered.
const MAX_REFUSING: usize = 64;

/// Serves the API on `listener` until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, axum::Router::new(), shutdown).await
}

/// [`serve`] with more `/v1` routes (see [`crate::router_with`]).
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<AppState>,
    more_v1: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = state.config().clone();
    let app = crate::router_with(state, more_v1);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(HEAD_BUFFER);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin, and go on.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                let max = config.max_connections;
                tokio::spawn(async move {
                    refuse(stream, max).await;
                    drop(permit);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(JsonParseErrors::new(stream)),
                TowerToHyperService::new(app.clone()),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!(
                "connections still open {} s after shutdown began: closing them",
                config.drain_timeout.as_secs()
            );
        }
        _ = crate::shutdown_signal() => {
            tracing::warn!("a second signal: closing the open connections now");
        }
    }
    Ok(())
}

/// Answers a connection over the cap with 503 and closes it. What the client sent is read
/// first (briefly), so that closing does not reset the connection before it reads the answer.
async fn refuse(mut stream: TcpStream, max: usize) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    let body = ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            format!("the server is serving its maximum of {max} connections; retry shortly"),
        )
    }
    .body()
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// A connection whose bodiless error answers, which only hyper itself writes (every answer of
/// bora's routes has a body: see `guard::json_errors`), are rewritten into the API's error
/// object. hyper writes such an answer as one buffer (this type writes no vectors) when it
/// cannot parse a request, and closes the connection after it.
struct JsonParseErrors {
    inner: TcpStream,
    /// What is still to be written of a rewritten answer.
    pending: Vec<u8>,
}

impl JsonParseErrors {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }

    /// Writes what is pending; ready once all of it is written.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The API's error answer for `head`, when it is an error answer with an empty body.
fn json_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let empty = lines
        .clone()
        .any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if code < 400 || !empty || end + 4 != head.len() {
        return None;
    }
    let status = axum::http::StatusCode::from_u16(code).ok()?;
    let message = match code {
        414 => "the request's URI is too long: hyper takes at most 65534 bytes".to_string(),
        431 => format!("the request's headers are over the limit of {HEAD_BUFFER} bytes"),
        _ => format!(
            "the request could not be parsed as HTTP/1.1 ({})",
            status.canonical_reason().unwrap_or("bad request")
        ),
    };
    let body = ApiError::new(status, "invalid_request_error", message)
        .body()
        .to_string();
    let mut out = format!("{status_line}\r\n");
    for l in lines.filter(|l| {
        let l = l.to_ascii_lowercase();
        !l.starts_with("content-length:") && !l.starts_with("content-type:")
    }) {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

impl AsyncRead for JsonParseErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonParseErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.1 5") {
            if let Some(answer) = json_parse_error(buf) {
                self.pending = answer;
                // Consumed whole; what the socket does not take now goes at the next write,
                // flush or shutdown.
                let _ = self.drain(cx);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_errors_are_rewritten() {
        let head = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(json_parse_error(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{h}");
        assert!(h.contains("connection: close") && h.contains("content-type: application/json"));
        assert!(
            h.contains(&format!("content-length: {}", body.len())),
            "{h}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["object"], "error");
        assert!(v["message"].as_str().unwrap().contains("URI is too long"));
        // An answer with a body, a success, or a head with more after it: left alone.
        assert!(
            json_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_none()
        );
        assert!(json_parse_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            json_parse_error(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\nHTTP/1.1")
                .is_none()
        );
    }
}
