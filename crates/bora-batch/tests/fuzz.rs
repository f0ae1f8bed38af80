//! Fuzzing the batch surface (issue 36, 2.15) through a real server on 127.0.0.1: multipart
//! uploads to `/v1/files` whose form, part headers, purpose, file name and JSONL content are
//! mutated (the request corpus of tests/corpus/requests as batch lines), and jobs created from
//! what was accepted, from files or inline requests. No answer may be a 5xx, every refusal is
//! the API's JSON error object, and a job made from an accepted file holds one line for each of
//! the file's lines (none lost, none made up). `BORA_FUZZ_CASES` sets the cases.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bora_batch::http::{routes, BatchService};
use bora_batch::Store;
use bora_engine::{Engine, EngineConfig, ModelOptions, ModelSource};
use bora_server::{AppState, ServerConfig};
use bora_tests::fuzz::{cases, corpus, run_cases, Mutator};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODEL: &str = "tiny-mixtral";

/// A server with the batch routes on a fresh data dir; its address.
fn start(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> std::net::SocketAddr {
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/tiny-mixtral");
    let engine = Engine::load(
        &ModelSource::Dir(tiny),
        &ModelOptions::default(),
        EngineConfig::default(),
    )
    .unwrap();
    let mut config = ServerConfig::new(MODEL);
    config.upload_limit = 1 << 20;
    let store = Arc::new(Store::open(dir).unwrap());
    let batch = BatchService::new(store, config.upload_limit, MODEL);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::with_engine(config, engine);
        tokio::spawn(bora_server::serve_with(
            listener,
            state,
            routes(batch),
            std::future::pending(),
        ));
        addr
    })
}

/// `head` and `body` on a fresh connection: the answer's status and body (JSON, or the text).
fn send(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, Value) {
    let (status, raw) = send_raw(rt, addr, head, body);
    let v = serde_json::from_slice(&raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).to_string()));
    (status, v)
}

/// [`send`], the answer's body as bytes.
fn send_raw(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        let status: u16 = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
        let start = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(out.len(), |i| i + 4);
        (status, out[start..].to_vec())
    })
}

/// A status a client's bytes may get: 2xx, or a 4xx carrying the API's error object.
fn check_answer(status: u16, v: &Value, what: &str) -> bool {
    assert!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "{what}: {status} {v}"
    );
    if status >= 400 {
        assert_eq!(v["object"], "error", "{what}: {status} {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    status < 300
}

/// A JSONL of 1 to 4 batch lines from the corpus, mutated as lines, as JSON and as bytes.
fn jsonl(m: &mut Mutator, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..1 + m.below(4) {
        let (_, bytes) = &seeds[m.below(seeds.len())];
        let body: Value = serde_json::from_slice(bytes).unwrap();
        let id = match m.below(4) {
            0 => json!(i),
            1 => m.json(&json!("a")),
            _ => json!(format!("line-{i}")),
        };
        let line = json!({"custom_id": id, "body": body});
        let line = match m.below(4) {
            0 => m.json(&line),
            1 => json!({"custom_id": format!("line-{i}"), "body": m.json(&line["body"])}),
            _ => line,
        };
        let mut text = serde_json::to_vec(&line).unwrap();
        if m.below(6) == 0 {
            text = m.bytes(&text);
        }
        out.extend_from_slice(&text);
        out.push(b'\n');
    }
    out
}

/// A multipart form with `purpose` and a `file` part holding `content`, some of its parts and
/// headers mutated; and the boundary its Content-Type names.
fn form(m: &mut Mutator, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = ["bora-fuzz-7d3f", "x", "----a b"][m.below(3)].to_string();
    let purpose = match m.below(6) {
        0 => "fine-tune".to_string(),
        1 => String::from_utf8_lossy(&m.bytes(b"batch")).to_string(),
        _ => "batch".to_string(),
    };
    let filename = match m.below(6) {
        0 => "x".repeat(1 + m.below(600)),
        1 => "../../etc/passwd".to_string(),
        2 => String::from_utf8_lossy(&m.bytes(b"in.jsonl")).replace('"', ""),
        _ => "in.jsonl".to_string(),
    };
    let mut b = Vec::new();
    let part = |b: &mut Vec<u8>, head: &str, body: &[u8]| {
        b.extend_from_slice(format!("--{boundary}\r\n{head}\r\n\r\n").as_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(b"\r\n");
    };
    if m.below(8) > 0 {
        part(
            &mut b,
            "Content-Disposition: form-data; name=\"purpose\"",
            purpose.as_bytes(),
        );
    }
    if m.below(10) == 0 {
        let junk = "X-Junk: ".to_string() + &"j".repeat(m.below(20_000));
        part(
            &mut b,
            &format!("Content-Disposition: form-data; name=\"expiry\"\r\n{junk}"),
            b"24",
        );
    }
    if m.below(10) > 0 {
        part(
            &mut b,
            &format!(
                "Content-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/jsonl"
            ),
            content,
        );
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    if m.below(8) == 0 {
        b = m.bytes(&b);
    }
    let named = match m.below(10) {
        0 => "other".to_string(),
        1 => String::new(),
        _ => boundary,
    };
    (named, b)
}

#[test]
fn mutated_uploads_and_jobs_are_stored_or_refused_never_lost() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = start(&rt, dir.path());
    let seeds = corpus("requests");
    let (mut stored, mut jobs) = (0u64, 0u64);
    run_cases("batch uploads", cases(300), |seed| {
        let mut m = Mutator::new(seed);
        let content = jsonl(&mut m, &seeds);
        let (boundary, body) = form(&mut m, &content);
        let ctype = match m.below(12) {
            0 => "text/plain".to_string(),
            1 => "multipart/form-data".to_string(),
            _ => format!("multipart/form-data; boundary=\"{boundary}\""),
        };
        let (status, v) = send(
            &rt,
            addr,
            &format!("POST /v1/files HTTP/1.1\r\nContent-Type: {ctype}"),
            &body,
        );
        if !check_answer(status, &v, &format!("upload, seed {seed}")) {
            return;
        }
        stored += 1;
        let id = v["id"].as_str().expect("an uploaded file's id").to_string();
        // What was stored is what the file part held (here `content`, unless the mutations of
        // the whole form changed bytes inside it): as many bytes as the answer says.
        let (status, content) = send_raw(
            &rt,
            addr,
            &format!("GET /v1/files/{id}/content HTTP/1.1"),
            b"",
        );
        assert_eq!(status, 200);
        assert_eq!(v["bytes"], content.len(), "seed {seed}: {v}");
        // A job from it: one line per line of the file as the store reads it.
        let job = json!({"input_files": [id], "endpoint": "/v1/chat/completions", "model": MODEL});
        let (status, v) = send(
            &rt,
            addr,
            "POST /v1/batch/jobs HTTP/1.1\r\nContent-Type: application/json",
            job.to_string().as_bytes(),
        );
        let Ok(text) = std::str::from_utf8(&content) else {
            // Not UTF-8: refused, by name.
            assert_eq!(status, 400, "seed {seed}: {v}");
            return;
        };
        assert!(
            check_answer(status, &v, &format!("job, seed {seed}")),
            "seed {seed}: {status} {v}"
        );
        jobs += 1;
        // Every line that is not blank is a line of the job: a request, or an error to report.
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(v["total_requests"], lines, "seed {seed}: {v}");
    });
    eprintln!("batch uploads: {stored} stored, {jobs} jobs made");
    // Enough of the mutated uploads pass the form's checks for the jobs to be reached.
    assert!(
        stored >= cases(300) / 10 && jobs > 0,
        "{stored} stored, {jobs} jobs"
    );
}

#[test]
fn mutated_inline_jobs_are_made_or_refused_never_crash() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = start(&rt, dir.path());
    let seeds = corpus("requests");
    let mut made = 0u64;
    run_cases("inline jobs", cases(300), |seed| {
        let mut m = Mutator::new(seed);
        let lines: Vec<Value> = (0..1 + m.below(4))
            .map(|i| {
                let (_, bytes) = &seeds[m.below(seeds.len())];
                let body: Value = serde_json::from_slice(bytes).unwrap();
                json!({"custom_id": format!("r{i}"), "body": body})
            })
            .collect();
        let job = json!({"requests": lines, "endpoint": "/v1/chat/completions", "model": MODEL,
                         "metadata": {"k": "v"}, "timeout_hours": 24});
        let job = if m.below(4) > 0 { m.json(&job) } else { job };
        let mut body = job.to_string().into_bytes();
        if m.below(6) == 0 {
            body = m.bytes(&body);
        }
        let (status, v) = send(
            &rt,
            addr,
            "POST /v1/batch/jobs HTTP/1.1\r\nContent-Type: application/json",
            &body,
        );
        if check_answer(status, &v, &format!("inline job, seed {seed}")) {
            made += 1;
            let n = job["requests"].as_array().map_or(0, Vec::len);
            assert_eq!(v["total_requests"], n, "seed {seed}: {v}");
        }
    });
    eprintln!("inline jobs: {made} made");
    assert!(made >= cases(300) / 10, "{made} made");
}
