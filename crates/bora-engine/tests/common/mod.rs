//! What the engine's tests share: the demo engine and a one-message request.
#![allow(dead_code)]

use bora_engine::chat::{ChatRequest, Content, Message};
use bora_engine::{Completion, Engine, EngineConfig, ModelOptions, ModelSource};

/// An engine on the demo model (v1), default settings.
pub fn demo_engine() -> Engine {
    Engine::load(
        &ModelSource::Demo,
        &ModelOptions::default(),
        EngineConfig::default(),
    )
    .expect("demo loads")
}

/// A request of one user message, greedy, at most `max_tokens` tokens.
pub fn user_request(text: &str, max_tokens: usize) -> Completion {
    let mut c = Completion::new(ChatRequest {
        messages: vec![Message::User {
            content: Some(Content::Text(text.into())),
        }],
        tools: Vec::new(),
    });
    c.max_tokens = Some(max_tokens);
    c
}
