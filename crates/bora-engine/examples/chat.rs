//! Embedding bora: load a model, ask a question, stream the answer. No network involved.
//!
//!   cargo run --release -p bora-engine --example chat -- [MODEL_DIR] [QUESTION]
//!
//! Without arguments it runs on the committed tiny random-weight fixture (whose answers are
//! nonsense; a real Mixtral Instruct directory gives real ones).

use std::io::Write;
use std::path::PathBuf;

use bora_engine::chat::{ChatRequest, Content, Message};
use bora_engine::{Completion, Engine, EngineConfig, Event, KvBudget, ModelSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/tiny-mixtral")
    });
    let question = args
        .next()
        .unwrap_or_else(|| "What is a mixture of experts?".to_string());

    let engine = Engine::load(
        ModelSource::Dir(dir),
        EngineConfig {
            kv_budget: KvBudget::Mib(256),
            ..Default::default()
        },
    )?;
    let chat = ChatRequest {
        messages: vec![
            Message::System {
                content: Some(Content::Text("Answer in one paragraph.".into())),
            },
            Message::User {
                content: Some(Content::Text(question)),
            },
        ],
        tools: vec![],
    };
    let request = Completion {
        max_tokens: Some(64),
        ..Completion::new(chat)
    };

    let mut stream = engine.chat(&request)?;
    let mut out = std::io::stdout();
    while let Some(event) = stream.next_blocking() {
        match event {
            Event::Delta { text, .. } => {
                write!(out, "{text}")?;
                out.flush()?;
            }
            Event::ToolCalls { calls, .. } => println!("\n[tool calls: {calls:?}]"),
            Event::Finish { reason, .. } => println!("\n[finish: {}]", reason.as_str()),
            Event::Done { usage } => println!(
                "[{} prompt + {} completion tokens]",
                usage.prompt_tokens, usage.completion_tokens
            ),
            Event::Error { message } => return Err(message.into()),
        }
    }
    Ok(())
}
