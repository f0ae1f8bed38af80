//! KV events over ZeroMQ as vllm-router reads them: a SUB socket gets each batch as three frames
//! (topic, seq as 8 bytes big-endian, the msgpack batch) with seq counting from 0, and a DEALER
//! asking the replay socket from a seq gets every kept batch from there, then the end marker.

use std::time::Duration;

use bora_engine::KvEvent;
use bora_server::kv_events::start_publisher;
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

fn seq(frame: &[u8]) -> i64 {
    i64::from_be_bytes(frame.try_into().unwrap())
}

#[tokio::test]
async fn batches_are_published_in_order_and_replayed_on_request() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ends = start_publisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", 4, rx)
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
