//! Fuzzing on stable Rust (issue 16): request bodies from `tests/corpus/requests`, mutated by a
//! seeded generator, through the whole path a request takes before the model: the JSON parser
//! and the conversion into an engine request, the chat renderer (v1 and v3 tokenizers), the
//! schema checks and the grammar compiler, and a first mask. Nothing may panic or abort; a
//! refusal is a 4xx. JSON schemas from `tests/corpus/schemas` get the same. `BORA_FUZZ_CASES`
//! sets the cases (tests/fuzz.sh runs many more).

use std::path::PathBuf;
use std::time::Duration;

use bora_engine::chat::{render, ChatFormat};
use bora_engine::constrain::{Constraint, Grammars};
use bora_engine::Tokenizer;
use bora_server::parse_request;
use bora_tests::fuzz::{cases, corpus, run_cases, Mutator};
use bora_tests::zmtp::{dealer_greeting, message};
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

/// Issue 36, 2.15: replay requests from hostile peers: well-formed ZMTP carrying messages of
/// any shape (no frames, frames of the wrong length, seqs of any value), and the raw bytes of a
/// DEALER's greeting and request mutated (a broken greeting, a frame that claims a huge
/// length). None may stop the replay socket: after each batch of them, an honest DEALER asking
/// from seq 3 gets batches 3 to 7, then the end marker.
#[test]
fn mutated_replay_requests_never_stop_the_replays() {
    use bora_server::kv_events::start_publisher;
    use zeromq::{Socket, SocketRecv, SocketSend};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let any = || "tcp://127.0.0.1:0".parse().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ends = rt.block_on(start_publisher(&any(), &any(), 4, rx)).unwrap();
    for h in 0..8u64 {
        tx.send(vec![bora_engine::KvEvent::Removed { hash: h }])
            .unwrap();
    }
    let addr = ends.replay.trim_start_matches("tcp://").to_string();
    let honest = || {
        rt.block_on(async {
            let mut dealer = zeromq::DealerSocket::new();
            dealer.connect(&ends.replay).await.unwrap();
            let ask = vec![
                bytes::Bytes::new(),
                bytes::Bytes::copy_from_slice(&3i64.to_be_bytes()),
            ];
            dealer
                .send(zeromq::ZmqMessage::try_from(ask).unwrap())
                .await
                .unwrap();
            let mut seqs = Vec::new();
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), dealer.recv())
                    .await
                    .expect("the replay socket answers within 10 s")
                    .unwrap()
                    .into_vec();
                let s = i64::from_be_bytes(msg[2][..].try_into().unwrap());
                if s == -1 {
                    return seqs;
                }
                seqs.push(s);
            }
        })
    };
    // The publisher keeps the batches before it answers: the first honest ask may come early.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while honest() != (3..8).collect::<Vec<i64>>() {
        assert!(
            std::time::Instant::now() < deadline,
            "the batches were never kept"
        );
    }
    let mut checked = 0;
    run_cases("kv replay", cases(300), |seed| {
        let mut m = Mutator::new(seed);
        let seq = |m: &mut Mutator| -> Vec<u8> {
            let v = [0i64, -1, i64::MIN, i64::MAX, 7, 1 << 40][m.below(6)];
            let b = v.to_be_bytes();
            match m.below(4) {
                0 => b[..m.below(8)].to_vec(),
                1 => [&b[..], &b[..]].concat(),
                _ => b.to_vec(),
            }
        };
        let frames: Vec<Vec<u8>> = (0..m.below(5))
            .map(|i| if i == 1 { seq(&mut m) } else { m.bytes(b"") })
            .collect();
        let mut wire = [dealer_greeting(), message(&frames)].concat();
        if m.below(3) == 0 {
            wire = m.bytes(&wire);
        }
        rt.block_on(async {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(&wire).await;
                // Sometimes left open a moment (the answer, if any, is not read).
                if m.below(2) == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        if seed % 50 == 49 {
            assert_eq!(honest(), (3..8).collect::<Vec<i64>>(), "after seed {seed}");
            checked += 1;
        }
    });
    assert_eq!(honest(), (3..8).collect::<Vec<i64>>());
    eprintln!("kv replay: honest replays checked {checked} times");
}
