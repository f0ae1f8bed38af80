//! The accept loop: connections served by hyper with the limits a client cannot get around.
//!
//! * A request head must arrive within [`crate::ServerConfig::header_timeout`] and fit in
//!   [`HEAD_BUFFER`] bytes (hyper answers 431 past that; heads over
//!   [`crate::ServerConfig::max_header_bytes`] get bora's JSON 431 from the router).
//! * At most [`crate::ServerConfig::max_connections`] connections are served at once; one more is
//!   answered 503 with a JSON error and closed, and the server goes on accepting.
//! * On shutdown the listener closes, idle connections close, requests in flight (streams
//!   included) get [`crate::ServerConfig::drain_timeout`] to finish; a second signal, or the end of
//!   that time, stops the rest.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
                TokioIo::new(stream),
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
