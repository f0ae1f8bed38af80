//! Constrained decoding on the demo models (random weights; Mixtral 8x7B's v1 tokenizer with
//! bora's v1 tool format, and 8x22B's v3 tokenizer with its `[TOOL_CALLS]` token): seeded
//! sampled answers under JSON mode, JSON schemas and forced tool calls parse and validate.
//! `BORA_CONSTRAINED_REQUESTS` sets the requests per case (12; tests/run runs 200 in release).
//! Not in a plain `cargo test` (see the crate's Cargo.toml): `--test constrained` runs it.

use bora_engine::chat::{ChatRequest, Content, Message, Tool};
use bora_engine::constrain::{Constraint, ToolChoice};
use bora_engine::{
    Completion, CompletionResult, Engine, EngineConfig, FinishReason, ModelOptions, ModelSource,
    SamplingParams,
};
use serde_json::{json, Value};

fn requests() -> u64 {
    std::env::var("BORA_CONSTRAINED_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12)
}

/// Both demos: v1 and v3 tokenizers.
fn engines() -> Vec<Engine> {
    let v3 = bora_engine::demo_v3_model_dir().expect("the v3 demo is written");
    vec![
        Engine::load(
            &ModelSource::Demo,
            &ModelOptions::default(),
            EngineConfig::default(),
        )
        .expect("the demo model loads"),
        Engine::load(
            &ModelSource::Dir(v3),
            &ModelOptions::default(),
            EngineConfig::default(),
        )
        .expect("the v3 demo loads"),
    ]
}

fn engine() -> Engine {
    Engine::load(
        &ModelSource::Demo,
        &ModelOptions::default(),
        EngineConfig::default(),
    )
    .expect("the demo model loads")
}

fn request(constraint: Constraint, seed: u64, max_tokens: usize) -> Completion {
    let mut c = Completion::new(ChatRequest {
        messages: vec![Message::User {
            content: Some(Content::Text("Answer in JSON, please.".into())),
        }],
        tools: Vec::new(),
    });
    c.sampling = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    c.seed = Some(seed);
    c.max_tokens = Some(max_tokens);
    // The request's fields that give this constraint (`Completion::constraint`).
    match constraint {
        Constraint::Json(schema) => c.response_format = Some(schema),
        Constraint::Tools {
            tools,
            choice,
            parallel,
            text_json,
        } => {
            c.chat.tools = tools;
            c.tool_choice = choice;
            c.parallel_tool_calls = parallel;
            c.response_format = text_json;
        }
    }
    c
}

/// Runs REQUESTS seeded requests at once; returns their results.
fn run(engine: &Engine, constraint: &Constraint, max_tokens: usize) -> Vec<CompletionResult> {
    let streams: Vec<_> = (0..requests())
        .map(|seed| {
            engine
                .chat(&request(constraint.clone(), seed, max_tokens))
                .unwrap()
        })
        .collect();
    streams
        .into_iter()
        .map(|s| s.collect_blocking(1).unwrap())
        .collect()
}

fn validate(schema: &Value, v: &Value) {
    let validator = jsonschema::validator_for(schema).expect("a valid schema");
    assert!(
        validator.is_valid(v),
        "{v} does not validate against {schema}"
    );
}

#[test]
fn json_mode_and_schemas_give_valid_json() {
    let book = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "authors": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "year": {"type": "integer", "minimum": 1450, "maximum": 2100},
            "genre": {"enum": ["novel", "poetry", "essay"]},
        },
        "required": ["name", "authors", "year", "genre"],
        "additionalProperties": false,
    });
    // As pydantic emits a nested model: $defs and $ref.
    let nested = json!({
        "$defs": {"Author": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"], "additionalProperties": false}},
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 20}, "author": {"$ref": "#/$defs/Author"}, "rating": {"type": "number", "minimum": 0, "maximum": 5}},
        "required": ["title", "author", "rating"],
        "additionalProperties": false,
    });
    for engine in engines() {
        for schema in [json!({"type": "object"}), book.clone(), nested.clone()] {
            for r in run(&engine, &Constraint::Json(schema.clone()), 96) {
                let c = &r.choices[0];
                assert_eq!(c.finish_reason, Some(FinishReason::Stop), "{:?}", c.text);
                let v: Value = match serde_json::from_str(&c.text) {
                    Ok(v) => v,
                    // Valid JSON that a double cannot hold (an exponent past f64's range,
                    // which JSON's unbounded `number` admits; Python and JavaScript read it
                    // as ±inf): read unconverted, it must be an object, and only where the
                    // schema bounds no number.
                    Err(e) if e.to_string().starts_with("number out of range") => {
                        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&c.text)
                            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", c.text));
                        assert!(raw.get().starts_with('{'), "not an object: {:?}", c.text);
                        assert_eq!(schema, json!({"type": "object"}), "{:?}", c.text);
                        continue;
                    }
                    Err(e) => panic!("not JSON ({e}): {:?}", c.text),
                };
                validate(&schema, &v);
            }
        }
    }
}

#[test]
fn forced_tool_calls_are_valid_calls() {
    let tools = vec![
        Tool {
            name: "get_weather".into(),
            description: "Weather of a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}),
        },
        Tool {
            name: "add".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": -100, "maximum": 100}, "b": {"type": "integer", "minimum": -100, "maximum": 100}}, "required": ["a", "b"], "additionalProperties": false}),
        },
    ];
    for engine in engines() {
        for (choice, names) in [
            (ToolChoice::Required, vec!["get_weather", "add"]),
            (ToolChoice::Named("add".into()), vec!["add"]),
        ] {
            let c = Constraint::Tools {
                tools: tools.clone(),
                choice,
                parallel: false,
                text_json: None,
            };
            for r in run(&engine, &c, 96) {
                let ch = &r.choices[0];
                assert_eq!(
                    ch.finish_reason,
                    Some(FinishReason::ToolCalls),
                    "{:?}",
                    ch.text
                );
                assert_eq!(
                    ch.tool_calls.len(),
                    1,
                    "parallel_tool_calls false: one call"
                );
                let call = &ch.tool_calls[0];
                assert!(names.contains(&call.name.as_str()), "{}", call.name);
                assert_eq!(call.id.as_ref().map(|i| i.len()), Some(9));
                let args: Value = serde_json::from_str(&call.arguments).unwrap();
                let tool = tools.iter().find(|t| t.name == call.name).unwrap();
                validate(&tool.parameters, &args);
            }
        }
    }
}

#[test]
fn unsupported_schemas_and_unknown_tools_are_refused() {
    let engine = engine();
    let bad = Constraint::Json(
        json!({"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}),
    );
    assert!(engine.chat(&request(bad, 0, 16)).is_err());
    let named = Constraint::Tools {
        tools: vec![],
        choice: ToolChoice::Named("nope".into()),
        parallel: true,
        text_json: None,
    };
    let e = engine
        .chat(&request(named, 0, 16))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

/// Issue 16, item 5: tools whose arguments are open (any object) or unbounded numbers. The
/// grammar admits numbers beyond a double's range (`18e387223339`); an answer that ends is still
/// a tool call whose arguments are one JSON object, never text that ends with `stop` (what the
/// old parser made of them). A random model may write digits until `max_tokens`: such an answer
/// is cut (`length`), as any would be, and stays a minority.
#[test]
fn tool_calls_with_open_arguments_stay_tool_calls() {
    let tools = vec![
        Tool {
            name: "anything".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        },
        Tool {
            name: "scale".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"factor": {"type": "number"}, "offset": {"type": "integer"}}, "required": ["factor", "offset"], "additionalProperties": false}),
        },
    ];
    for engine in engines() {
        for choice in [ToolChoice::Required, ToolChoice::Named("scale".into())] {
            let c = Constraint::Tools {
                tools: tools.clone(),
                choice,
                parallel: false,
                text_json: None,
            };
            let results = run(&engine, &c, 96);
            let mut cut = 0;
            for r in &results {
                let ch = &r.choices[0];
                if ch.finish_reason == Some(FinishReason::Length) {
                    cut += 1;
                    continue;
                }
                assert_eq!(
                    ch.finish_reason,
                    Some(FinishReason::ToolCalls),
                    "{:?}",
                    ch.text
                );
                assert_eq!(ch.tool_calls.len(), 1, "{:?}", ch.text);
                let args = &ch.tool_calls[0].arguments;
                // One JSON object (read without converting its numbers).
                let raw: Box<serde_json::value::RawValue> = serde_json::from_str(args)
                    .unwrap_or_else(|e| panic!("arguments not JSON ({e}): {args}"));
                assert!(raw.get().starts_with('{'), "{args}");
            }
            assert!(
                cut * 10 <= results.len(),
                "{cut} of {} answers cut",
                results.len()
            );
        }
    }
}

/// Issue 16, items 1 and 6: schemas that crashed the process (an integer near -2^63 in an
/// `enum` or `const` overflowed the compiler's stack in an optimized build: tests/run runs
/// this file so) or that no finite value satisfies (answered with `{"` or nothing) are
/// refused with the reason, in `response_format` and in a tool's parameters alike.
#[test]
fn hostile_and_unsatisfiable_schemas_are_refused_with_the_reason() {
    let engine = engine();
    let cases = [
        (json!({"enum": [-9223372036854775808i64]}), "2^53"),
        (
            json!({"type": "object", "properties": {"n": {"const": -9223372036854775807i64}}}),
            "2^53",
        ),
        (
            json!({"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}}, "$ref": "#/$defs/n"}),
            "no finite JSON value",
        ),
        (json!({"$ref": "#"}), "no finite JSON value"),
    ];
    for (schema, why) in cases {
        let json = Constraint::Json(schema.clone());
        let tool = Constraint::Tools {
            tools: vec![Tool {
                name: "f".into(),
                description: String::new(),
                parameters: schema.clone(),
            }],
            choice: ToolChoice::Required,
            parallel: false,
            text_json: None,
        };
        for (c, names) in [(json, "response_format"), (tool, "tool `f`")] {
            let e = engine
                .chat(&request(c, 0, 16))
                .err()
                .unwrap_or_else(|| panic!("{schema} was accepted"))
                .to_string();
            assert!(e.contains(why) && e.contains(names), "{schema}: {e}");
        }
    }
    // The engine still answers.
    let ok = run(&engine, &Constraint::Json(json!({"enum": [1, 2]})), 8);
    assert!(ok
        .iter()
        .all(|r| ["1", "2"].contains(&r.choices[0].text.as_str())));
}
