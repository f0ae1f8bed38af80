"""KV-cache events (`bora serve --kv-events`) read the way vLLM's example subscriber
(examples/online_serving/kv_events_subscriber.py) reads vLLM's own: pyzmq SUB for the stream,
the replay socket for missed batches, each batch decoded by msgspec into typed structs of the
shape vllm.distributed.kv_events declares (a batch an array, its events maps tagged by `type`).
A field bora sent that vLLM's types do not have, or of another type, fails the decoding.
"""

import json
import re
import time
import urllib.request

import msgspec
import pytest
import zmq

from conftest import MODEL, Server

BLOCK = 16


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True, forbid_unknown_fields=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


DECODER = msgspec.msgpack.Decoder(type=KVEventBatch)


class Subscriber:
    """The server's PUB stream on one socket, its replay on another (endpoints from its log)."""

    def __init__(self, server: Server):
        line = next(l for l in server.lines if "KV events on" in l)
        self.publish, self.replay = re.search(r"KV events on (\S+) \(replay (\S+),", line).groups()
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.connect(self.publish)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.received = {}

    def drain(self, quiet: float = 1.0):
        """Reads the stream until it has been quiet for `quiet` seconds."""
        while self.sub.poll(int(quiet * 1000)):
            topic, seq, payload = self.sub.recv_multipart()
            assert topic == b""
            self.received[int.from_bytes(seq, "big", signed=True)] = payload

    def replayed(self, start: int = 0):
        """Every kept batch from `start` on, from the replay socket. A DEALER asks, as
        vllm-router does: the answer is one message a batch, which a REQ socket (the example's)
        would cut to the first."""
        dealer = self.ctx.socket(zmq.DEALER)
        try:
            dealer.connect(self.replay)
            dealer.send_multipart([b"", start.to_bytes(8, "big")])
            got = {}
            while True:
                assert dealer.poll(5000), "the replay socket did not answer within 5 s"
                frames = dealer.recv_multipart()
                # [delimiter, topic, seq, payload]; the end is seq -1 with an empty topic and
                # payload.
                assert len(frames) == 4 and frames[0] == b"", frames
                _, topic, seq, payload = frames
                seq = int.from_bytes(seq, "big", signed=True)
                if seq == -1:
                    assert topic == b"" and payload == b""
                    return got
                got[seq] = payload
        finally:
            dealer.close(linger=0)

    def close(self):
        self.ctx.destroy(linger=0)


def chat(server, messages, max_tokens=4):
    body = json.dumps({"model": MODEL, "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions", body,
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def render(server, messages):
    body = json.dumps({"model": MODEL, "messages": messages}).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions/render", body,
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["token_ids"]


def decoded(batches):
    """The batches in seq order, which must run from 0 without a gap, decoded."""
    assert sorted(batches) == list(range(len(batches)))
    return [DECODER.decode(batches[s]) for s in range(len(batches))]


def conversation(n, words=20):
    text = " ".join(f"word{(n * 7 + i) % 97}" for i in range(words))
    return [{"role": "system", "content": f"You are agent {n}."},
            {"role": "user", "content": text}]


@pytest.fixture()
def events_server():
    s = Server("--kv-events", "tcp://127.0.0.1:0")
    yield s
    assert s.stop() == 0


def test_stored_blocks_are_the_prompts_blocks_chained(events_server):
    sub = Subscriber(events_server)
    try:
        first = conversation(1)
        second = first[:1] + [{"role": "user", "content": first[1]["content"] + " and more"}]
        chat(events_server, first)
        sub.drain()
        chat(events_server, second)
        sub.drain()
        replay = sub.replayed()
        # What the stream delivered is what the replay keeps (a late join misses a prefix).
        for seq, payload in sub.received.items():
            assert replay[seq] == payload
        batches = decoded(replay)
        assert all(b.data_parallel_rank == 0 for b in batches)
        # A new replica's cache is empty: its first event says so (a router then forgets what
        # a replica that ran there before held).
        assert isinstance(batches[0].events[0], AllBlocksCleared)
        stored = [e for b in batches for e in b.events if isinstance(e, BlockStored)]
        assert stored and not any(isinstance(e, BlockRemoved) for b in batches for e in b.events)
        known = {}
        for e in stored:
            assert e.block_size == BLOCK and e.medium == "GPU"
            assert len(e.token_ids) == BLOCK * len(e.block_hashes)
            assert e.parent_block_hash is None or e.parent_block_hash in known
            prefix = known[e.parent_block_hash] if e.parent_block_hash is not None else []
            for i, h in enumerate(e.block_hashes):
                assert h not in known, "a block stored twice"
                prefix = prefix + e.token_ids[i * BLOCK:(i + 1) * BLOCK]
                known[h] = prefix
        # Each prompt's full blocks are a chain of stored blocks from the first one.
        for messages in (first, second):
            ids = render(events_server, messages)
            full = len(ids) // BLOCK * BLOCK
            assert full >= 2 * BLOCK
            assert any(p[:full] == ids[:full] for p in known.values()), messages
        # The second prompt shares the first's leading blocks: they were stored once.
        ids1, ids2 = (render(events_server, m) for m in (first, second))
        common = next(i for i in range(len(ids1)) if ids1[i] != ids2[i]) // BLOCK * BLOCK
        assert common >= BLOCK
        leading = [p for p in known.values() if len(p) <= common and p == ids2[:len(p)]]
        assert len(leading) == common // BLOCK
    finally:
        sub.close()


def test_evicted_blocks_are_removed_once_after_being_stored():
    # Two sequences at most keep no more blocks than two full contexts hold (2 x 128 / 16):
    # twelve different prompts of about 100 tokens fill them and evict the oldest.
    s = Server("--kv-events", "tcp://127.0.0.1:0", "--max-seqs", "2")
    sub = Subscriber(s)
    try:
        for n in range(12):
            chat(s, conversation(n, words=28), max_tokens=2)
        sub.drain()
        batches = decoded(sub.replayed())
        live, removed = set(), 0
        for b in batches:
            for e in b.events:
                if isinstance(e, BlockStored):
                    assert not live & set(e.block_hashes), "a live block stored again"
                    live |= set(e.block_hashes)
                elif isinstance(e, BlockRemoved):
                    assert e.medium == "GPU"
                    for h in e.block_hashes:
                        assert h in live, "a block removed that was not stored"
                        live.remove(h)
                        removed += 1
        assert removed > 0, "nothing was evicted"
        assert len(live) <= 16
    finally:
        sub.close()
        assert s.stop() == 0


def test_a_subscriber_that_missed_batches_gets_them_replayed(events_server):
    """The example's recovery: a gap in seq is filled from the replay socket."""
    chat(events_server, conversation(3))
    time.sleep(0.5)
    sub = Subscriber(events_server)  # joins late: seq 0 went out before it
    try:
        # New prompts until the subscriber has joined and gets one.
        for n in range(4, 40):
            chat(events_server, conversation(n))
            sub.drain(0.3)
            if sub.received:
                break
        assert sub.received, "nothing published after the subscriber joined"
        first = min(sub.received)
        assert first > 0
        missed = sub.replayed(0)
        assert sorted(k for k in missed if k < first) == list(range(first))
        decoded({**missed, **sub.received})
    finally:
        sub.close()
