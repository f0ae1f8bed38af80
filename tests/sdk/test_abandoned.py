"""Issue 36, part 1: clients that abandon their requests cost the live ones nothing.

Ten careless clients, each with at most one request open, send `n: 4, max_tokens: 500` requests
and go away as fast as they can: half of them streams they close after the first event, half
whole answers they close before the answer. Meanwhile a well-behaved client asks for one token
every 0.1 s. It must never be told that the queue is full (429), and once the careless clients
stop, nothing they asked for is left running or counted. On the optimized binary (BORA_RELEASE_BIN,
built by tests/run), as a server is run.
"""

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request

from conftest import ROOT, Server

SECONDS = 20
CARELESS = 10
MODEL = "bora-demo-v3"
RELEASE = os.environ.get("BORA_RELEASE_BIN", str(ROOT / "target" / "release" / "bora"))


def careless_client(host, port, stream, until, counts):
    body = json.dumps(
        {
            "model": MODEL,
            "stream": stream,
            "n": 4,
            "max_tokens": 500,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    while time.time() < until:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(head + body)
            if stream:
                got = b""
                while b"data:" not in got:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            else:
                time.sleep(0.05)
        counts[stream] += 1


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_abandoned_requests_never_crowd_out_a_live_client():
    server = Server(model=MODEL, binary=RELEASE)
    try:
        host, port = re.match(r"http://([0-9.]+):(\d+)", server.url).groups()
        port = int(port)
        until = time.time() + SECONDS
        counts = {True: 0, False: 0}
        threads = [
            threading.Thread(
                target=careless_client, args=(host, port, i % 2 == 0, until, counts)
            )
            for i in range(CARELESS)
        ]
        for t in threads:
            t.start()
        statuses, depths = [], []
        live = json.dumps(
            {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
        ).encode()
        while time.time() < until:
            req = urllib.request.Request(
                server.url + "/v1/chat/completions",
                data=live,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    statuses.append(r.status)
                    assert json.load(r)["choices"][0]["finish_reason"] in ("length", "stop")
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
            depths.append(metric(server.url, "bora_queue_depth"))
            time.sleep(0.1)
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert counts[True] >= 100 and counts[False] >= 100, counts
        refused = [s for s in statuses if s != 200]
        assert not refused, f"{len(refused)} of {len(statuses)} live requests got {set(refused)}"
        assert len(statuses) >= 50, statuses
        assert max(depths) <= 256
        # What the careless clients left: nothing running, waiting or counted, soon.
        deadline = time.time() + 15
        while True:
            left = [
                metric(server.url, m)
                for m in ("bora_queue_depth", "bora_running_sequences", "bora_kv_blocks_used")
            ]
            if left == [0, 0, 0]:
                break
            assert time.time() < deadline, f"queue, running, blocks still {left}"
            time.sleep(0.1)
        assert server.healthy()
    finally:
        assert server.stop() == 0, "".join(server.lines)
