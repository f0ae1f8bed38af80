//! The API in process (`bora_server::local`, what the Python and C bindings call) against the
//! same API over HTTP: the same request gives the same answer, errors have the same shape, and
//! a dropped answer frees its KV blocks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bora_engine::{Engine, EngineConfig, ModelOptions, ModelSource};
use bora_server::local::{LocalApi, Next};
use bora_server::{AppState, ServerConfig};
use serde_json::{json, Value};

const MODEL: &str = "tiny-mixtral";
const WAIT: Duration = Duration::from_secs(60);

fn engine() -> Engine {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/tiny-mixtral");
    Engine::load(
        &ModelSource::Dir(dir),
        &ModelOptions::default(),
        EngineConfig::default(),
    )
    .expect("the tiny fixture loads")
}

fn request(max_tokens: u32) -> Value {
    json!({"model": MODEL, "temperature": 0, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "Tell me about mixtures of experts."}]})
}

/// Every chunk of a streamed answer, in order.
fn chunks(api: &LocalApi, body: &Value) -> Vec<Value> {
    let mut s = api.stream(&body.to_string()).expect("accepted");
    let mut out = Vec::new();
    let start = Instant::now();
    loop {
        match s.next(Duration::from_millis(50)) {
            Next::Chunk(c) => out.push(c),
            Next::Waiting => assert!(start.elapsed() < WAIT, "no end in {WAIT:?}"),
            Next::End => return out,
        }
    }
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[test]
fn in_process_answers_equal_the_servers() {
    let engine = engine();
    let api = LocalApi::new(engine.clone(), MODEL);
    let whole = api
        .complete(&request(24).to_string())
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], MODEL);
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    assert_eq!(whole["usage"]["completion_tokens"], 24);

    // The stream: role chunk first, the same text, the usage on the last chunk.
    let c = chunks(&api, &request(24));
    assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text_of(&c), text);
    assert_eq!(c.last().unwrap()["usage"], whole["usage"]);
    assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "length");

    // The server, on the same engine, says the same.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(async {
        let state = AppState::with_engine(ServerConfig::new(MODEL), engine.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(bora_server::serve(
            listener,
            state,
            std::future::pending::<()>(),
        ));
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&request(24))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    assert_eq!(served["choices"], whole["choices"]);
    assert_eq!(served["usage"], whole["usage"]);

    // `model` may be left out; another name is refused as the server refuses it.
    let mut body = request(4);
    body.as_object_mut().unwrap().remove("model");
    assert!(api.complete(&body.to_string()).is_ok());
    body["model"] = json!("other");
    let e = api.complete(&body.to_string()).err().unwrap();
    assert_eq!((e.status.as_u16(), e.kind), (400, "invalid_model"));
}

#[test]
fn errors_are_the_servers() {
    let api = LocalApi::new(engine(), MODEL);
    let e = api.complete("{not json").err().unwrap();
    assert_eq!(e.status.as_u16(), 400);
    let e = api
        .complete(&json!({"messages": [], "temperature": "hot"}).to_string())
        .err()
        .unwrap();
    assert_eq!(e.status.as_u16(), 422);
    assert_eq!(e.param.as_deref(), Some("temperature"));
    assert_eq!(e.body()["type"], "invalid_request_error");
    let e = api
        .stream(&json!({"messages": [{"role": "assistant", "content": "x"}]}).to_string())
        .err()
        .unwrap();
    assert_eq!(e.status.as_u16(), 400, "{}", e.message);
}

#[test]
fn a_dropped_answer_frees_its_blocks() {
    let engine = engine();
    let api = LocalApi::new(engine.clone(), MODEL);
    // The context holds 128 positions: a prompt of 16 and 100 tokens, one per step.
    let mut s = api.stream(&request(100).to_string()).unwrap();
    // Wait for some text, then walk away.
    let mut got = 0;
    let start = Instant::now();
    while got < 3 {
        if let Next::Chunk(_) = s.next(Duration::from_millis(50)) {
            got += 1;
        }
        assert!(start.elapsed() < WAIT);
    }
    assert!(engine.stats().blocks_used > 0 || engine.stats().running > 0);
    drop(s);
    let start = Instant::now();
    while engine.stats().blocks_used > 0 || engine.stats().running > 0 {
        assert!(start.elapsed() < WAIT, "still held: {:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cancelled, not run to its end.
    assert!(engine.stats().steps < 60, "{:?}", engine.stats());
}
