"""An agent workload through a router in front of bora replicas: each agent keeps its own
conversation (its own system prompt and document, then turns that send the whole history), the
agents run at once, and the replicas' /metrics say how much of their prompts the prefix cache
held. Prints one JSON line: the policy's hit rate (prefix-cache hits / lookups, in blocks, over
all replicas) and the requests each replica ran.

Usage: router_agents.py ROUTER_URL REPLICA_URL... [--agents N] [--turns T] [--model M]
                        [--think MIN,MAX] [--stream]
"""

import argparse
import json
import random
import re
import threading
import time
import urllib.request

WORDS = ("budget itinerary museum harbour train ticket hotel breakfast river castle market "
         "ferry island bridge festival opera garden mountain lake village cathedral tower "
         "gallery beach cliff vineyard palace square fountain theatre library station").split()


def post(url, body):
    """The answer's text; streamed (SSE) when the body says so."""
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        if not body.get("stream"):
            return json.load(r)["choices"][0]["message"]["content"]
        text = ""
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    text += c["delta"].get("content") or ""
        return text


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


COUNTERS = ("bora_prefix_cache_hits_total", "bora_prefix_cache_lookups_total",
            "bora_time_to_first_token_seconds_count")


def agent(router, model, k, turns, max_tokens, think, stream, together, errors):
    rng = random.Random(k)
    document = " ".join(rng.choice(WORDS) for _ in range(160))
    messages = [{"role": "system",
                 "content": f"You are travel agent {k}. Plan from these notes: {document}"}]
    for t in range(turns):
        # The agent's own work between calls (tools, the user): `think` seconds, drawn; with
        # `together` the agents' first calls arrive at once (a burst of new conversations).
        pause = rng.uniform(*think)
        if t > 0 or not together:
            time.sleep(pause)
        messages.append({"role": "user",
                         "content": f"Turn {t}: what about the {rng.choice(WORDS)}?"})
        try:
            text = post(router + "/v1/chat/completions",
                        {"model": model, "messages": messages, "max_tokens": max_tokens,
                         "temperature": 0, "stream": stream})
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(repr(e))
            return
        messages.append({"role": "assistant", "content": text})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("router")
    ap.add_argument("replicas", nargs="+")
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--model", default="bora-demo")
    ap.add_argument("--think", default="0.2,1.0",
                    help="seconds an agent works between its calls: MIN,MAX (drawn uniformly)")
    ap.add_argument("--label", default="")
    ap.add_argument("--stream", action="store_true", help="stream the answers (SSE)")
    ap.add_argument("--together", action="store_true",
                    help="the agents' first calls arrive at once (else after a think each)")
    a = ap.parse_args()
    before = [[metric(u, c) for c in COUNTERS] for u in a.replicas]
    errors = []
    start = time.time()
    think = tuple(float(x) for x in a.think.split(","))
    threads = [threading.Thread(target=agent, args=(a.router, a.model, k, a.turns,
                                                     a.max_tokens, think, a.stream, a.together,
                                                     errors))
               for k in range(a.agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - start
    after = [[metric(u, c) for c in COUNTERS] for u in a.replicas]
    delta = [[x - y for x, y in zip(aa, bb)] for aa, bb in zip(after, before)]
    hits = sum(d[0] for d in delta)
    lookups = sum(d[1] for d in delta)
    requests = [int(d[2]) for d in delta]
    print(json.dumps({
        "label": a.label,
        "hit_rate": round(hits / lookups, 4) if lookups else 0.0,
        "hits": int(hits), "lookups": int(lookups),
        "requests": requests,
        "max_share": round(max(requests) / max(1, sum(requests)), 3),
        "errors": len(errors), "seconds": round(took, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
