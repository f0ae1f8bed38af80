//! Fuzzing on stable Rust (issue 16): request bodies from `tests/corpus/requests`, mutated by a
//! seeded generator, through the whole path a request takes before the model: the JSON parser
//! and the conversion into an engine request, the chat renderer (v1 and v3 tokenizers), the
//! schema checks and the grammar compiler, and a first mask. Nothing may panic or abort; a
//! refusal is a 4xx. JSON schemas from `tests/corpus/schemas` get the same. `BORA_FUZZ_CASES`
//! sets the cases (tests/fuzz.sh runs many more).

use std::path::PathBuf;

use bora_engine::chat::{render, ChatFormat};
use bora_engine::constrain::{Constraint, Grammars};
use bora_engine::Tokenizer;
use bora_server::parse_request;
use bora_tests::fuzz::{cases, corpus, run_cases, Mutator};
use serde_json::Value;

fn tokenizers() -> Vec<(ChatFormat, Tokenizer, Grammars)> {
    [("v1", ChatFormat::V1), ("v3", ChatFormat::V3)]
        .into_iter()
        .map(|(v, f)| {
            let t = Tokenizer::from_file(
                &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../models/tokenizers")
                    .join(format!("tokenizer.model.{v}")),
            )
            .unwrap();
            let g = Grammars::new(&t, 2, f).unwrap();
            (f, t, g)
        })
        .collect()
}

/// A constraint that compiled gives a mask: at least one token (or the end) is allowed.
fn first_mask(g: &Grammars, c: &Constraint, vocab: usize) {
    if let Ok(f) = g.processor(c, 64) {
        let mut p = f.make();
        let mut logits = vec![0f32; vocab];
        p.process(&[], &mut logits);
        assert!(
            logits.iter().any(|l| l.is_finite()),
            "an empty mask for {c:?}"
        );
    }
}

#[test]
fn mutated_requests_are_answered_or_refused_never_crash() {
    let seeds = corpus("requests");
    let toks = tokenizers();
    let (mut accepted, mut rendered) = (0u64, 0u64);
    run_cases("requests", cases(1000), |seed| {
        let mut m = Mutator::new(seed);
        let (_, bytes) = &seeds[m.below(seeds.len())];
        let body = if m.below(4) == 0 {
            m.bytes(bytes)
        } else {
            let v: Value = serde_json::from_slice(bytes).unwrap();
            serde_json::to_vec(&m.json(&v)).unwrap()
        };
        let strict = m.below(2) == 0;
        let parsed = match parse_request(&body, strict) {
            Ok(p) => p,
            Err(e) => {
                assert!(
                    e.status.is_client_error(),
                    "{} for {}",
                    e.status,
                    String::from_utf8_lossy(&body)
                );
                assert!(!e.message.is_empty());
                return;
            }
        };
        accepted += 1;
        for (format, tok, grammars) in &toks {
            rendered += u64::from(render(*format, tok, &parsed.completion.chat).is_ok());
            if let Some(c) = &parsed.completion.constraint() {
                first_mask(grammars, c, tok.vocab_size());
            }
        }
    });
    eprintln!("requests: {accepted} accepted, {rendered} renderings");
    // The mutations leave a share of the requests valid, so that the later stages are reached.
    assert!(accepted > 0 && rendered > 0);
}

#[test]
fn mutated_schemas_compile_or_are_refused_never_crash() {
    let seeds = corpus("schemas");
    let toks = tokenizers();
    run_cases("schemas", cases(500), |seed| {
        let mut m = Mutator::new(seed);
        let (_, bytes) = &seeds[m.below(seeds.len())];
        let v: Value = serde_json::from_slice(bytes).unwrap();
        let schema = if seed < seeds.len() as u64 {
            v
        } else {
            m.json(&v)
        };
        let (_, tok, g) = &toks[m.below(toks.len())];
        first_mask(g, &Constraint::Json(schema), tok.vocab_size());
    });
}
