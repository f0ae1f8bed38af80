//! `min_tokens` and `repetition_penalty` with the meanings vLLM gives them, through the
//! engine: the end of sequence is held back until `min_tokens` tokens are out, and a token
//! seen in the prompt or the output is penalized (at a huge penalty, greedy decoding never
//! repeats one).

use bora_engine::{
    Completion, CompletionResult, Engine, EngineError, FinishReason, LogitsProcessor,
    ProcessorFactory,
};

mod common;
use common::{demo_engine as engine, user_request};

/// The request's whole answer, or the error of submitting it.
fn complete(engine: &Engine, c: Completion) -> Result<CompletionResult, EngineError> {
    engine.chat(&c)?.collect_blocking(c.n)
}

fn request(text: &str) -> Completion {
    user_request(text, 24)
}

/// Makes the end of sequence the model's first choice at every step.
struct WantsToEnd(u32);

impl LogitsProcessor for WantsToEnd {
    fn process(&mut self, _generated: &[u32], logits: &mut [f32]) {
        logits[self.0 as usize] = 1e4;
    }
}

fn ending(engine: &Engine, min_tokens: usize) -> (usize, Option<FinishReason>) {
    let eos = engine.tokenizer().specials().eos.expect("an end token");
    let mut c = request("Say something.");
    c.processors
        .push(ProcessorFactory::new(move || Box::new(WantsToEnd(eos))));
    c.min_tokens = min_tokens;
    let r = complete(engine, c).unwrap();
    (r.usage.completion_tokens, r.choices[0].finish_reason)
}

#[test]
fn min_tokens_holds_the_end_back() {
    let engine = engine();
    assert_eq!(ending(&engine, 0), (0, Some(FinishReason::Stop)));
    assert_eq!(ending(&engine, 5), (5, Some(FinishReason::Stop)));
    // More than max_tokens is refused, naming the field.
    let mut c = request("x");
    c.min_tokens = 25;
    match complete(&engine, c) {
        Err(EngineError::Sampling { name, .. }) => assert_eq!(name, "min_tokens"),
        other => panic!("{other:?}"),
    }
}

/// Keeps the tokens generated so far, as the processors see them.
struct Record(std::sync::Arc<std::sync::Mutex<Vec<u32>>>);

impl LogitsProcessor for Record {
    fn process(&mut self, generated: &[u32], _logits: &mut [f32]) {
        *self.0.lock().unwrap() = generated.to_vec();
    }
}

#[test]
fn a_huge_repetition_penalty_never_repeats_a_token() {
    let engine = engine();
    let text = "the the the and and of of a a";
    let prompt = engine.tokenizer().encode(text).unwrap();
    // The ids the model chose (all but the last, which no processor sees).
    let greedy = |penalty: f32| {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut c = request(text);
        c.repetition_penalty = penalty;
        let s = seen.clone();
        c.processors
            .push(ProcessorFactory::new(move || Box::new(Record(s.clone()))));
        complete(&engine, c).unwrap();
        let ids = seen.lock().unwrap().clone();
        ids
    };
    let plain = greedy(1.0);
    let penalized = greedy(1e4);
    assert_eq!(penalized.len(), 23);
    assert_ne!(plain, penalized);
    let mut once = std::collections::HashSet::new();
    for t in &penalized {
        assert!(once.insert(*t), "{t} repeated in {penalized:?}");
        assert!(!prompt.contains(t), "{t} of the prompt in {penalized:?}");
    }
    // Without the penalty the random model does repeat itself, or the test proves nothing.
    let distinct: std::collections::HashSet<_> = plain.iter().collect();
    assert!(distinct.len() < plain.len(), "{plain:?}");
    let mut c = request("x");
    c.repetition_penalty = 0.0;
    match complete(&engine, c) {
        Err(EngineError::Sampling { name, .. }) => assert_eq!(name, "repetition_penalty"),
        other => panic!("{other:?}"),
    }
}
