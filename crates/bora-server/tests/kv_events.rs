//! KV events over ZeroMQ as vllm-router reads them: a SUB socket gets each batch as three frames
//! (topic, seq as 8 bytes big-endian, the msgpack batch) with seq counting from 0, and a DEALER
//! asking the replay socket from a seq gets every kept batch from there, then the end marker.

use std::time::Duration;

use bora_engine::KvEvent;
use bora_server::kv_events::{start_publisher, TcpEndpoint};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

fn stored(hash: u64, parent: Option<u64>) -> Vec<KvEvent> {
    vec![KvEvent::Stored {
        hash,
        parent,
        tokens: vec![1, 2, 3, 4],
    }]
}

/// The batch's first event's first block hash.
fn first_hash(payload: &[u8]) -> u64 {
    let v = rmpv::decode::read_value(&mut &payload[..]).unwrap();
    let ev = &v.as_array().unwrap()[1].as_array().unwrap()[0];
    let hashes = ev
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("block_hashes"))
        .unwrap()
        .1
        .clone();
    hashes.as_array().unwrap()[0].as_u64().unwrap()
}

/// The next message within `wait` ms, if one comes.
async fn recv(sub: &mut zeromq::SubSocket, wait: u64) -> Option<Vec<bytes::Bytes>> {
    let msg = tokio::time::timeout(Duration::from_millis(wait), sub.recv()).await;
    msg.ok().map(|m| m.unwrap().into_vec())
}

fn any_port() -> TcpEndpoint {
    "tcp://127.0.0.1:0".parse().unwrap()
}

fn seq(frame: &[u8]) -> i64 {
    i64::from_be_bytes(frame.try_into().unwrap())
}

#[tokio::test]
async fn batches_are_published_in_order_and_replayed_on_request() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ends = start_publisher(&any_port(), &any_port(), 4, rx)
        .await
        .unwrap();
    let mut sub = zeromq::SubSocket::new();
    sub.connect(&ends.publish).await.unwrap();
    sub.subscribe("").await.unwrap();
    // A PUB socket drops what it sends before a subscriber has joined: batches go out until
    // one arrives (the ones missed are what replay is for).
    let batch = |h: u64| stored(100 + h, h.checked_sub(1).map(|p| 100 + p));
    let mut sent = 0u64;
    let first = loop {
        assert!(sent < 100, "no batch reached the subscriber in 10 s");
        tx.send(batch(sent)).unwrap();
        sent += 1;
        if let Some(msg) = recv(&mut sub, 100).await {
            break msg;
        }
    };
    let mut got = vec![first];
    for _ in 0..2 {
        tx.send(batch(sent)).unwrap();
        sent += 1;
    }
    while got.len() < 3 {
        got.push(recv(&mut sub, 5000).await.expect("a batch within 5 s"));
    }
    let first_seq = seq(&got[0][1]);
    for (i, msg) in got.iter().enumerate() {
        assert_eq!(msg.len(), 3);
        assert!(msg[0].is_empty(), "the topic is empty, as vLLM's default");
        assert_eq!(seq(&msg[1]), first_seq + i as i64, "seqs are contiguous");
        assert_eq!(first_hash(&msg[2]), 100 + seq(&msg[1]) as u64);
    }
    assert_eq!(seq(&got[2][1]), sent as i64 - 1, "seq counts from 0");
    // Replay from seq 1: batches 1 and 2, then the end marker.
    let mut dealer = zeromq::DealerSocket::new();
    dealer.connect(&ends.replay).await.unwrap();
    let ask = ZmqMessage::try_from(vec![
        bytes::Bytes::new(),
        bytes::Bytes::copy_from_slice(&1u64.to_be_bytes()),
    ])
    .unwrap();
    dealer.send(ask).await.unwrap();
    let mut got = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), dealer.recv())
            .await
            .expect("a replay frame within 5 s")
            .unwrap()
            .into_vec();
        assert_eq!(msg.len(), 4, "[\"\", topic, seq, batch]");
        assert!(msg[0].is_empty());
        if seq(&msg[2]) == -1 {
            assert!(msg[1].is_empty() && msg[3].is_empty());
            break;
        }
        got.push((seq(&msg[2]), first_hash(&msg[3])));
    }
    let want: Vec<(i64, u64)> = (1..sent as i64).map(|s| (s, 100 + s as u64)).collect();
    assert_eq!(got, want);
}

/// A subscriber that asks for replays and never reads the answers (more than the 100,000
/// messages a ZeroMQ peer's queue holds) does not hold the publishing up.
#[tokio::test]
async fn a_replay_nobody_reads_does_not_stop_the_publishing() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ends = start_publisher(&any_port(), &any_port(), 4, rx)
        .await
        .unwrap();
    // 4,096 kept batches of about 2 KB.
    let big = |h: u64| {
        vec![KvEvent::Stored {
            hash: h,
            parent: None,
            tokens: vec![40_000; 400],
        }]
    };
    let mut sub = zeromq::SubSocket::new();
    sub.connect(&ends.publish).await.unwrap();
    sub.subscribe("").await.unwrap();
    for h in 0..4096 {
        tx.send(big(h)).unwrap();
    }
    // Marks until one arrives: every big batch before it is kept for replay by then.
    let mut h = 10_000;
    until_a_mark_arrives(&tx, &mut sub, &mut h).await;
    // A DEALER that speaks ZMTP 3.0 over a raw TCP stream, asks for a replay from seq 0, and
    // never reads a byte (a zeromq library would read into its own queue).
    let addr = ends.replay.trim_start_matches("tcp://").to_string();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut out = bora_tests::zmtp::dealer_greeting();
    // ["", first seq], 30 times: 122,880 messages.
    for _ in 0..30 {
        out.extend(bora_tests::zmtp::message(&[
            Vec::new(),
            0u64.to_be_bytes().to_vec(),
        ]));
    }
    tokio::io::AsyncWriteExt::write_all(&mut raw, &out)
        .await
        .unwrap();
    // Batches sent from now on reach the subscriber within 15 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    h = 20_000;
    let got = until_a_mark_arrives(&tx, &mut sub, &mut h).await;
    assert!(seq(&got[1]) > 4096);
    drop(raw);
}

/// Sends batches of hash `h`, `h + 1`, ... until one reaches `sub` (within 15 s), and returns it.
async fn until_a_mark_arrives(
    tx: &tokio::sync::mpsc::UnboundedSender<Vec<KvEvent>>,
    sub: &mut zeromq::SubSocket,
    h: &mut u64,
) -> Vec<bytes::Bytes> {
    let first = *h;
    let start = std::time::Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "publishing stalled"
        );
        tx.send(stored(*h, None)).unwrap();
        *h += 1;
        while let Some(msg) = recv(sub, 200).await {
            if first_hash(&msg[2]) >= first {
                return msg;
            }
        }
    }
}
