"""Two bora replicas behind vllm-router (pinned in deploy/router-requirements.txt), started by
deploy/replicas.sh as the README says, driven by the pinned mistralai SDK through the router:
complete, stream, concurrent async calls, an agent's conversation of several turns; then a
replica stopped mid-run, whose requests the router sends to the other without losing one.

The router routes with `--policy kv_aware` on the replicas' KV-cache events; the test checks that
it did route on them: a conversation's later turns go where its prefix is cached.
"""

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from mistralai.client import Mistral

from conftest import FIXTURE, MODEL, ROOT

BIN = os.environ.get("BORA_BIN", str(ROOT / "target" / "debug" / "bora"))


def free_base():
    """A port P with P..P+2 and P+100..P+105 free (the router, replicas and event sockets),
    below the kernel's ephemeral range: a port there may be held in TIME_WAIT by one of the
    thousands of client connections the tests before this one closed (after
    test_abandoned.py, half the range was), and no server can bind it then."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        low = 32768
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, max(low - 110, 10001))
        ports = [base, base + 1, base + 2] + [base + 100 + i for i in range(6)]
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


class Replicas:
    def __init__(self, tmp_path, n=2, policy="kv_aware"):
        self.port = free_base()
        env = dict(os.environ, BORA_REPLICAS_LOGS=str(tmp_path / "logs"))
        self.proc = subprocess.Popen(
            [str(ROOT / "deploy" / "replicas.sh"), "-n", str(n), "--policy", policy,
             "--port", str(self.port), "--bin", BIN,
             # The router's debug log has each kv_aware decision's credited prefix; at
             # temperature 0 it picks the cheapest replica every time (the script's default
             # breaks ties at random, and could, rarely, pick another).
             "--router-arg", "--log-level", "--router-arg", "debug",
             "--router-arg", "--router-temperature", "--router-arg", "0",
             "--", "--model", str(FIXTURE)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines, self.replicas, self.url = [], {}, None
        deadline = time.time() + 300
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line or time.time() > deadline:
                raise RuntimeError("replicas.sh did not start:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.match(r"replica (\d+): (\S+) \(pid (\d+)", line)
            if m:
                self.replicas[int(m.group(1))] = (m.group(2), int(m.group(3)))
            m = re.match(r"router: (\S+) ", line)
            if m:
                self.url = m.group(1)
        self.logs = tmp_path / "logs"

    def metric(self, i, name):
        url = self.replicas[i][0]
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.lines.append(out)
        return self.proc.returncode


def running(tmp_path, policy):
    r = Replicas(tmp_path, policy=policy)
    yield r
    r.stop()
    # The script stops what it started.
    for _, pid in r.replicas.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture()
def replicas(tmp_path):
    yield from running(tmp_path, "kv_aware")


@pytest.fixture()
def rr_replicas(tmp_path):
    """Round robin: both replicas have requests in flight whenever one goes."""
    yield from running(tmp_path, "round_robin")


def client(r):
    return Mistral(api_key="none", server_url=r.url)


def requests_of(r, i):
    """Chat requests replica i ran (each has a first token; the router's own calls do not)."""
    return r.metric(i, "bora_time_to_first_token_seconds_count")


def events_known(r, timeout=30):
    """Waits until the router has taken in every KV-event batch each replica has published: a
    request sent on the heels of the answer before it (a client with nothing to do in between)
    could otherwise arrive before the blocks that answer stored are known. A replica counts its
    batches (bora_kv_event_batches_total: the last one's seq is that minus 1); the router's
    debug log says each seq it has applied."""
    deadline = time.time() + timeout
    want = {r.replicas[i][0]: int(r.metric(i, "bora_kv_event_batches_total")) - 1
            for i in r.replicas}
    seen = {}
    while True:
        log = (r.logs / "router.log").read_text(errors="replace")
        for m in re.finditer(r"live sequence advanced source=(\S+) rank=\d+ seq=(\d+)",
                             re.sub(r"\x1b\[[0-9;]*m", "", log)):
            seen[m.group(1)] = max(seen.get(m.group(1), -1), int(m.group(2)))
        if all(seen.get(url, -1) >= last for url, last in want.items()):
            return
        assert time.time() < deadline, f"the router never took in the events: {want} {seen}"
        time.sleep(0.01)


def test_the_sdk_through_the_router(replicas):
    c = client(replicas)
    hello = [{"role": "user", "content": "Hello, who are you?"}]
    res = c.chat.complete(model=MODEL, messages=hello, max_tokens=8, temperature=0)
    assert res.choices[0].message.content and res.usage.completion_tokens == 8
    events_known(replicas)
    text = ""
    with c.chat.stream(model=MODEL, messages=hello, max_tokens=8, temperature=0) as events:
        for e in events:
            text += e.data.choices[0].delta.content or ""
    assert text == res.choices[0].message.content, "the stream is the same greedy answer"

    async def many():
        calls = [c.chat.complete_async(model=MODEL, max_tokens=4, temperature=0,
                                       messages=[{"role": "user", "content": f"Count to {i}"}])
                 for i in range(8)]
        return await asyncio.gather(*calls)

    results = asyncio.run(many())
    assert all(x.choices[0].finish_reason in ("length", "stop") for x in results)

    # An agent's conversation: each turn sends the history so far.
    before = [requests_of(replicas, i) for i in (1, 2)]
    hits_before = [replicas.metric(i, "bora_prefix_cache_hits_total") for i in (1, 2)]
    messages = [{"role": "system", "content": "You are the travel agent of the house. " * 3}]
    for turn in range(4):
        events_known(replicas)
        messages.append({"role": "user", "content": f"Question {turn}: where next?"})
        res = c.chat.complete(model=MODEL, messages=messages, max_tokens=4, temperature=0)
        messages.append(res.choices[0].message)
    after = [requests_of(replicas, i) for i in (1, 2)]
    hits = [replicas.metric(i, "bora_prefix_cache_hits_total") - h
            for i, h in zip((1, 2), hits_before)]
    # kv_aware sent the later turns where the conversation's blocks were.
    served = [a - b for a, b in zip(after, before)]
    assert sorted(served) == [0, 4], served
    assert sum(hits) >= 3, hits
    assert c.models.list().data[0].id == MODEL
    # The router's view of each replica's cache, built from bora's events, is the cache: the
    # prefix it credited the replica it chose, summed over every request, is the blocks
    # bora found cached.
    credited = 0
    decisions = 0
    for line in (replicas.logs / "router.log").read_text(errors="replace").splitlines():
        if "KV prefix decision" in line:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            tokens = int(re.search(r"credited_prefix_tokens=(\d+)", line).group(1))
            # The router leaves the last prompt token to compute: a prompt of whole blocks
            # found cached is credited one token short of them.
            credited += (tokens + 1) // 16 if tokens % 16 == 15 else tokens // 16
            decisions += 1
    assert decisions >= 14
    found = sum(replicas.metric(i, "bora_prefix_cache_hits_total") for i in (1, 2))
    assert credited == found, (credited, found)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_replica_stopped_mid_run_loses_no_request(rr_replicas, sig):
    """Stopped (SIGTERM: it finishes what it runs and refuses the rest) or killed outright,
    one replica's requests go to the other: the router retries them."""
    c = client(rr_replicas)
    results, errors = [], []

    def worker(k):
        for j in range(10):
            try:
                res = c.chat.complete(model=MODEL, max_tokens=16, temperature=0, messages=[
                    {"role": "user", "content": f"Worker {k}, request {j}: tell me more."}])
                results.append(res.choices[0].finish_reason)
            except Exception as e:  # noqa: BLE001 - any failure is the test's failure
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    # Stop replica 1 once requests are flowing to both.
    deadline = time.time() + 60
    while len(results) < 8 and time.time() < deadline:
        time.sleep(0.05)
    assert requests_of(rr_replicas, 1) > 0 and requests_of(rr_replicas, 2) > 0
    url, pid = rr_replicas.replicas[1]
    os.kill(pid, sig)
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(results) == 40
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=5)
    # And the router still serves.
    res = c.chat.complete(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert res.choices[0].finish_reason in ("length", "stop")
