//! Chat format detection, parsing of generated output, and bora's tool format for v1 models.
//! (Rendering against mistral-common is tested with its vectors in bora-server's tests.)

use std::path::PathBuf;

use bora_engine::chat::{
    parse_output, render, ChatFormat, ChatRequest, Content, Message, ParsedOutput, Tool, ToolCall,
};
use bora_engine::Tokenizer;
use serde_json::json;

fn tok(v: &str) -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../models/tokenizers/tokenizer.model.{v}"));
    Tokenizer::from_file(&p).unwrap()
}

fn user(s: &str) -> Message {
    Message::User {
        content: Some(Content::Text(s.into())),
    }
}

#[test]
fn format_follows_the_tokenizer() {
    assert_eq!(ChatFormat::detect(&tok("v1")), ChatFormat::V1);
    assert_eq!(ChatFormat::detect(&tok("v3")), ChatFormat::V3);
    let v3 = tok("v3");
    assert_eq!(
        (
            v3.specials().inst,
            v3.specials().tool_calls,
            v3.specials().eos
        ),
        (Some(3), Some(5), Some(2))
    );
}

#[test]
fn v3_tool_calls_are_parsed_with_fresh_ids() {
    let t = tok("v3");
    // What Mixtral 8x22B emits for a call (mistral-common's ids, EOS removed; from
    // ../shared/design/mistral-api.md): [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    let ids = [
        5, 1501, 7567, 1629, 2032, 1113, 1295, 29498, 1537, 1991, 1316, 1113, 17452, 2032, 10598,
        19141, 2032, 1113, 4684, 1046, 29507, 1743, 29561,
    ];
    let ParsedOutput::ToolCalls(calls) = parse_output(ChatFormat::V3, &t, &ids).unwrap() else {
        panic!("expected tool calls")
    };
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].name.as_str(), calls[0].arguments.as_str()),
        ("get_weather", r#"{"city": "Paris"}"#)
    );
    let id = calls[0].id.clone().unwrap();
    assert!(
        id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    let ParsedOutput::ToolCalls(again) = parse_output(ChatFormat::V3, &t, &ids).unwrap() else {
        panic!()
    };
    assert_ne!(again[0].id, calls[0].id, "each call gets a fresh id");

    // Parallel calls, and plain text.
    let mut two = vec![5];
    two.extend(
        t.encode(
            r#"[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": [1, 2.5]}}]"#,
        )
        .unwrap(),
    );
    let ParsedOutput::ToolCalls(calls) = parse_output(ChatFormat::V3, &t, &two).unwrap() else {
        panic!()
    };
    assert_eq!(
        calls
            .iter()
            .map(|c| c.arguments.as_str())
            .collect::<Vec<_>>(),
        ["{}", r#"{"x": [1, 2.5]}"#]
    );
    assert_eq!(
        parse_output(ChatFormat::V3, &t, &[29473, 29549, 29491]).unwrap(),
        ParsedOutput::Text("4.".into())
    );
    // A marker followed by something that is not a list of calls stays text.
    let mut broken = vec![5];
    broken.extend(t.encode("[{\"name\": ").unwrap());
    assert!(matches!(
        parse_output(ChatFormat::V3, &t, &broken).unwrap(),
        ParsedOutput::Text(_)
    ));
}

#[test]
fn v1_tool_calls_are_parsed_from_text() {
    let t = tok("v1");
    let ids = t
        .encode(r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]"#)
        .unwrap();
    let ParsedOutput::ToolCalls(calls) = parse_output(ChatFormat::V1, &t, &ids).unwrap() else {
        panic!()
    };
    assert_eq!(calls[0].name, "get_weather");
    let ids = t.encode("The weather is fine.").unwrap();
    assert_eq!(
        parse_output(ChatFormat::V1, &t, &ids).unwrap(),
        ParsedOutput::Text("The weather is fine.".into())
    );
}

/// bora's documented tool format for v1 models, rendered and decoded back to text.
#[test]
fn v1_tools_render_in_the_documented_format() {
    let t = tok("v1");
    let weather = Tool {
        name: "get_weather".into(),
        description: "Get current weather".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    };
    let req = ChatRequest {
        messages: vec![
            Message::System {
                content: Some(Content::Text("Be brief.".into())),
            },
            user("Weather in Paris?"),
            Message::Assistant {
                content: None,
                tool_calls: Some(vec![ToolCall {
                    id: Some("abc123def".into()),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }]),
                prefix: false,
            },
            Message::Tool {
                content: Some(Content::Text("18C".into())),
                tool_call_id: Some("abc123def".into()),
                name: None,
            },
        ],
        tools: vec![weather],
    };
    let ids = render(ChatFormat::V1, &t, &req).unwrap();
    let tools = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Get current weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#;
    let want = [
        format!(
            "[INST] [AVAILABLE_TOOLS] {tools} [/AVAILABLE_TOOLS]\n{}\n\nBe brief.\n\nWeather in Paris? [/INST]",
            bora_engine::chat::V1_TOOL_INSTRUCTIONS
        ),
        r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}]"#.to_string(),
        r#"[INST] [TOOL_RESULTS] {"content": "18C", "call_id": "abc123def"} [/TOOL_RESULTS] [/INST]"#.to_string(),
    ];
    // Each segment is encoded on its own, after BOS; the assistant's ends with EOS.
    let mut expected = vec![1];
    expected.extend(t.encode(&want[0]).unwrap());
    expected.extend(t.encode(&want[1]).unwrap());
    expected.push(2);
    expected.extend(t.encode(&want[2]).unwrap());
    assert_eq!(ids, expected);
}
