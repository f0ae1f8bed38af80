//! Predicted outputs: the answer with a prediction is the answer without it, whether the
//! prediction is right, partly right or wrong, greedy or sampled with a seed, with stop strings,
//! a JSON schema, several choices, streaming, and other requests in the same steps; a right
//! prediction is verified in few steps (its drafts are kept), a wrong one costs few rejections.

use bora_engine::{Completion, CompletionResult, Event, SamplingParams};

mod common;
use common::{demo_engine as engine, user_request as request};
use serde_json::json;

fn with_prediction(c: &Completion, p: &str) -> Completion {
    Completion {
        prediction: Some(p.to_string()),
        ..c.clone()
    }
}

fn texts(r: &CompletionResult) -> Vec<(String, Option<&'static str>)> {
    r.choices
        .iter()
        .map(|c| (c.text.clone(), c.finish_reason.map(|f| f.as_str())))
        .collect()
}

/// `text` with its middle third replaced.
fn partly(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let (a, b) = (chars.len() / 3, 2 * chars.len() / 3);
    let head: String = chars[..a].iter().collect();
    let tail: String = chars[b..].iter().collect();
    format!("{head} something else entirely {tail}")
}

#[test]
fn greedy_output_is_the_same_with_any_prediction() {
    let engine = engine();
    let c = request("Rewrite this paragraph, please.", 64);
    let plain = engine.chat_blocking(&c).unwrap();
    let answer = plain.choices[0].text.clone();
    assert_eq!(plain.usage.completion_tokens, 64);
    assert_eq!(plain.usage.accepted_prediction_tokens, 0);

    let right = engine.chat_blocking(&with_prediction(&c, &answer)).unwrap();
    assert_eq!(texts(&right), texts(&plain));
    assert_eq!(right.usage.completion_tokens, 64);
    // Most of it verified rather than generated. How many drafts each step takes follows the
    // measured step costs, and where the model split a word otherwise than the tokenizer the
    // rest of that step's drafts are rejected: optimized, 45 to 48 of 64 on one machine, 38 on
    // CI's; unoptimized, 48 and more. A prediction the engine ignored accepts none.
    assert!(
        right.usage.accepted_prediction_tokens >= 32,
        "{:?}",
        right.usage
    );

    let part = engine
        .chat_blocking(&with_prediction(&c, &partly(&answer)))
        .unwrap();
    assert_eq!(texts(&part), texts(&plain));
    assert!(
        part.usage.accepted_prediction_tokens >= 20,
        "{:?}",
        part.usage
    );

    let wrong = "Completely unrelated words about the weather in Lisbon in spring. ".repeat(4);
    let wrong = engine.chat_blocking(&with_prediction(&c, &wrong)).unwrap();
    assert_eq!(texts(&wrong), texts(&plain));
    assert!(
        wrong.usage.rejected_prediction_tokens <= 40,
        "{:?}",
        wrong.usage
    );
    assert_eq!(wrong.usage.completion_tokens, 64);
}

#[test]
fn sampling_stop_strings_choices_and_streaming_are_unchanged() {
    let engine = engine();
    let mut c = request("Tell me a story.", 40);
    c.sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        ..SamplingParams::default()
    };
    c.seed = Some(11);
    c.n = 2;
    let plain = engine.chat_blocking(&c).unwrap();
    let answer = plain.choices[0].text.clone();
    let predicted = engine.chat_blocking(&with_prediction(&c, &answer)).unwrap();
    assert_eq!(texts(&predicted), texts(&plain));
    assert!(predicted.usage.accepted_prediction_tokens > 0);

    // A stop string inside the predicted text ends both at the same place.
    let words: Vec<&str> = answer.split_whitespace().collect();
    if let Some(word) = words.get(words.len() / 2).filter(|w| w.len() > 2) {
        let mut s = c.clone();
        s.stop = vec![word.to_string()];
        let plain = engine.chat_blocking(&s).unwrap();
        let predicted = engine.chat_blocking(&with_prediction(&s, &answer)).unwrap();
        assert_eq!(texts(&predicted), texts(&plain));
    }

    // Streamed: the same text, piece by piece.
    let mut stream = engine.chat(&with_prediction(&c, &answer)).unwrap();
    let mut streamed = vec![String::new(); 2];
    while let Some(e) = stream.next_blocking() {
        if let Event::Delta { choice, text } = e {
            streamed[choice].push_str(&text);
        }
    }
    let want: Vec<String> = plain.choices.iter().map(|c| c.text.clone()).collect();
    assert_eq!(streamed, want);
}

#[test]
fn constrained_output_is_unchanged() {
    let engine = engine();
    let mut c = request("Give me a record.", 60);
    c.response_format = Some(json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12},
                       "kind": {"enum": ["a", "b", "c"]}},
        "required": ["name", "kind"], "additionalProperties": false
    }));
    let plain = engine.chat_blocking(&c).unwrap();
    let answer = plain.choices[0].text.clone();
    serde_json::from_str::<serde_json::Value>(&answer).expect("the grammar ends the JSON");
    for p in [
        answer.clone(),
        partly(&answer),
        "{\"name\": \"zz\"}".to_string(),
    ] {
        let predicted = engine.chat_blocking(&with_prediction(&c, &p)).unwrap();
        assert_eq!(texts(&predicted), texts(&plain), "prediction {p:?}");
    }
}

#[test]
fn batched_with_other_requests_the_answers_are_unchanged() {
    let engine = engine();
    let reqs: Vec<Completion> = (0..4)
        .map(|i| request(&format!("Request number {i}: say something."), 32))
        .collect();
    let plain: Vec<CompletionResult> = reqs
        .iter()
        .map(|c| engine.chat_blocking(c).unwrap())
        .collect();
    // Half of them with their answer as prediction, all in flight together.
    let streams: Vec<_> = reqs
        .iter()
        .zip(&plain)
        .enumerate()
        .map(|(i, (c, p))| {
            let c = if i % 2 == 0 {
                with_prediction(c, &p.choices[0].text)
            } else {
                c.clone()
            };
            engine.chat(&c).unwrap()
        })
        .collect();
    for (s, p) in streams.into_iter().zip(&plain) {
        let got = s.collect_blocking(1).unwrap();
        assert_eq!(texts(&got), texts(p));
    }
}

#[test]
fn a_huge_prediction_is_cut_to_what_the_context_can_use() {
    let engine = engine();
    let c = request("Say something.", 16);
    let plain = engine.chat_blocking(&c).unwrap();
    let huge = "no match here, ".repeat(400_000); // 6 MB
    let started = std::time::Instant::now();
    let got = engine.chat_blocking(&with_prediction(&c, &huge)).unwrap();
    assert_eq!(texts(&got), texts(&plain));
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
}

/// Issue 36, 2.16: a right prediction is used whatever ran before it and whatever the load. On
/// the tiny fixture, whose greedy answer is random text in mixed scripts (the prediction's text
/// need not tokenize to the ids generated), after right, half-right and wrong predictions have
/// been measured, and beside other requests, an exact prediction keeps drafts every time.
/// (Optimized, as tests/run also runs it: there the tiny model's steps cost so little that one
/// noisy measurement decided that drafts never pay, and none was tried again.)
#[test]
fn a_right_prediction_is_used_after_any_history_and_under_load() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures/tiny-mixtral");
    let engine = bora_engine::Engine::load(
        &bora_engine::ModelSource::Dir(dir),
        &bora_engine::ModelOptions::default(),
        bora_engine::EngineConfig::default(),
    )
    .expect("the fixture loads");
    let c = request("Hello, who are you?", 48);
    let answer = engine.chat_blocking(&c).unwrap().choices[0].text.clone();
    let noise: Vec<Completion> = (0..4)
        .map(|i| request(&format!("Other request {i}, running beside."), 48))
        .collect();
    for round in 0..6 {
        for p in [partly(&answer), "nothing like it at all ".repeat(5)] {
            let got = engine.chat_blocking(&with_prediction(&c, &p)).unwrap();
            assert_eq!(got.choices[0].text, answer);
        }
        // Alone on odd rounds, beside four other requests on even ones.
        let others: Vec<_> = if round % 2 == 0 {
            noise.iter().map(|n| engine.chat(n).unwrap()).collect()
        } else {
            Vec::new()
        };
        let right = engine.chat_blocking(&with_prediction(&c, &answer)).unwrap();
        assert_eq!(right.choices[0].text, answer);
        assert!(
            right.usage.accepted_prediction_tokens > 0,
            "round {round}: a right prediction was not used: {:?}",
            right.usage
        );
        for o in others {
            o.collect_blocking(1).unwrap();
        }
    }
}
