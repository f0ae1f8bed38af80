//! Rendering and tokenizing a 4,000-token conversation in each chat format (the goal: under
//! 2 ms on one core), and streaming detokenization per token over short and long outputs (the
//! goal: the same cost per token, O(1) amortized).

use std::path::PathBuf;
use std::time::Duration;

use bora_engine::chat::{render, ChatFormat, ChatRequest, Content, Message, Tool, ToolCall};
use bora_engine::{IncrementalDecoder, Tokenizer};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const PARAGRAPH: &str =
    "Mixtral routes each token to two of its eight experts; the router's softmax \
weights mix their outputs. Ça marche bien, même avec des accents, 数字 1234 and emoji 🙂.\n\n";

fn tokenizer(v: &str) -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../models/tokenizers/tokenizer.model.{v}"));
    Tokenizer::from_file(&p).expect("tokenizer")
}

fn text(s: &str) -> Option<Content> {
    Some(Content::Text(s.to_string()))
}

/// Just over 4,000 tokens: a system prompt, twelve exchanges, a tool call and its result.
fn conversation() -> ChatRequest {
    let mut messages = vec![Message::System {
        content: text("You are a helpful assistant."),
    }];
    for i in 0..12 {
        messages.push(Message::User {
            content: text(&format!("Question {i}: {}", PARAGRAPH.repeat(3))),
        });
        messages.push(Message::Assistant {
            content: text(&PARAGRAPH.repeat(3)),
            tool_calls: None,
            prefix: false,
        });
    }
    messages.push(Message::User {
        content: text("What's the weather in Paris?"),
    });
    messages.push(Message::Assistant {
        content: None,
        tool_calls: Some(vec![ToolCall {
            id: Some("abc123def".into()),
            name: "get_weather".into(),
            arguments: r#"{"city": "Paris"}"#.into(),
        }]),
        prefix: false,
    });
    messages.push(Message::Tool {
        content: text(r#"{"t": 18}"#),
        tool_call_id: Some("abc123def".into()),
        name: None,
    });
    let tools = vec![Tool {
        name: "get_weather".into(),
        description: "Get the weather".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }];
    ChatRequest { messages, tools }
}

fn bench(c: &mut Criterion) {
    let req = conversation();
    let mut group = c.benchmark_group("chat_render");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    for v in ["v1", "v3"] {
        let tok = tokenizer(v);
        let format: ChatFormat = v.parse().unwrap();
        let n = render(format, &tok, &req).unwrap().len();
        println!("chat_render/{v}: {n} tokens");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new(v, n), |b| {
            b.iter(|| render(format, &tok, &req).unwrap())
        });
    }
    group.finish();

    let tok = tokenizer("v3");
    let ids = tok.encode(&PARAGRAPH.repeat(120)).unwrap();
    let mut group = c.benchmark_group("stream_detokenize");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for n in [256usize, 4096] {
        let ids = &ids[..n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("tokens", n), |b| {
            b.iter(|| {
                let mut dec = IncrementalDecoder::new();
                let mut len = 0;
                for &id in ids {
                    len += dec.push(&tok, id).unwrap().map_or(0, |p| p.len());
                }
                len
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
