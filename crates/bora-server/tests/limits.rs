//! Clients that do not play by the rules, against a real server on 127.0.0.1 (issue 16, items
//! 1, 3, 6 and 8): heads sent slowly or never finished, too many connections, oversized heads
//! and declared bodies, hostile schemas; shutdown with such clients connected.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bora_engine::{Engine, EngineConfig, ModelOptions, ModelSource};
use bora_server::{AppState, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const MODEL: &str = "tiny-mixtral";

fn engine(source: ModelSource) -> Engine {
    Engine::load(&source, &ModelOptions::default(), EngineConfig::default())
        .expect("the model loads")
}

fn tiny() -> ModelSource {
    ModelSource::Dir(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/tiny-mixtral"),
    )
}

/// A running server: its address, the way to stop it, and its task.
struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(config: ServerConfig) -> Server {
    start_on(config, tiny()).await
}

async fn start_on(config: ServerConfig, source: ModelSource) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = AppState::with_engine(config, engine(source));
    let task = tokio::spawn(bora_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

fn config() -> ServerConfig {
    ServerConfig::new(MODEL)
}

/// Sends `bytes` on a fresh connection and reads the answer until the server closes it (or 10 s
/// pass): the status and the body.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn error_json(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["object"], "error", "{v}");
    v
}

/// Item 3: a head that is never finished is dropped after the header timeout, and does not
/// hold shutdown; nor does a client trickling a byte at a time.
#[tokio::test]
async fn unfinished_heads_are_dropped_and_do_not_block_shutdown() {
    let mut c = config();
    c.header_timeout = Duration::from_secs(1);
    let mut server = start(c).await;
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    // A trickle: one byte every 300 ms never completes a head within the timeout.
    let addr = server.addr;
    let trickle = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        (started.elapsed(), out)
    });
    let started = Instant::now();
    let mut out = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut out))
        .await
        .expect("the half-sent head is dropped within the header timeout");
    assert!(n.is_err() || out.is_empty() || String::from_utf8_lossy(&out).contains("408"));
    assert!(started.elapsed() < Duration::from_secs(4));
    let (took, answered) = trickle.await.unwrap();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!String::from_utf8_lossy(&answered).contains("200 OK"));

    // Shutdown with a half-sent head open: the server stops within the header timeout.
    let mut again = TcpStream::connect(server.addr).await.unwrap();
    again
        .write_all(b"GET /health HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(again);
}

/// Item 3: at the connection cap, one more connection gets a JSON 503 and the server goes on.
#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_server_recovers() {
    let mut c = config();
    c.max_connections = 2;
    let server = start(c).await;
    let a = TcpStream::connect(server.addr).await.unwrap();
    let b = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = raw(server.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 503, "{body}");
    let e = error_json(&body);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 2 connections"),
        "{e}"
    );
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = raw(
        server.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Item 8: a declared body over the limit is refused at once (not after the body timeout); a
/// head over the limit gets a JSON 431; the bearer scheme is case-insensitive.
#[tokio::test]
async fn oversized_heads_and_bodies_and_the_bearer_scheme() {
    let mut c = config();
    c.api_key = Some("k3y".into());
    let server = start(c).await;
    let started = Instant::now();
    let (status, body) = raw(
        server.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\n\
          Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{",
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(error_json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("99999999999"));
    assert!(started.elapsed() < Duration::from_secs(5));

    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200_000)
    );
    let (status, body) = raw(server.addr, big.as_bytes()).await;
    assert_eq!(status, 431, "{body}");
    assert!(error_json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("over the limit"));

    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} k3y\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw(server.addr, r.as_bytes()).await;
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, _) = raw(
        server.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Basic k3y\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
}

/// Items 1 and 6 over HTTP: hostile and unsatisfiable schemas, in `response_format` and in a
/// tool's parameters, are 400s that say why, and the server goes on answering.
#[tokio::test]
async fn hostile_schemas_are_400s() {
    // The demo's context holds a tool's schema in the prompt (the fixture's 128 tokens do not).
    let server = start_on(config(), ModelSource::Demo).await;
    let url = format!("http://{}/v1/chat/completions", server.addr);
    let c = reqwest::Client::new();
    let schemas = [
        (json!({"enum": [-9223372036854775808i64]}), "2^53"),
        (json!({"$ref": "#"}), "no finite JSON value"),
        (
            json!({"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}}, "$ref": "#/$defs/n"}),
            "no finite JSON value",
        ),
    ];
    for (schema, why) in schemas {
        let bodies = [
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}], "tool_choice": "any"}),
        ];
        for extra in bodies {
            let mut body = json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8,
            });
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let r = c.post(&url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 400, "{body}");
            let e: Value = r.json().await.unwrap();
            assert!(e["message"].as_str().unwrap().contains(why), "{e}");
        }
    }
    let ok = c
        .post(&url)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// A server with two routes added as the batch routes are (`/v1/files` takes a form's bytes,
/// `/v1/batch/jobs` a JSON body, `/v1/files/{id}` a path), on a 1 s body timeout and 6
/// connections at most.
async fn start_with_added_routes() -> Server {
    use axum::routing::{get, post};
    let more = axum::Router::new()
        .route(
            "/v1/files",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/v1/files/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<String>| async move { id }),
        )
        .route(
            "/v1/batch/jobs",
            post(|axum::Json(v): axum::Json<Value>| async move { axum::Json(v) }),
        );
    let mut c = config();
    c.body_timeout = Duration::from_secs(1);
    c.max_connections = 6;
    c.upload_limit = 8 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = AppState::with_engine(c, engine(tiny()));
    let task = tokio::spawn(bora_server::serve_with(listener, state, more, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

/// Issue 36, 4.1: on every route that reads a body, added ones included, a declared length over
/// the limit is 413 at once and a body that never comes is 408 within the body timeout (plus a
/// second a MiB), so stalled uploads cannot hold the connection cap.
#[tokio::test]
async fn stalled_bodies_on_every_route_get_408_and_declared_giants_413() {
    let server = start_with_added_routes().await;
    let head = |path: &str, len: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\n\r\n"
        )
    };
    for path in ["/v1/files", "/v1/batch/jobs", "/v1/chat/completions"] {
        let started = Instant::now();
        let (status, body) = raw(server.addr, head(path, "99999999999").as_bytes()).await;
        assert_eq!(status, 413, "{path}: {body}");
        error_json(&body);
        assert!(started.elapsed() < Duration::from_secs(1), "{path}");
        for (len, within) in [("100", 3), ("3145728", 6)] {
            let started = Instant::now();
            let (status, body) = raw(server.addr, head(path, len).as_bytes()).await;
            assert_eq!(status, 408, "{path} {len}: {body}");
            assert!(error_json(&body)["message"]
                .as_str()
                .unwrap()
                .contains("did not arrive"));
            assert!(
                started.elapsed() < Duration::from_secs(within),
                "{path} {len}"
            );
        }
    }
    // Six stalled uploads fill the cap for a moment only: once they are answered, chat and
    // health are served again.
    let stalled: Vec<_> = (0..6)
        .map(|_| {
            let (addr, h) = (server.addr, head("/v1/files", "100"));
            tokio::spawn(async move { raw(addr, h.as_bytes()).await })
        })
        .collect();
    for s in stalled {
        assert_eq!(s.await.unwrap().0, 408);
    }
    let (status, body) = raw(
        server.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A whole upload still gets in.
    let (status, body) = raw(
        server.addr,
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "5"));
}

/// Issue 36, 4.3: what axum and the extractors answer in plain text (a path that is not UTF-8,
/// a body that is not JSON, a content type that is not JSON, a method not allowed) is the API's
/// error object, its status kept.
#[tokio::test]
async fn every_error_is_the_apis_error_object() {
    let server = start_with_added_routes().await;
    let cases: [(&[u8], u16); 5] = [
        (
            b"GET /v1/files/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"POST /v1/batch/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
              Content-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\":",
            400,
        ),
        (
            b"POST /v1/batch/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
              Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
            415,
        ),
        (
            b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
        (
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            404,
        ),
    ];
    // What hyper answers itself, before any route: a URI over its limit, a line it cannot parse.
    let long = format!(
        "GET /v1/models?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100_000)
    );
    let hyper_cases: [(&[u8], u16); 2] = [
        (long.as_bytes(), 414),
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
    ];
    for (request, want) in cases.into_iter().chain(hyper_cases) {
        let (status, body) = raw(server.addr, request).await;
        let what = String::from_utf8_lossy(request)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        assert_eq!(status, want, "{what}: {body}");
        let e = error_json(&body);
        assert!(
            !e["message"].as_str().unwrap_or("").is_empty(),
            "{what}: {e}"
        );
        assert!(e["type"].is_string(), "{what}: {e}");
    }
}

/// Issue 36, 4.2: with the Host check on (as `bora serve` sets it on a loopback bind), a foreign
/// Host is 403 and loopback names are served; a cross-origin browser request (a form upload, a
/// preflight) is 403 unless its origin is listed, and a listed one gets its CORS headers.
#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let mut c = config();
    c.allowed_hosts = Some(vec!["bora.lan".into()]);
    c.allowed_origins = vec!["http://app.example:3000".into()];
    let server = start(c).await;
    let get = |host: &str, extra: &str| {
        format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    };
    for host in ["evil.example", "evil.example:8080", "10.1.2.3"] {
        let (status, body) = raw(server.addr, get(host, "").as_bytes()).await;
        assert_eq!(status, 403, "{host}: {body}");
        assert!(error_json(&body)["message"]
            .as_str()
            .unwrap()
            .contains("--allowed-hosts"));
    }
    let own = server.addr.to_string();
    for host in [
        "localhost:8080",
        "127.0.0.1",
        own.as_str(),
        "[::1]:80",
        "bora.lan:8080",
    ] {
        let (status, body) = raw(server.addr, get(host, "").as_bytes()).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A page elsewhere posting a form (no preflight for multipart): refused before it runs.
    let form = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {own}\r\nOrigin: http://evil.example\r\n\
         Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw(server.addr, form.as_bytes()).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("--allowed-origins"));
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {own}\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let (status, _) = raw(server.addr, preflight("http://evil.example").as_bytes()).await;
    assert_eq!(status, 403);
    // The listed origin: its preflight answered, its request served with the CORS header.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(preflight("http://app.example:3000").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(
        lower.contains("access-control-allow-origin: http://app.example:3000"),
        "{out}"
    );
    assert!(lower.contains("access-control-allow-methods"), "{out}");
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(get(&own, "Origin: http://app.example:3000\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out
        .to_ascii_lowercase()
        .contains("access-control-allow-origin: http://app.example:3000"));
    // The server's own page calling it: same origin, served.
    let (status, body) = raw(
        server.addr,
        get(&own, &format!("Origin: http://{own}\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
