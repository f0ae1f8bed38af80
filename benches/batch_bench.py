"""Batch jobs against the same requests sent concurrently, on one `bora serve` (driven by
benches/batch.sh). Standard library only.

Throughput: N chat requests (fixed length: min_tokens = max_tokens, temperature 0) run as a
batch job (uploaded JSONL, POST /v1/batch/jobs, polled to SUCCESS) and sent through
/v1/chat/completions by W clients at once (W = the job's window, so the same number is in
flight), interleaved ABBA; the best of each counts. Aggregate tokens/s = completion tokens /
wall seconds (from the job's creation to SUCCESS; from the first send to the last answer).

Interactive latency: while a further job runs, P streamed requests of one token are sent one
after another; for each, the engine's step counter (/metrics bora_engine_steps_total, counted
when a step's forward pass is done, before its tokens are sent) is read just before the request
goes out and again when its token arrives: the difference is the steps that ended from its
arrival through the one that gave its token (1 when no step was running as it arrived and the
next one served it; 2 when it arrived during a step and the step after that served it)."""

import http.client
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

URL, N, TOKENS, W, PROBES = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
MODEL = sys.argv[6]


def body(i, tokens=TOKENS):
    topics = ["the harbour", "a tax form", "the weather", "an invoice", "a poem", "the river"]
    return {"messages": [{"role": "user", "content": f"Document {i}: summarise what it says about "
                          f"{topics[i % len(topics)]} in one line."}],
            "max_tokens": tokens, "min_tokens": tokens, "temperature": 0}


def call(method, path, data=None, headers=None):
    req = urllib.request.Request(URL + path, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def post_json(path, obj):
    return call("POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def upload(lines):
    boundary = "bora-bench"
    content = "\n".join(json.dumps(l) for l in lines).encode()
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + \
        f"\r\n--{boundary}--\r\n".encode()
    return call("POST", "/v1/files", data, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def steps():
    with urllib.request.urlopen(URL + "/metrics", timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("bora_engine_steps_total "):
                return int(float(line.split()[1]))
    raise RuntimeError("no bora_engine_steps_total in /metrics")


def run_job(n, first, during=None):
    f = upload([{"custom_id": f"d{i}", "body": body(i)} for i in range(first, first + n)])
    t0 = time.perf_counter()
    job = post_json("/v1/batch/jobs", {"endpoint": "/v1/chat/completions", "model": MODEL,
                                       "input_files": [f["id"]]})
    extra = during(job["id"]) if during else None
    while True:
        job = call("GET", f"/v1/batch/jobs/{job['id']}")
        if job["status"] not in ("QUEUED", "RUNNING"):
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    assert job["status"] == "SUCCESS" and job["succeeded_requests"] == n, job
    out = call_bytes(f"/v1/files/{job['output_file']}/content")
    tokens = sum(json.loads(l)["response"]["body"]["usage"]["completion_tokens"]
                 for l in out.splitlines() if l.strip())
    return tokens, wall, extra


def call_bytes(path):
    with urllib.request.urlopen(URL + path, timeout=600) as r:
        return r.read().decode()


def run_concurrent(n, first):
    def one(i):
        r = post_json("/v1/chat/completions", dict(body(i), model=MODEL))
        return r["usage"]["completion_tokens"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(W) as pool:
        tokens = sum(pool.map(one, range(first, first + n)))
    return tokens, time.perf_counter() - t0, None


def first_token(i):
    """Sends one streamed request of one token; (seconds, steps) from just before it to that
    token (its chunk carries the finish: the detokenizer holds nothing back)."""
    u = urllib.parse.urlparse(URL)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    payload = json.dumps(dict(body(10 * N + i, 1), model=MODEL, stream=True))
    s0 = steps()
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    while True:
        line = resp.readline()
        if not line:
            raise RuntimeError("the stream ended before a token")
        if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
            if json.loads(line[6:])["choices"][0].get("finish_reason"):
                break
    dt, s1 = time.perf_counter() - t0, steps()
    conn.close()
    return dt, s1 - s0


def probe_during(job_id):
    # Let the job fill the running set first.
    while call("GET", f"/v1/batch/jobs/{job_id}")["status"] == "QUEUED":
        time.sleep(0.05)
    time.sleep(1.0)
    return [first_token(i) for i in range(PROBES)]


def main():
    run_concurrent(max(N // 8, W), 0)  # warm up (not counted)
    idle = [first_token(i) for i in range(3)]
    runs = {"job": [], "concurrent": []}
    for run, kind in enumerate(("job", "concurrent", "concurrent", "job")):
        # Each run has prompts of its own: none finds another's in the prefix cache.
        first = (run + 1) * N
        tokens, wall, _ = run_job(N, first) if kind == "job" else run_concurrent(N, first)
        runs[kind].append((tokens / wall, tokens, wall))
        print(f"{kind:10} {tokens} tokens in {wall:7.1f} s: {tokens / wall:8.1f} tok/s", flush=True)
    best = {k: max(v) for k, v in runs.items()}
    ratio = best["job"][0] / best["concurrent"][0]
    print(f"best of 2 each: job {best['job'][0]:.1f} tok/s, concurrent {best['concurrent'][0]:.1f} tok/s, "
          f"job / concurrent = {ratio:.3f}")
    _, _, probes = run_job(max(N // 4, W * 4), 5 * N, during=probe_during)
    secs = [p[0] for p in probes]
    st = [p[1] for p in probes]
    print(f"idle server: first token in {statistics.median([p[0] for p in idle]) * 1000:.0f} ms "
          f"(steps {[p[1] for p in idle]})")
    print(f"during a job ({W} lines in flight): first token in median {statistics.median(secs) * 1000:.0f} ms, "
          f"max {max(secs) * 1000:.0f} ms; steps ended from arrival through its token: {st}, "
          f"max {max(st)}")
    print(json.dumps({"job_tok_s": best["job"][0], "concurrent_tok_s": best["concurrent"][0],
                      "ratio": ratio, "probe_steps": st, "probe_ms": [round(s * 1000) for s in secs]}))


main()
