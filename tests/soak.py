#!/usr/bin/env python3
"""Soak test: N clients against a real `bora serve` for a set time, mixing plain and streamed
completions, JSON mode and schemas, forced tool calls, several choices, streams the client
closes early, and bad requests (malformed JSON, wrong types, unknown models, hostile schemas,
oversized bodies). Standard library only.

It counts statuses, checks every answer's shape (a malformed one is a failure), samples the
server's resident memory, and at the end checks that no KV block is still held.

Fails (exit 1) on any 5xx, any malformed answer, a refused connection, a leaked KV block, or
resident memory after warm-up (the first fifth of the run) growing more than 10%.

Usage: tests/soak.py [--seconds 120] [--clients 16] [--binary target/release/bora]
                     [--model bora-demo-v3] [--kv-cache-mib 64] [--json]
"""

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "year"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                       "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Adds",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                      "b": {"type": "integer", "minimum": 0, "maximum": 99}},
                       "required": ["a", "b"], "additionalProperties": False}}},
]
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge".split()


class Server:
    def __init__(self, binary, model, kv_mib):
        self.proc = subprocess.Popen(
            [binary, "serve", "--model", model, "--port", "0", "--kv-cache-mib", str(kv_mib)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.host = self.port = None
        deadline = time.time() + 300
        while self.port is None:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("bora serve exited:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on http://([0-9.]+):([0-9]+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
            if time.time() > deadline:
                raise RuntimeError("bora serve did not start")
        threading.Thread(target=self._drain, daemon=True).start()
        while True:
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("bora serve never became healthy")
            time.sleep(0.1)

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def conn(self, timeout=120):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path):
        c = self.conn(10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def metric(self, name):
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.kinds = Counter()
        self.by_kind = {}  # kind -> Counter of statuses
        self.malformed = []
        self.errors = []

    def status(self, kind, code):
        with self.lock:
            self.statuses[code] += 1
            self.kinds[kind] += 1
            self.by_kind.setdefault(kind, Counter())[code] += 1

    def bad(self, kind, why):
        with self.lock:
            if len(self.malformed) < 50:
                self.malformed.append(f"{kind}: {why}")
            else:
                self.malformed.append("...")


def text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def body(rng, kind, model):
    b = {"model": model, "messages": [{"role": "user", "content": text(rng, rng.randint(3, 40))}],
         "max_tokens": rng.randint(4, 48), "temperature": rng.choice([0, 0.7, 1.0]),
         "random_seed": rng.randint(0, 1 << 30)}
    if kind == "history":
        b["messages"] = [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": text(rng, 5)},
                         {"role": "assistant", "content": text(rng, 5)},
                         {"role": "user", "content": text(rng, 8)}]
    elif kind == "json_mode":
        b["response_format"] = {"type": "json_object"}
        b["max_tokens"] = 96
    elif kind == "schema":
        b["response_format"] = {"type": "json_schema",
                                "json_schema": {"name": "Book", "schema": SCHEMA}}
        b["max_tokens"] = 96
    elif kind == "tools":
        b["tools"] = TOOLS
        b["tool_choice"] = "any"
        b["max_tokens"] = 96
    elif kind == "n":
        b["n"] = 2
    return b


BAD = [
    (b'{"model": "M", "messages": [', "malformed JSON"),
    (b'{"model": "M", "messages": "hello"}', "messages as a string"),
    (b'{"model": "M", "messages": [{"role": "wizard", "content": "x"}]}', "unknown role"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', "unknown model"),
    (b'{"model": "M", "messages": [{"role": "user", "content": "x"}], "temperature": -3}',
     "negative temperature"),
    (b'{"model": "M", "messages": [{"role": "user", "content": "x"}], "response_format": '
     b'{"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": '
     b'[-9223372036854775808]}}}}', "enum near -2^63"),
    (b'{"model": "M", "messages": [{"role": "user", "content": "x"}], "response_format": '
     b'{"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}}',
     "unsatisfiable schema"),
    (b'{"model": "M", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000}',
     "max_tokens past the context"),
    (b'[' * 5000, "deep nesting"),
]


def check_completion(stats, kind, r, data, b):
    try:
        v = json.loads(data)
        assert v["object"] == "chat.completion", v
        assert isinstance(v["id"], str) and v["id"]
        assert len(v["choices"]) == b.get("n", 1)
        u = v["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
        for c in v["choices"]:
            m = c["message"]
            assert m["role"] == "assistant"
            reason = c["finish_reason"]
            assert reason in ("stop", "length", "tool_calls"), reason
            if kind in ("json_mode", "schema") and reason == "stop":
                doc = json.loads(m["content"])
                if kind == "schema":
                    assert set(doc) >= {"name", "year"} and 1900 <= doc["year"] <= 2100, doc
            if kind == "tools":
                assert reason == "tool_calls" and m["tool_calls"], c
                for call in m["tool_calls"]:
                    args = json.loads(call["function"]["arguments"])
                    assert call["function"]["name"] in ("get_weather", "add"), call
                    assert isinstance(args, dict), args
    except Exception as e:  # noqa: BLE001 - any failure of the checks is a malformed answer
        stats.bad(kind, f"{type(e).__name__}: {e}: {data[:300]!r}")


def check_stream(stats, kind, r, raw, b):
    try:
        assert r.getheader("content-type", "").startswith("text/event-stream")
        events = [e for e in raw.decode().split("\n\n") if e.strip()]
        datas = [line[6:] for e in events for line in e.splitlines() if line.startswith("data: ")]
        assert datas and datas[-1] == "[DONE]", datas[-3:]
        finishes = 0
        for d in datas[:-1]:
            v = json.loads(d)
            assert v["object"] == "chat.completion.chunk", v
            for c in v["choices"]:
                if c.get("finish_reason"):
                    finishes += 1
        assert finishes == b.get("n", 1), finishes
    except Exception as e:  # noqa: BLE001
        stats.bad(kind, f"{type(e).__name__}: {e}: {raw[:300]!r}")


def check_error(stats, kind, r, data):
    try:
        assert r.getheader("content-type", "").startswith("application/json"), r.getheaders()
        v = json.loads(data)
        assert v["object"] == "error" and v["message"], v
    except Exception as e:  # noqa: BLE001
        stats.bad(kind, f"error body {type(e).__name__}: {e}: {data[:200]!r}")


KINDS = ["plain", "plain", "history", "stream", "stream", "cancel", "json_mode", "schema",
         "tools", "n", "bad", "bad"]


def client(server, model, deadline, seed, stats, kinds):
    rng = random.Random(seed)
    while time.time() < deadline:
        kind = rng.choice(kinds)
        c = server.conn()
        try:
            if kind == "bad":
                payload, what = rng.choice(BAD)
                c.request("POST", "/v1/chat/completions", payload.replace(b'"M"', json.dumps(
                    model).encode()), {"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                stats.status(kind, r.status)
                if not 400 <= r.status < 500:
                    stats.bad(kind, f"{what}: status {r.status}")
                check_error(stats, kind, r, data)
                continue
            b = body(rng, kind, model)
            if kind in ("stream", "cancel"):
                b["stream"] = True
            c.request("POST", "/v1/chat/completions", json.dumps(b).encode(),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            stats.status(kind, r.status)
            if r.status != 200:
                data = r.read()
                if r.status >= 500 or r.status != 429:
                    stats.bad(kind, f"status {r.status}: {data[:300]!r}")
                continue
            if kind == "cancel":
                r.read1(1)  # the first event, then the client goes away
                c.close()
                continue
            raw = r.read()
            if kind == "stream":
                check_stream(stats, kind, r, raw, b)
            else:
                check_completion(stats, kind, r, raw, b)
        except (OSError, http.client.HTTPException) as e:
            with stats.lock:
                stats.errors.append(f"{kind}: {type(e).__name__}: {e}")
        finally:
            c.close()


# What a run must show: answers of every kind of request (HTTP 200; 4xx for the bad ones), at
# least this many a minute each; 429s at most this share of all requests; resident memory after
# warm-up growing, by the least-squares slope over the rest of the run, by at most this share.
MIN_ANSWERED_PER_MINUTE = 50
MAX_429_SHARE = 0.02
MAX_GROWTH = 0.10


def rss_slope(samples):
    """The least-squares slope of (seconds, bytes) samples, in bytes a second."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mb = sum(b for _, b in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return sum((t - mt) * (b - mb) for t, b in samples) / var if var else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--binary", default=os.environ.get(
        "BORA_RELEASE_BIN", os.path.join(ROOT, "target", "release", "bora")))
    ap.add_argument("--model", default="bora-demo-v3")
    # A small KV pool: its pages are all touched during warm-up, so that memory growth after it
    # is the server's own (a quarter of free memory would be touched block by block).
    ap.add_argument("--kv-cache-mib", type=int, default=64)
    ap.add_argument("--kinds", default=",".join(sorted(set(KINDS))),
                    help="the kinds of request to send (default: all)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    server = Server(a.binary, a.model, a.kv_cache_mib)
    stats = Stats()
    started = time.time()
    deadline = started + a.seconds
    kinds = [k for k in KINDS if k in a.kinds.split(",")]
    threads = [threading.Thread(target=client, args=(server, a.model, deadline, i, stats, kinds))
               for i in range(a.clients)]
    for t in threads:
        t.start()
    rss = []  # (seconds since start, bytes)
    while any(t.is_alive() for t in threads):
        rss.append((time.time() - started, server.rss()))
        time.sleep(1)
    for t in threads:
        t.join()
    # Every answer is in: no sequence may still hold a KV block.
    settle = time.time() + 30
    while True:
        used, running = server.metric("bora_kv_blocks_used"), server.metric("bora_running_sequences")
        if (used == 0 and running == 0) or time.time() > settle:
            break
        time.sleep(0.2)
    rss.append((time.time() - started, server.rss()))
    code = server.stop()

    # Memory after warm-up, judged by the least-squares slope of RSS over time (a leak grows
    # steadily; one sample's jump, an allocator arena, barely moves a line through all of them).
    warm = [(t, b) for t, b in rss if t >= a.seconds / 5] or rss[-2:]
    warm_start = warm[0][1]
    slope = rss_slope(warm)  # bytes a second
    span = max(warm[-1][0] - warm[0][0], 1.0)
    growth = slope * span / warm_start if warm_start else 0
    requests = sum(stats.statuses.values())
    failures = []
    if any(s >= 500 for s in stats.statuses):
        failures.append("5xx answers")
    if stats.malformed:
        failures.append(f"{len(stats.malformed)} malformed answers")
    if stats.errors:
        failures.append(f"{len(stats.errors)} connection errors")
    if used != 0 or running != 0:
        failures.append(f"{used:.0f} KV blocks and {running:.0f} sequences still held at the end")
    if growth > MAX_GROWTH:
        failures.append(f"resident memory grew {slope / 1024:.0f} KiB/s after warm-up "
                        f"({growth:.1%} over {span:.0f} s by the fitted slope)")
    if code != 0:
        failures.append(f"bora serve exited with {code} on SIGTERM")
    # A server that refuses, or answers 429, to everything is not a server that held up: each
    # kind of request must have been answered, enough times for the run's length.
    need = max(1, int(MIN_ANSWERED_PER_MINUTE * a.seconds / 60))
    for kind in sorted(set(kinds)):
        counts = stats.by_kind.get(kind, Counter())
        if kind == "bad":
            got = sum(v for c, v in counts.items() if c in (400, 413, 422))
        else:
            got = counts.get(200, 0)
        if got < need:
            failures.append(f"{kind}: {got} answered, at least {need} wanted "
                            f"(statuses {dict(counts)})")
    refused = stats.statuses.get(429, 0)
    if requests and refused / requests > MAX_429_SHARE:
        failures.append(f"{refused} of {requests} requests refused with 429 "
                        f"(at most {MAX_429_SHARE:.0%})")
    if requests == 0:
        failures.append("no request was answered")
    summary = {
        "seconds": a.seconds, "clients": a.clients, "requests": requests,
        "statuses": dict(sorted(stats.statuses.items())), "kinds": dict(sorted(stats.kinds.items())),
        "malformed": stats.malformed[:10], "connection_errors": stats.errors[:10],
        "rss_bytes": {"start": rss[0][1], "after_warmup": warm_start, "peak": max(b for _, b in rss),
                      "end": rss[-1][1]},
        "rss_growth_after_warmup": round(growth, 4), "rss_slope_bytes_per_s": round(slope),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(stats.by_kind.items())},
        "kv_blocks_used_at_end": used,
        "exit_status": code, "failures": failures,
    }
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        mib = lambda b: f"{b / (1 << 20):.0f} MiB"  # noqa: E731
        r = summary["rss_bytes"]
        print(f"soak: {requests} requests from {a.clients} clients in {a.seconds:.0f} s; "
              f"statuses {summary['statuses']}")
        print(f"soak: by kind {summary['by_kind']}")
        every = max(1, len(rss) // 12)
        print("soak: RSS over time: " + ", ".join(
            f"{t:.0f}s {b / (1 << 20):.0f}" for t, b in rss[::every]) + " (MiB)")
        print(f"soak: RSS start {mib(r['start'])}, after warm-up {mib(r['after_warmup'])}, "
              f"peak {mib(r['peak'])}, end {mib(r['end'])}; after warm-up a slope of "
              f"{slope / 1024:+.1f} KiB/s ({growth:+.1%}); "
              f"KV blocks held at the end: {used:.0f}")
        for m in stats.malformed[:10] + stats.errors[:10]:
            print("soak: " + m)
    print("soak: " + ("FAILED: " + "; ".join(failures) if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
