//! `tool_choice` and `parallel_tool_calls` are the engine's to apply, so that a library user gets
//! what the server's clients get: under `none` the tools are rendered as under `auto` (as
//! mistral-common renders them) and the answer is text; `parallel_tool_calls: false` reports
//! one call at most. On both demos (v1: calls spelled out as text; v3: the `[TOOL_CALLS]`
//! control token), with a logits processor that steers the random model into writing a call.

use bora_engine::chat::{ChatRequest, Content, Message, Tool};
use bora_engine::{
    Completion, CompletionResult, Engine, EngineConfig, FinishReason, LogitsProcessor,
    ModelOptions, ModelSource, ProcessorFactory, ToolChoice,
};
use serde_json::json;

fn engine(source: ModelSource) -> Engine {
    Engine::load(&source, &ModelOptions::default(), EngineConfig::default()).expect("demo loads")
}

/// Makes the model write `script` (token ids), then end with `eos`; tokens that a later mask
/// forbids are skipped over (the best remaining token is sampled instead).
struct Script {
    ids: Vec<u32>,
    eos: u32,
}

impl LogitsProcessor for Script {
    fn process(&mut self, generated: &[u32], logits: &mut [f32]) {
        let next = self.ids.get(generated.len()).copied().unwrap_or(self.eos);
        if let Some(l) = logits.get_mut(next as usize) {
            *l += 1e4;
        }
    }
}

fn request(engine: &Engine, choice: ToolChoice, script: Vec<u32>) -> Completion {
    let mut c = Completion::new(ChatRequest {
        messages: vec![Message::User {
            content: Some(Content::Text("Add one and two.".into())),
        }],
        tools: vec![Tool {
            name: "add".into(),
            description: "Adds two numbers.".into(),
            parameters: json!({"type": "object", "properties": {"a": {"enum": [1, 2]}},
                               "required": ["a"], "additionalProperties": false}),
        }],
    });
    let eos = engine.tokenizer().specials().eos.expect("an end token");
    c.processors.push(ProcessorFactory::new(move || {
        Box::new(Script {
            ids: script.clone(),
            eos,
        })
    }));
    c.tool_choice = choice;
    // Room beyond the grammar's closing window (where it ends the output as soon as it may).
    c.max_tokens = Some(200);
    c
}

/// The tokens of `text` without sentencepiece's dummy prefix space (an answer's first token
/// must not begin with a space for bora's v1 call grammar).
fn bare_tokens(engine: &Engine, text: &str) -> Vec<u32> {
    let tok = engine.tokenizer();
    let ids = tok.encode(&format!("a{text}")).unwrap();
    let ids = ids[1..].to_vec();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    ids
}

fn run(engine: &Engine, req: &Completion) -> CompletionResult {
    engine.chat_blocking(req).expect("the request runs")
}

#[test]
fn none_renders_the_tools_and_answers_in_text_v1() {
    let engine = engine(ModelSource::Demo);
    // bora's v1 format spells the call out.
    let script = bare_tokens(
        &engine,
        "[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 1}}]",
    );
    let auto = run(&engine, &request(&engine, ToolChoice::Auto, script.clone()));
    assert_eq!(auto.choices[0].tool_calls.len(), 1, "{auto:?}");
    assert_eq!(auto.choices[0].finish_reason, Some(FinishReason::ToolCalls));

    let none = run(&engine, &request(&engine, ToolChoice::None, script));
    assert!(none.choices[0].tool_calls.is_empty(), "{none:?}");
    assert!(
        none.choices[0].text.contains("[TOOL_CALLS]"),
        "the answer is the text itself: {none:?}"
    );
    assert_eq!(none.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(none.usage.prompt_tokens, auto.usage.prompt_tokens);
}

#[test]
fn none_masks_the_call_token_v3() {
    let engine = engine(ModelSource::DemoV3);
    let call = engine.tokenizer().specials().tool_calls.expect("v3 has it");
    let auto = run(&engine, &request(&engine, ToolChoice::Auto, vec![call]));
    let calls = &auto.choices[0].tool_calls;
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c.name == "add"),
        "{auto:?}"
    );

    let none = run(&engine, &request(&engine, ToolChoice::None, vec![call]));
    assert!(none.choices[0].tool_calls.is_empty(), "{none:?}");
    assert_ne!(none.choices[0].finish_reason, Some(FinishReason::ToolCalls));
    // The same prompt: the tools are rendered whatever tool_choice says.
    assert_eq!(none.usage.prompt_tokens, auto.usage.prompt_tokens);
    let bare = Completion {
        chat: ChatRequest {
            tools: Vec::new(),
            ..request(&engine, ToolChoice::None, vec![]).chat
        },
        ..request(&engine, ToolChoice::None, vec![])
    };
    assert!(run(&engine, &bare).usage.prompt_tokens < none.usage.prompt_tokens);
}

#[test]
fn one_call_without_parallel_tool_calls() {
    for source in [ModelSource::Demo, ModelSource::DemoV3] {
        let engine = engine(source);
        let v3 = engine.tokenizer().specials().tool_calls;
        // Two calls, where the grammar allows them.
        let two = "[{\"name\": \"add\", \"arguments\": {\"a\": 1}}, {\"name\": \"add\", \"arguments\": {\"a\": 2}}]";
        let script: Vec<u32> = match v3 {
            Some(id) => [id]
                .into_iter()
                .chain(engine.tokenizer().encode(two).unwrap())
                .collect(),
            None => bare_tokens(&engine, &format!("[TOOL_CALLS] {two}")),
        };
        let mut req = request(&engine, ToolChoice::Required, script);
        let parallel = run(&engine, &req);
        assert_eq!(parallel.choices[0].tool_calls.len(), 2, "{parallel:?}");
        req.parallel_tool_calls = false;
        let one = run(&engine, &req);
        assert_eq!(one.choices[0].tool_calls.len(), 1, "{one:?}");
    }
}
