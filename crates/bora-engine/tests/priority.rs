//! Batch work runs in what interactive requests leave: with the running set full of batch
//! sequences, an interactive request is admitted at once (a batch sequence goes back to the
//! queue, to be recomputed) and gets its first token within two engine steps; the batch
//! sequences still finish, with the answers they would have had alone (`deterministic`).

use bora_engine::{
    CompletionStream, Engine, EngineConfig, Event, ModelOptions, ModelSource, Priority,
};

mod common;
use common::user_request;

/// Waits for the first text; returns it.
fn first_token(s: &mut CompletionStream) -> String {
    while let Some(e) = s.next_blocking() {
        if let Event::Delta { text, .. } = e {
            return text;
        }
    }
    panic!("no token");
}

#[test]
fn an_interactive_request_does_not_wait_for_batch_work() {
    let engine = Engine::load(
        &ModelSource::Demo,
        &ModelOptions::default(),
        EngineConfig {
            max_running: 2,
            // A preempted sequence is recomputed by prefill: with batch-invariant numerics its
            // keys and values have the bits decode gave them, so its answer is the one it would
            // have had alone.
            deterministic: true,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let mut batch = user_request("Write a long story.", 120);
    batch.priority = Priority::Batch;
    let alone = engine.chat_blocking(&batch).unwrap();

    let mut jobs: Vec<CompletionStream> = (0..3).map(|_| engine.chat(&batch).unwrap()).collect();
    let mut heads = vec![
        first_token(&mut jobs[0]),
        first_token(&mut jobs[1]),
        String::new(),
    ];
    let before = engine.stats().steps;
    let mut now = engine.chat(&user_request("Quick question.", 4)).unwrap();
    first_token(&mut now);
    let after = engine.stats().steps;
    assert!(
        after - before <= 2,
        "first token after {} steps",
        after - before
    );
    drop(now);
    for (j, head) in jobs.into_iter().zip(heads.drain(..)) {
        let got = j.collect_blocking(1).unwrap();
        assert_eq!(head + &got.choices[0].text, alone.choices[0].text);
    }
}
