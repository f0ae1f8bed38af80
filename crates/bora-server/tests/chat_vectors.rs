//! Chat requests rendered exactly as mistral-common renders them (models/chat/vectors.json,
//! made by models/gen_chat_vectors.py): the same token ids, or the same exception class and
//! message. The requests go in as the SDKs send them, through the wire parser.

use std::path::PathBuf;

use bora_engine::chat::{render, ChatFormat};
use bora_engine::Tokenizer;
use bora_server::parse_chat_request;
use serde_json::Value;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn tokenizer(format: &str) -> Tokenizer {
    Tokenizer::from_file(&models().join(format!("tokenizers/tokenizer.model.{format}"))).unwrap()
}

#[test]
fn chat_vectors_match_mistral_common() {
    let text = std::fs::read_to_string(models().join("chat/vectors.json")).unwrap();
    let vectors: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(
        vectors.len() >= 60,
        "the issue asks for at least 60 vectors"
    );
    let toks = [("v1", tokenizer("v1")), ("v3", tokenizer("v3"))];
    let mut failures = Vec::new();
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let fmt = v["format"].as_str().unwrap();
        let tok = &toks.iter().find(|(f, _)| *f == fmt).unwrap().1;
        let format: ChatFormat = fmt.parse().unwrap();
        let req =
            parse_chat_request(&v["request"].to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = render(format, tok, &req);
        let expect = &v["expect"];
        match (got, expect.get("tokens")) {
            (Ok(ids), Some(want)) => {
                let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
                if ids != want {
                    failures.push(format!(
                        "{name}: ids differ\n  got  {ids:?}\n  want {want:?}\n  text {}",
                        expect["text"]
                    ));
                }
            }
            (Ok(ids), None) => failures.push(format!(
                "{name}: rendered {} tokens, expected {}",
                ids.len(),
                expect["error"]
            )),
            (Err(e), Some(_)) => {
                failures.push(format!("{name}: {}: {e}, expected tokens", e.class()))
            }
            (Err(e), None) => {
                let (class, msg) = (
                    expect["error"]["class"].as_str().unwrap(),
                    expect["error"]["message"].as_str().unwrap(),
                );
                // Schema errors carry the JSON Schema library's own wording; the class must match.
                let same_msg = class == "InvalidToolSchemaException" || e.to_string() == msg;
                if e.class() != class || !same_msg {
                    failures.push(format!(
                        "{name}: got {}: {e}\n  want {class}: {msg}",
                        e.class()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn random_strings_encode_like_sentencepiece() {
    let text = std::fs::read_to_string(models().join("chat/spm_strings.json")).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    // Mixtral 8x7B's tokenizer from its sentencepiece model and from the converted
    // tokenizer.json of the fixtures must agree with sentencepiece alike.
    let v1_json =
        Tokenizer::from_file(&models().join("fixtures/tiny-mixtral/tokenizer.json")).unwrap();
    // And from the tokenizer-only GGUF files llama.cpp's converter made of the same models.
    let gguf = |v: &str| {
        Tokenizer::from_gguf_file(&models().join(format!("fixtures/gguf/vocab-{v}.gguf"))).unwrap()
    };
    // The chat format follows from the GGUF vocabulary's control tokens.
    assert_eq!(ChatFormat::detect(&gguf("v1")), ChatFormat::V1);
    assert_eq!(ChatFormat::detect(&gguf("v3")), ChatFormat::V3);
    for (fmt, tok) in [
        ("v1", tokenizer("v1")),
        ("v1", v1_json),
        ("v1", gguf("v1")),
        ("v3", tokenizer("v3")),
        ("v3", gguf("v3")),
    ] {
        let mut bad = Vec::new();
        for r in &rows {
            let s = r["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(r[fmt].clone()).unwrap();
            let got = tok.encode(s).unwrap();
            if got != want {
                bad.push(format!("{s:?}: {got:?} != {want:?}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{fmt}: {} of {} strings differ:\n{}",
            bad.len(),
            rows.len(),
            bad[..bad.len().min(10)].join("\n")
        );
    }
}
