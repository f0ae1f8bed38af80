//! The HTTP API against a real server on 127.0.0.1 with the tiny fixture model: wire format,
//! stream framing, error shapes, auth, limits, cancellation and metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bora_engine::{Engine, EngineConfig, ModelOptions, ModelSource};
use bora_server::{AppState, ServerConfig};
use serde_json::{json, Value};

const MODEL: &str = "tiny-mixtral";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/tiny-mixtral")
}

fn engine(config: EngineConfig) -> Engine {
    Engine::load(
        &ModelSource::Dir(fixture()),
        &ModelOptions::default(),
        config,
    )
    .expect("the tiny fixture loads")
}

/// A server on a free loopback port; returns its base URL and state.
async fn start(state: Arc<AppState>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(bora_server::serve(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    format!("http://{addr}")
}

async fn server() -> (String, Arc<AppState>) {
    let state = AppState::with_engine(ServerConfig::new(MODEL), engine(EngineConfig::default()));
    (start(state.clone()).await, state)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello, who are you?"}],
        "max_tokens": 12,
        "temperature": 0,
        "random_seed": 3,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The `data:` payloads of an SSE body, and its comment lines.
fn sse(body: &str) -> (Vec<String>, usize) {
    let mut data = Vec::new();
    let mut comments = 0;
    for event in body.split("\n\n").filter(|e| !e.trim().is_empty()) {
        for line in event.lines() {
            if let Some(d) = line.strip_prefix("data: ") {
                data.push(d.to_string());
            } else if line.starts_with(':') {
                comments += 1;
            }
        }
    }
    (data, comments)
}

/// Error answers: JSON in the API's shape.
async fn expect_error(r: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert!(content_type(&r).starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "error", "{body}");
    assert_eq!(body["type"], kind, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body.get("param").is_some() && body.get("code").is_some());
    body
}

#[tokio::test]
async fn completion_has_the_sdk_shape() {
    let (url, _) = server().await;
    let r = post(&url, &chat_body(json!({}))).await;
    assert_eq!(r.status(), 200);
    assert!(content_type(&r).starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].is_u64());
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert_eq!(choice["finish_reason"], "length");
    let u = &body["usage"];
    assert_eq!(u["completion_tokens"], 12);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn stream_framing_and_equality_with_the_whole_answer() {
    let (url, _) = server().await;
    for n in [1usize, 2] {
        let whole: Value = post(&url, &chat_body(json!({"n": n})))
            .await
            .json()
            .await
            .unwrap();
        let r = post(&url, &chat_body(json!({"n": n, "stream": true}))).await;
        assert_eq!(r.status(), 200);
        assert!(content_type(&r).starts_with("text/event-stream"));
        let (data, _) = sse(&r.text().await.unwrap());
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("every event is one JSON chunk"))
            .collect();
        let mut text = vec![String::new(); n];
        let mut reasons = vec![Value::Null; n];
        for (k, c) in chunks.iter().enumerate() {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["id"], chunks[0]["id"]);
            assert!(c["created"].is_u64());
            for ch in c["choices"].as_array().unwrap() {
                let i = ch["index"].as_u64().unwrap() as usize;
                assert!(ch.get("finish_reason").is_some(), "{c}");
                if k < n {
                    assert_eq!(ch["delta"]["role"], "assistant");
                }
                text[i].push_str(ch["delta"]["content"].as_str().unwrap_or(""));
                if !ch["finish_reason"].is_null() {
                    reasons[i] = ch["finish_reason"].clone();
                }
            }
            // Usage rides on the last chunk only.
            assert_eq!(c.get("usage").is_some(), k == chunks.len() - 1, "{c}");
        }
        assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
        for i in 0..n {
            assert_eq!(
                text[i], whole["choices"][i]["message"]["content"],
                "n={n} choice {i}"
            );
            assert_eq!(reasons[i], whole["choices"][i]["finish_reason"]);
        }
    }
}

#[tokio::test]
async fn requests_as_the_sdks_send_them() {
    let (url, _) = server().await;
    // Nulls for unset fields, OpenAI's names, an echoed assistant message with a tool call,
    // text chunks, and unknown fields.
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello!", "tool_calls": null, "prefix": false},
            {"role": "user", "content": "How are you?"},
        ],
        "temperature": null, "top_p": null, "max_tokens": null, "stream": false,
        "stop": null, "random_seed": null, "response_format": {"type": "text"},
        "tools": null, "tool_choice": "auto", "presence_penalty": 0, "frequency_penalty": 0,
        "n": 1, "safe_prompt": true, "seed": 5, "max_completion_tokens": 6,
        "stream_options": {"include_usage": true}, "user": "someone", "something_new": [1],
    });
    let r = post(&url, &body).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn stop_strings_are_never_in_the_output() {
    let (url, _) = server().await;
    let whole: Value = post(&url, &chat_body(json!({"max_tokens": 20})))
        .await
        .json()
        .await
        .unwrap();
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    let stop: String = text.chars().skip(3).take(2).collect();
    let cut: Value = post(
        &url,
        &chat_body(json!({"max_tokens": 20, "stop": [stop.clone()]})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    let got = cut["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        !got.contains(&stop) && text.starts_with(got),
        "{got:?} / {text:?}"
    );
}

#[tokio::test]
async fn errors_have_the_api_shape_and_status() {
    let (url, _) = server().await;
    let c = client();
    let send = |body: String| {
        c.post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Malformed JSON and wrong types: 422 with a detail list naming the field.
    let e = expect_error(
        send("{\"model\": ".into()).await.unwrap(),
        422,
        "invalid_request_error",
    )
    .await;
    assert_eq!(e["detail"][0]["type"], "json_invalid");
    let e = expect_error(
        post(&url, &chat_body(json!({"temperature": "hot"}))).await,
        422,
        "invalid_request_error",
    )
    .await;
    assert_eq!(e["param"], "temperature");
    assert_eq!(e["detail"][0]["loc"], json!(["body", "temperature"]));
    let e = expect_error(
        post(&url, &chat_body(json!({"top_p": 2}))).await,
        422,
        "invalid_request_error",
    )
    .await;
    assert_eq!(e["param"], "top_p");
    let e = expect_error(
        post(
            &url,
            &chat_body(json!({"messages": [{"role": "robot", "content": "x"}]})),
        )
        .await,
        422,
        "invalid_request_error",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("robot"), "{e}");
    // Semantic errors: 400.
    let e = expect_error(
        post(&url, &chat_body(json!({"model": "gpt-4"}))).await,
        400,
        "invalid_model",
    )
    .await;
    assert_eq!(e["message"], "Invalid model: gpt-4");
    assert_eq!(e["code"], "1500");
    let e = expect_error(
        post(&url, &chat_body(json!({"messages": []}))).await,
        400,
        "invalid_request_error",
    )
    .await;
    assert_eq!(e["message"], "Conversation must have at least one message");
    expect_error(
        post(
            &url,
            &chat_body(json!({"messages": [
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})),
        )
        .await,
        400,
        "invalid_request_error",
    )
    .await;
    let long = "word ".repeat(400);
    let e = expect_error(
        post(
            &url,
            &chat_body(json!({"messages": [{"role": "user", "content": long}]})),
        )
        .await,
        400,
        "invalid_request_error",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("context"), "{e}");
    expect_error(
        post(
            &url,
            &chat_body(json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": "http://x/y.png"}]}]})),
        )
        .await,
        400,
        "invalid_request_error",
    )
    .await;
    // Routes and methods.
    expect_error(
        c.get(format!("{url}/v1/nothing")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        c.get(format!("{url}/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
        405,
        "invalid_request_error",
    )
    .await;
    expect_error(
        c.get(format!("{url}/v1/models/nope")).send().await.unwrap(),
        404,
        "invalid_model",
    )
    .await;
    // The server is still fine.
    assert_eq!(post(&url, &chat_body(json!({}))).await.status(), 200);
}

#[tokio::test]
async fn strict_mode_refuses_unknown_fields() {
    let mut config = ServerConfig::new(MODEL);
    config.strict_api = true;
    let url = start(AppState::with_engine(
        config,
        engine(EngineConfig::default()),
    ))
    .await;
    let e = expect_error(
        post(&url, &chat_body(json!({"bogus": 1}))).await,
        422,
        "invalid_request_error",
    )
    .await;
    assert_eq!(e["detail"][0]["type"], "extra_forbidden");
    assert_eq!(e["detail"][0]["loc"], json!(["body", "bogus"]));
    assert_eq!(
        post(&url, &chat_body(json!({"seed": 1}))).await.status(),
        200
    );
}

#[tokio::test]
async fn auth_body_limit_overload_and_loading() {
    // Auth: /v1 needs the key; /health does not.
    let mut config = ServerConfig::new(MODEL);
    config.api_key = Some("s3cret".into());
    config.body_limit = 4096;
    let url = start(AppState::with_engine(
        config,
        engine(EngineConfig::default()),
    ))
    .await;
    let c = client();
    let chat = || {
        c.post(format!("{url}/v1/chat/completions"))
            .json(&chat_body(json!({})))
    };
    expect_error(chat().send().await.unwrap(), 401, "authentication_error").await;
    expect_error(
        chat().bearer_auth("wrong").send().await.unwrap(),
        401,
        "authentication_error",
    )
    .await;
    assert_eq!(
        chat().bearer_auth("s3cret").send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Bodies over the limit: 413.
    let big = chat_body(json!({"messages": [{"role": "user", "content": "x".repeat(8000)}]}));
    expect_error(
        c.post(format!("{url}/v1/chat/completions"))
            .bearer_auth("s3cret")
            .json(&big)
            .send()
            .await
            .unwrap(),
        413,
        "invalid_request_error",
    )
    .await;

    // A full queue: 429 with Retry-After.
    let url = start(AppState::with_engine(
        ServerConfig::new(MODEL),
        engine(EngineConfig {
            max_queue: 0,
            ..EngineConfig::default()
        }),
    ))
    .await;
    let r = post(&url, &chat_body(json!({}))).await;
    assert!(r.headers().get("retry-after").is_some());
    expect_error(r, 429, "rate_limit_error").await;

    // Loading: 503 with Retry-After everywhere but /metrics.
    let url = start(AppState::new(ServerConfig::new(MODEL))).await;
    let r = c.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let r = post(&url, &chat_body(json!({}))).await;
    assert!(r.headers().get("retry-after").is_some());
    expect_error(r, 503, "service_unavailable").await;
    assert_eq!(
        c.get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn models_list_and_card() {
    let (url, _) = server().await;
    let list: Value = client()
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let card = &list["data"][0];
    assert_eq!(card["id"], MODEL);
    assert_eq!(card["object"], "model");
    assert_eq!(card["type"], "base");
    assert_eq!(card["capabilities"]["completion_chat"], true);
    // The v1 tokenizer has no tool tokens.
    assert_eq!(card["capabilities"]["function_calling"], false);
    assert_eq!(card["max_context_length"], 128);
    let one: Value = client()
        .get(format!("{url}/v1/models/{MODEL}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&one, card);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_generation() {
    let (url, state) = server().await;
    let mut r = post(
        &url,
        &chat_body(json!({"stream": true, "max_tokens": 100, "n": 2})),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    // The role chunks go out before the engine has the request: wait until it runs both.
    let engine = state.engine().unwrap().clone();
    let started = Instant::now();
    let before = loop {
        let st = engine.stats();
        if st.running == 2 && st.blocks_used > 0 {
            break st;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{st:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let before = before.steps;
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = engine.stats();
        if st.running == 0 && st.waiting == 0 && st.blocks_used == 0 {
            // Cancelled, not finished: the 100-token answers had some 98 steps left.
            assert!(
                st.steps - before < 20,
                "{} steps after the drop",
                st.steps - before
            );
            break;
        }
        assert!(Instant::now() < deadline, "still running: {st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn keep_alive_comments_while_waiting() {
    let mut config = ServerConfig::new(MODEL);
    config.keep_alive = Duration::from_millis(1);
    let state = AppState::with_engine(config, engine(EngineConfig::default()));
    let url = start(state).await;
    // A long prompt and a long answer: gaps between events well over a millisecond.
    let prompt = "word ".repeat(60);
    let r = post(
        &url,
        &chat_body(json!({"stream": true, "max_tokens": 40,
                          "messages": [{"role": "user", "content": prompt}]})),
    )
    .await;
    let (data, comments) = sse(&r.text().await.unwrap());
    assert!(
        comments > 0,
        "no keep-alive comment in {} events",
        data.len()
    );
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_experts() {
    let (url, _) = server().await;
    let r = post(&url, &chat_body(json!({}))).await;
    assert_eq!(r.status(), 200);
    let usage = r.json::<Value>().await.unwrap()["usage"].clone();
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(
        post(&url, &chat_body(json!({"model": "nope"})))
            .await
            .status(),
        400
    );
    let scrape = async || {
        client()
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let text = scrape().await;
    for needle in [
        "bora_requests_total{status=\"200\"} 1",
        "bora_requests_total{status=\"400\"} 1",
        "bora_generation_tokens_total 12",
        "bora_time_to_first_token_seconds_count 1",
        "bora_inter_token_latency_seconds_count",
        "bora_running_sequences ",
        "bora_kv_blocks_free",
        "bora_prefix_cache_hits_total",
        "bora_expert_tokens_total{layer=\"1\",expert=\"7\"}",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    // Every token the model computed went through 2 experts in each of the 2 layers: the
    // prompt's, and the 11 generated tokens fed back (the 12th is not). The engine publishes
    // its stats after the step that sent the last event, so the answer can come a moment
    // before the last step's count: scrape until it is there (or 5 s).
    let routed = |text: &str, layer: usize| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("bora_expert_tokens_total{{layer=\"{layer}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let want = 2 * (prompt + 11);
    let mut text = text;
    for _ in 0..50 {
        if (0..2).all(|l| routed(&text, l) >= want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape().await;
    }
    for layer in 0..2 {
        assert_eq!(routed(&text, layer), want, "layer {layer}");
    }
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = ServerConfig::new(MODEL);
    config.body_timeout = Duration::from_millis(300);
    let url = start(AppState::with_engine(
        config,
        engine(EngineConfig::default()),
    ))
    .await;
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Promise 100 bytes, send 10, then stall.
    conn.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"model\": ",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("\"object\":\"error\"") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a stalled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // The server still serves others.
    assert_eq!(post(&url, &chat_body(json!({}))).await.status(), 200);
}

/// vllm-router's `kv_aware` policy asks a worker for a chat request's prompt tokens at
/// `/v1/chat/completions/render` and reads `token_ids`: the tokens bora runs for that request.
#[tokio::test]
async fn render_gives_the_prompt_tokens_the_chat_route_runs() {
    let (url, state) = server().await;
    let body = chat_body(json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, who are you?"},
        {"role": "assistant", "content": "A model."},
        {"role": "user", "content": "And what do you do?"},
    ]}));
    let r = client()
        .post(format!("{url}/v1/chat/completions/render"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let ids: Vec<u32> = serde_json::from_value(v["token_ids"].clone()).unwrap();
    let engine = state.engine().unwrap();
    let req = bora_server::parse_request(body.to_string().as_bytes(), false).unwrap();
    let expected = bora_engine::chat::render(
        engine.chat_format(),
        engine.tokenizer(),
        &req.completion.chat,
    )
    .unwrap();
    assert_eq!(ids, expected);
    assert!(v["features"].is_null());
    let usage = post(&url, &body).await.json::<Value>().await.unwrap()["usage"].clone();
    assert_eq!(usage["prompt_tokens"].as_u64().unwrap(), ids.len() as u64);
    // A bad request gets the chat route's error.
    // Issue 36, 4.4: render applies the chat route's own checks: a prompt over the context, a
    // hostile schema, settings the engine refuses, `prediction` that is not an object.
    let long = "many words again ".repeat(3000);
    let deep = (0..200).fold(
        json!({"type": "string"}),
        |s, _| json!({"type": "object", "properties": {"a": s}}),
    );
    for bad in [
        json!({"model": MODEL, "messages": []}),
        chat_body(json!({"model": "other"})),
        chat_body(json!({"messages": [{"role": "assistant", "content": "x"}]})),
        chat_body(json!({"messages": [{"role": "user", "content": long}]})),
        chat_body(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": deep}}})),
        chat_body(json!({"min_tokens": 20, "max_tokens": 10})),
        chat_body(json!({"prediction": []})),
    ] {
        let r = client()
            .post(format!("{url}/v1/chat/completions/render"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        let chat = post(&url, &bad).await;
        assert!(r.status().is_client_error(), "{bad}");
        assert_eq!(r.status(), chat.status(), "{bad}");
        let (a, b) = (
            r.json::<Value>().await.unwrap(),
            chat.json::<Value>().await.unwrap(),
        );
        assert_eq!(a, b, "{bad}");
    }
}

/// vllm-router's `power_of_two` policy polls a worker's `/get_load` and reads `load`: the
/// requests running and waiting.
#[tokio::test]
async fn get_load_counts_the_requests_in_flight() {
    let (url, _state) = server().await;
    let load = |url: String| async move {
        let r = client()
            .get(format!("{url}/get_load"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    assert_eq!(load(url.clone()).await["load"], 0);
    // Eight requests at once; the load is polled while they run.
    let body = chat_body(json!({"max_tokens": 100, "temperature": 0}));
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { post(&url, &body).await.status() })
        })
        .collect();
    let mut most = 0;
    while !requests.iter().all(|r| r.is_finished()) {
        let l = load(url.clone()).await;
        let n = l["load"].as_u64().unwrap();
        let (running, waiting) = (
            l["num_requests_running"].as_u64().unwrap(),
            l["num_requests_waiting"].as_u64().unwrap(),
        );
        assert_eq!(n, running + waiting, "{l}");
        most = most.max(n);
    }
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert!(
        most >= 2,
        "the load never showed the requests in flight (at most {most})"
    );
    // The engine's figures are taken at the end of a step: back to 0 within moments.
    let mut idle = false;
    for _ in 0..100 {
        if load(url.clone()).await["load"] == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idle, "the load stayed above 0 after every request ended");
}
