//! Embedding bora: load a model, ask a question, stream the answer. No network involved.
//!
//!   cargo run --release -p bora-engine --example chat -- [MODEL] [QUESTION]
//!
//! MODEL is anything `bora --model` takes: a checkpoint directory, a GGUF file, a repo id in
//! the local Hugging Face cache, `bora-demo`, `random:NAME`. Without arguments it runs on the
//! committed tiny random-weight fixture (whose answers are nonsense; a real Mixtral Instruct
//! gives real ones).

use std::io::Write;

use bora_engine::chat::{ChatRequest, Content, Message};
use bora_engine::{Completion, Engine, EngineConfig, Event, KvBudget, ModelOptions, ModelSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model: ModelSource = match args.next() {
        Some(m) => m.parse()?,
        None => ModelSource::Dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/fixtures/tiny-mixtral"),
        ),
    };
    let question = args
        .next()
        .unwrap_or_else(|| "What is a mixture of experts?".to_string());

    let engine = Engine::load(
        &model,
        &ModelOptions::default(),
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
            // Log-probabilities, when the request asks for them.
            _ => {}
        }
    }
    Ok(())
}
