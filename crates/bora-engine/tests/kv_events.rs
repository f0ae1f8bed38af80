//! The prefix cache's changes as events (`EngineConfig::kv_events`, what `bora serve
//! --kv-events` publishes for KV-aware routers): every full block computed is stored once,
//! chained to the block before it, with its tokens; blocks evicted to make room are removed.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;

use bora_engine::chat::ChatRequest;
use bora_engine::*;
use bora_tests::{fixture, load};
use bora_weights::{Backend, WeightDType};

const BLOCK: usize = 4;

fn engine(blocks: usize, tx: mpsc::Sender<Vec<KvEvent>>) -> Engine {
    let model = load("tiny-mixtral", WeightDType::BF16, Backend::Host);
    let tok = Tokenizer::from_file(&fixture("tiny-mixtral").join("tokenizer.json")).unwrap();
    let config = EngineConfig {
        kv_budget: KvBudget::Blocks(blocks),
        block_size: BLOCK,
        kv_events: Some(tx.into()),
        ..EngineConfig::default()
    };
    Engine::new(model, tok, config).unwrap()
}

fn run(e: &Engine, prompt: &[u32]) {
    let req = Completion {
        max_tokens: Some(3),
        ..Completion::new(ChatRequest::default())
    };
    e.submit(prompt.to_vec(), &req)
        .unwrap()
        .collect_blocking(req.n)
        .unwrap();
}

fn prompt(e: &Engine, text: &str) -> Vec<u32> {
    let mut ids = vec![1];
    ids.extend(e.tokenizer().encode(text).unwrap());
    ids
}

#[test]
fn stored_blocks_chain_with_their_tokens_and_evictions_are_removed() {
    let (tx, rx) = mpsc::channel();
    let e = engine(16, tx);
    let a = prompt(
        &e,
        "The same long system prompt, then a first question about routing.",
    );
    run(&e, &a);
    // The same prompt again: its blocks are cached, nothing new is stored for them.
    run(&e, &a);
    let batches: Vec<Vec<KvEvent>> = rx.try_iter().collect();
    // Each list the sink was given is counted (what a router's log of seqs is checked with).
    assert_eq!(e.stats().kv_event_batches, batches.len() as u64);
    assert!(batches.iter().all(|b| !b.is_empty()));
    let events: Vec<KvEvent> = batches.into_iter().flatten().collect();
    // A new engine's cache is empty: its first event says so.
    assert_eq!(events.first(), Some(&KvEvent::Cleared));
    let mut by_hash: HashMap<u64, (Option<u64>, Vec<u32>)> = HashMap::new();
    for ev in &events {
        if let KvEvent::Stored {
            hash,
            parent,
            tokens,
        } = ev
        {
            assert_eq!(tokens.len(), BLOCK);
            assert!(
                by_hash.insert(*hash, (*parent, tokens.clone())).is_none(),
                "{hash} stored twice"
            );
        }
    }
    // The prompt's full blocks (generated tokens may add more), each chained to the one before.
    let full = (a.len() - 1) / BLOCK;
    let mut at = None;
    let mut chain: Vec<u32> = Vec::new();
    for k in 0..full {
        let (&hash, (_, tokens)) = by_hash
            .iter()
            .find(|(_, (p, t))| *p == at && t[..] == a[k * BLOCK..(k + 1) * BLOCK])
            .unwrap_or_else(|| panic!("block {k} of the prompt was not stored"));
        chain.extend_from_slice(tokens);
        at = Some(hash);
    }
    assert_eq!(chain, a[..full * BLOCK]);
    // Other prompts fill the 16-block pool: cached blocks are evicted, each removed once, and
    // only blocks that were stored.
    for i in 0..6 {
        run(
            &e,
            &prompt(
                &e,
                &format!("Another prompt, number {i}, with words of its own."),
            ),
        );
    }
    let mut stored: HashSet<u64> = by_hash.keys().copied().collect();
    let mut removed = HashSet::new();
    for ev in rx.try_iter().flatten() {
        match ev {
            // Stored again only after it was evicted.
            KvEvent::Stored { hash, .. } => assert!(stored.insert(hash), "{hash} stored twice"),
            KvEvent::Removed { hash } => {
                assert!(stored.contains(&hash), "{hash} removed but never stored");
                assert!(removed.insert(hash), "{hash} removed twice");
                stored.remove(&hash);
            }
            KvEvent::Cleared => {}
        }
    }
    assert!(!removed.is_empty(), "a full pool evicts cached blocks");
}

/// Issue 36, 2.14: the order made observable. The sink takes 200 ms before it counts a step's
/// stored blocks, on the engine thread: if an answer's end were sent before its step's events,
/// the caller would see the end while the count is still short, every time (reading a channel
/// after the fact would likely pass on the wrong order: the engine sends both within
/// microseconds).
#[test]
fn an_answers_end_follows_its_steps_events_every_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let stored = Arc::new(AtomicUsize::new(0));
    let counted = stored.clone();
    let sink = KvEventSink::new(move |events| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let n = events
            .iter()
            .filter(|ev| matches!(ev, KvEvent::Stored { .. }))
            .count();
        counted.fetch_add(n, Ordering::SeqCst);
    });
    let model = load("tiny-mixtral", WeightDType::BF16, Backend::Host);
    let tok = Tokenizer::from_file(&fixture("tiny-mixtral").join("tokenizer.json")).unwrap();
    let e = Engine::new(
        model,
        tok,
        EngineConfig {
            kv_budget: KvBudget::Blocks(64),
            block_size: BLOCK,
            kv_events: Some(sink),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let mut expected = 0;
    for (i, text) in [
        "A prompt of a few blocks, answered in one token.",
        "Another prompt, of other blocks than the first one.",
        "A third, longer prompt that fills a few more blocks than the others do.",
    ]
    .iter()
    .enumerate()
    {
        let p = prompt(&e, text);
        // One token: the step that computes the prompt also ends the answer.
        let req = Completion {
            max_tokens: Some(1),
            ..Completion::new(ChatRequest::default())
        };
        let mut stream = e.submit(p.clone(), &req).unwrap();
        expected += p.len() / BLOCK;
        loop {
            match stream.next_blocking() {
                Some(Event::Done { .. }) => break,
                Some(Event::Error { message }) => panic!("{message}"),
                None => panic!("the stream ended without Done"),
                Some(_) => {}
            }
        }
        assert_eq!(
            stored.load(Ordering::SeqCst),
            expected,
            "answer {i} ended before its blocks were sent"
        );
    }
}
