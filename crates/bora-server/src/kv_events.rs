//! KV-cache events in vLLM's wire format, for KV-aware routers (vllm-router's `kv_aware`,
//! llm-d, Dynamo): a batch is a MessagePack array `[ts, [event, ...], data_parallel_rank]` (the
//! rank is 0: one engine a replica), each event a map tagged
//! with its class name under `type` (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`). Block
//! hashes are bora's chain hashes as unsigned integers; routers use them only to chain a block
//! to its parent and to find it again when it is removed, and hash the tokens themselves.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bora_engine::KvEvent;
use rmpv::Value;

/// Where a block lives, in vLLM's words.
const MEDIUM: &str = "GPU";

/// A `BlockStored` being gathered: its hashes, its parent, its tokens, and its last hash.
struct Run {
    hashes: Vec<Value>,
    parent: Option<u64>,
    tokens: Vec<Value>,
    last: u64,
}

/// One batch of events, encoded: `[ts, events, 0]` with `ts` in seconds since the epoch.
/// Consecutive stored blocks that chain (each the parent of the next) go in one `BlockStored`,
/// as vLLM sends them.
pub fn encode_batch(ts: f64, events: &[KvEvent], block_size: usize) -> Vec<u8> {
    let mut out: Vec<Value> = Vec::new();
    let mut run: Option<Run> = None;
    let flush = |run: &mut Option<Run>, out: &mut Vec<Value>| {
        if let Some(Run {
            hashes,
            parent,
            tokens,
            ..
        }) = run.take()
        {
            out.push(map(
                "BlockStored",
                vec![
                    ("block_hashes", Value::Array(hashes)),
                    ("parent_block_hash", parent.map_or(Value::Nil, Value::from)),
                    ("token_ids", Value::Array(tokens)),
                    ("block_size", Value::from(block_size as u64)),
                    ("lora_id", Value::Nil),
                    ("medium", Value::from(MEDIUM)),
                    ("lora_name", Value::Nil),
                ],
            ));
        }
    };
    for ev in events {
        match ev {
            KvEvent::Stored {
                hash,
                parent,
                tokens,
            } => {
                let ids = tokens.iter().map(|&t| Value::from(t));
                match &mut run {
                    Some(r) if *parent == Some(r.last) => {
                        r.hashes.push(Value::from(*hash));
                        r.tokens.extend(ids);
                        r.last = *hash;
                    }
                    _ => {
                        flush(&mut run, &mut out);
                        run = Some(Run {
                            hashes: vec![Value::from(*hash)],
                            parent: *parent,
                            tokens: ids.collect(),
                            last: *hash,
                        });
                    }
                }
            }
            KvEvent::Removed { hash } => {
                flush(&mut run, &mut out);
                out.push(map(
                    "BlockRemoved",
                    vec![
                        ("block_hashes", Value::Array(vec![Value::from(*hash)])),
                        ("medium", Value::from(MEDIUM)),
                    ],
                ));
            }
            KvEvent::Cleared => {
                flush(&mut run, &mut out);
                out.push(map("AllBlocksCleared", Vec::new()));
            }
        }
    }
    flush(&mut run, &mut out);
    let batch = Value::Array(vec![Value::F64(ts), Value::Array(out), Value::from(0u32)]);
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut buf, &batch);
    buf
}

/// An event: a map with its class name under `type`, then its fields.
fn map(kind: &str, fields: Vec<(&str, Value)>) -> Value {
    let mut pairs = vec![(Value::from("type"), Value::from(kind))];
    pairs.extend(fields.into_iter().map(|(k, v)| (Value::from(k), v)));
    Value::Map(pairs)
}

/// Batches kept for replay: a subscriber that missed some asks for them again.
const REPLAY_BATCHES: usize = 4096;

/// The batches kept for replay, by seq.
type Kept = Arc<Mutex<VecDeque<(i64, bytes::Bytes)>>>;

/// A message built of `parts`.
fn frames(parts: Vec<bytes::Bytes>) -> Option<zeromq::ZmqMessage> {
    zeromq::ZmqMessage::try_from(parts).ok()
}

/// A seq as its frame: 8 bytes, big-endian.
fn seq_frame(seq: i64) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&seq.to_be_bytes())
}

/// How long one replay's answer may take to send (vllm-router waits 5 s for it).
const REPLAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The `seq` frame of the replay's end.
const END_SEQ: i64 = -1;

/// Where the events go: the PUB socket's endpoint and the replay ROUTER's, as bound.
#[derive(Debug, Clone)]
pub struct KvEventEndpoints {
    /// Subscribers connect here (frames: topic, seq as 8 bytes big-endian, the batch).
    pub publish: String,
    /// A DEALER sends `["", first seq as 8 bytes big-endian]` here and gets every kept batch
    /// from that one on (`["", topic, seq, batch]`), then `["", "", -1, ""]`.
    pub replay: String,
}

/// Where to bind an event socket: `tcp://HOST:PORT` as vLLM's KV-events config names one, HOST
/// an address, a name or `*` (every interface), PORT 0 for any free one. ZeroMQ's other
/// transports (ipc://, inproc://) are refused when parsed: bora publishes over TCP only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEndpoint {
    host: String,
    port: u16,
}

impl TcpEndpoint {
    /// The same host on the next port (`tcp://*:5557` -> `tcp://*:5558`, vLLM's pair of
    /// publisher and replay); any port where there is no next one or the port was any.
    pub fn next_port(&self) -> Self {
        let port = match self.port {
            0 | u16::MAX => 0,
            p => p + 1,
        };
        Self {
            host: self.host.clone(),
            port,
        }
    }
}

impl std::str::FromStr for TcpEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("tcp://").ok_or_else(|| {
            format!("`{s}` is not a TCP endpoint (tcp://HOST:PORT): bora publishes over TCP only")
        })?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port (tcp://HOST:PORT)"))?;
        let port = port
            .parse()
            .map_err(|_| format!("`{s}`: the port must be a number from 0 to 65535"))?;
        let host = match host {
            "" => return Err(format!("`{s}` has no host (tcp://HOST:PORT, or *)")),
            "*" => "0.0.0.0",
            h => h,
        };
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for TcpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp://{}:{}", self.host, self.port)
    }
}

/// Binds a PUB socket on `publish` and a replay ROUTER on `replay`, then publishes each list of
/// events from `rx` as one batch, as vLLM does. Returns the bound endpoints; the publishing runs
/// on the current tokio runtime until `rx` closes.
pub async fn start_publisher(
    publish: &TcpEndpoint,
    replay: &TcpEndpoint,
    block_size: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<KvEvent>>,
) -> zeromq::ZmqResult<KvEventEndpoints> {
    use zeromq::{Socket, SocketRecv, SocketSend};
    let mut pub_socket = zeromq::PubSocket::new();
    let publish = pub_socket.bind(&publish.to_string()).await?.to_string();
    let mut router = zeromq::RouterSocket::new();
    let replay = router.bind(&replay.to_string()).await?.to_string();
    // Publishing never waits on a subscriber (a PUB socket drops what a slow one cannot take);
    // replays run in a task of their own, so one that nobody reads holds up only replays.
    let kept: Kept = Arc::new(Mutex::new(VecDeque::new()));
    let shelf = kept.clone();
    tokio::spawn(async move {
        let mut seq: i64 = 0;
        while let Some(events) = rx.recv().await {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let payload = bytes::Bytes::from(encode_batch(ts, &events, block_size));
            if let Some(msg) = frames(vec![bytes::Bytes::new(), seq_frame(seq), payload.clone()]) {
                // No subscriber is not an error: the batch waits for a replay.
                let _ = pub_socket.send(msg).await;
            }
            let mut kept = shelf.lock().unwrap_or_else(|e| e.into_inner());
            kept.push_back((seq, payload));
            if kept.len() > REPLAY_BATCHES {
                kept.pop_front();
            }
            seq += 1;
        }
    });
    tokio::spawn(async move {
        while let Ok(asked) = router.recv().await {
            let parts = asked.into_vec();
            // [identity, "", first seq]
            let (Some(id), Some(start)) = (parts.first(), parts.get(2)) else {
                continue;
            };
            let Ok(start) = <[u8; 8]>::try_from(&start[..]) else {
                continue;
            };
            let start = i64::from_be_bytes(start);
            let answer: Vec<(bytes::Bytes, bytes::Bytes)> = {
                let kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.iter()
                    .filter(|(s, _)| *s >= start)
                    .map(|(s, payload)| (seq_frame(*s), payload.clone()))
                    .chain(std::iter::once((seq_frame(END_SEQ), bytes::Bytes::new())))
                    .collect()
            };
            // A subscriber that asks and does not read gets REPLAY_DEADLINE, then no more.
            let deadline = tokio::time::Instant::now() + REPLAY_DEADLINE;
            for (seq, payload) in answer {
                let empty = bytes::Bytes::new;
                let Some(msg) = frames(vec![id.clone(), empty(), empty(), seq, payload]) else {
                    continue;
                };
                match tokio::time::timeout_at(deadline, router.send(msg)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
    });
    Ok(KvEventEndpoints { publish, replay })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(buf: &[u8]) -> Value {
        rmpv::decode::read_value(&mut &buf[..]).unwrap()
    }

    fn field<'a>(ev: &'a Value, key: &str) -> &'a Value {
        ev.as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {key} in {ev}"))
    }

    #[test]
    fn endpoints_are_tcp_with_a_port_and_star_is_every_interface() {
        let e: TcpEndpoint = "tcp://*:5557".parse().unwrap();
        assert_eq!(e.to_string(), "tcp://0.0.0.0:5557");
        assert_eq!(e.next_port().to_string(), "tcp://0.0.0.0:5558");
        let e: TcpEndpoint = "tcp://[::1]:65535".parse().unwrap();
        assert_eq!(
            e.next_port().to_string(),
            "tcp://[::1]:0",
            "none after 65535"
        );
        let any: TcpEndpoint = "tcp://127.0.0.1:0".parse().unwrap();
        assert_eq!(any.next_port(), any, "any port's pair is any port");
        for (bad, says) in [
            ("ipc:///tmp/events", "TCP only"),
            ("inproc://events", "TCP only"),
            ("127.0.0.1:5557", "TCP only"),
            ("tcp://127.0.0.1", "no port"),
            ("tcp://127.0.0.1:99999", "from 0 to 65535"),
            ("tcp://127.0.0.1:x", "from 0 to 65535"),
            ("tcp://:5557", "no host"),
        ] {
            let err = bad.parse::<TcpEndpoint>().unwrap_err();
            assert!(err.contains(bad) && err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn chained_blocks_are_one_stored_event_and_removals_their_own() {
        let events = vec![
            KvEvent::Stored {
                hash: 10,
                parent: None,
                tokens: vec![1, 2],
            },
            KvEvent::Stored {
                hash: 11,
                parent: Some(10),
                tokens: vec![3, 4],
            },
            // Another sequence's block, chained to a block stored earlier.
            KvEvent::Stored {
                hash: 20,
                parent: Some(10),
                tokens: vec![5, 6],
            },
            KvEvent::Removed { hash: 11 },
            KvEvent::Cleared,
        ];
        let batch = decode(&encode_batch(1.5, &events, 2));
        let batch = batch.as_array().unwrap();
        assert_eq!(batch[0].as_f64(), Some(1.5));
        let evs = batch[1].as_array().unwrap();
        let kinds: Vec<&str> = evs
            .iter()
            .map(|e| field(e, "type").as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "BlockStored",
                "BlockStored",
                "BlockRemoved",
                "AllBlocksCleared"
            ]
        );
        let ints = |v: &Value| -> Vec<u64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect()
        };
        assert_eq!(ints(field(&evs[0], "block_hashes")), [10, 11]);
        assert!(field(&evs[0], "parent_block_hash").is_nil());
        assert_eq!(ints(field(&evs[0], "token_ids")), [1, 2, 3, 4]);
        assert_eq!(field(&evs[0], "block_size").as_u64(), Some(2));
        assert_eq!(ints(field(&evs[1], "block_hashes")), [20]);
        assert_eq!(field(&evs[1], "parent_block_hash").as_u64(), Some(10));
        assert_eq!(ints(field(&evs[2], "block_hashes")), [11]);
        // The fields vllm-router requires of each kind are all there.
        for key in ["lora_id", "medium", "lora_name"] {
            field(&evs[0], key);
        }
        field(&evs[2], "medium");
    }
}
