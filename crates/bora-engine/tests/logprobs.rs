//! Log-probabilities through the engine: of the prompt (equal to what `perplexity` scores for
//! the same tokens), and of the generated tokens (the model's own, before any mask: greedy
//! decoding picks the top one; a token the request forbids still shows as the most likely),
//! sent before the text they release.

use bora_engine::chat::render;
use bora_engine::{
    load_model, perplexity, Completion, Event, ForbidTokens, ModelOptions, ModelSource,
    ProcessorFactory, TokenLogprobs,
};

mod common;
use common::{demo_engine as engine, user_request};

fn request(text: &str) -> Completion {
    user_request(text, 12)
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog, twice.";

#[test]
fn prompt_logprobs_are_the_perplexity_of_the_prompt() {
    let engine = engine();
    let mut c = request(TEXT);
    c.prompt_logprobs = Some(3);
    c.max_tokens = Some(2);
    let r = engine.chat_blocking(&c).unwrap();
    let scored = r.choices[0]
        .prompt_logprobs
        .clone()
        .expect("prompt logprobs");

    let ids = render(engine.chat_format(), engine.tokenizer(), &c.chat).unwrap();
    assert_eq!(
        scored.len(),
        ids.len() - 1,
        "every prompt token but the first"
    );
    let got: Vec<u32> = scored.iter().map(|t| t.chosen.token_id).collect();
    assert_eq!(got, ids[1..]);

    let loaded = load_model(&ModelSource::Demo, &ModelOptions::default(), &mut |_| {}).unwrap();
    let p = perplexity(&loaded.model, &ids, ids.len()).unwrap();
    for (i, (t, nll)) in scored.iter().zip(&p.token_nll).enumerate() {
        let d = (t.chosen.logprob as f64 + nll).abs();
        assert!(
            d < 1e-4,
            "position {}: {} vs {}",
            i + 1,
            t.chosen.logprob,
            -nll
        );
        assert_eq!(t.top.len(), 3);
        assert!(t.top[0].logprob >= t.chosen.logprob);
    }

    // Asked again, when the prompt's blocks are in the prefix cache: the same scores.
    let again = engine.chat_blocking(&c).unwrap();
    assert_eq!(again.choices[0].prompt_logprobs, Some(scored));
    // A request that does not ask gets none.
    let plain = engine.chat_blocking(&request(TEXT)).unwrap();
    assert_eq!(plain.choices[0].prompt_logprobs, None);
    assert_eq!(plain.choices[0].logprobs, None);
}

fn check_sorted(t: &TokenLogprobs) {
    assert!(
        t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
        "{t:?}"
    );
    let mass: f64 = t.top.iter().map(|l| (l.logprob as f64).exp()).sum();
    assert!(mass <= 1.0 + 1e-5, "{mass}");
}

#[test]
fn greedy_tokens_are_the_top_logprob_and_come_before_their_text() {
    let engine = engine();
    let mut c = request("Tell me about foxes.");
    c.logprobs = Some(5);
    let mut stream = engine.chat(&c).unwrap();
    let (mut text, mut scored, mut order_ok) = (String::new(), Vec::new(), true);
    let mut usage = None;
    while let Some(e) = stream.next_blocking() {
        match e {
            Event::Logprobs { content, .. } => scored.extend(content),
            Event::Delta { text: t, .. } => {
                // Text never runs ahead of the log-probabilities of the tokens it comes from.
                let decoded = engine
                    .tokenizer()
                    .decode(
                        &scored
                            .iter()
                            .map(|s: &TokenLogprobs| s.chosen.token_id)
                            .collect::<Vec<_>>(),
                    )
                    .unwrap();
                text.push_str(&t);
                order_ok &= decoded.trim_start().len() >= text.trim_start().len();
            }
            Event::Done { usage: u } => usage = Some(u),
            _ => {}
        }
    }
    assert!(order_ok);
    let usage = usage.unwrap();
    assert_eq!(scored.len(), usage.completion_tokens);
    for t in &scored {
        assert_eq!(t.top.len(), 5);
        assert_eq!(t.top[0].token_id, t.chosen.token_id, "{t:?}");
        assert_eq!(t.top[0].logprob, t.chosen.logprob);
        assert_eq!(
            t.chosen.bytes,
            engine.tokenizer().token_bytes(t.chosen.token_id)
        );
        check_sorted(t);
    }
    let ids: Vec<u32> = scored.iter().map(|t| t.chosen.token_id).collect();
    assert_eq!(
        engine.tokenizer().decode(&ids).unwrap().trim_start(),
        text.trim_start()
    );

    // Collected whole: the same log-probabilities.
    let whole = engine.chat_blocking(&c).unwrap();
    assert_eq!(whole.choices[0].logprobs.as_ref(), Some(&scored));
}

#[test]
fn logprobs_are_the_models_before_any_mask() {
    let engine = engine();
    let mut c = request("Tell me about foxes.");
    c.max_tokens = Some(1);
    c.logprobs = Some(2);
    let free = engine.chat_blocking(&c).unwrap();
    let first = free.choices[0].logprobs.as_ref().unwrap()[0].clone();
    // Forbid the model's first choice: the next best is sampled, and the reported numbers are
    // still the model's (the forbidden token stays on top).
    let banned = first.chosen.token_id;
    c.processors.push(ProcessorFactory::new(move || {
        Box::new(ForbidTokens(vec![banned]))
    }));
    let masked = engine.chat_blocking(&c).unwrap();
    let got = masked.choices[0].logprobs.as_ref().unwrap()[0].clone();
    assert_eq!(got.top, first.top);
    assert_eq!(got.chosen.token_id, first.top[1].token_id);
    assert_eq!(got.chosen.logprob, first.top[1].logprob);
}

#[test]
fn too_many_alternatives_are_refused_by_name() {
    let engine = engine();
    let mut c = request("x");
    c.logprobs = Some(21);
    let e = engine.chat(&c).err().expect("refused");
    assert!(e.to_string().contains("top_logprobs"), "{e}");
    let mut c = request("x");
    c.prompt_logprobs = Some(99);
    let e = engine.chat(&c).err().expect("refused");
    assert!(e.to_string().contains("top_prompt_logprobs"), "{e}");
}
