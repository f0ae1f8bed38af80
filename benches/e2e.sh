#!/usr/bin/env bash
# End-to-end bench: bora (bf16 and f32 weights) against candle-transformers (f32) on the
# CPU-sized random Mixtral (vocab 32000, hidden 1024, intermediate 3584, 8 layers, 16 heads,
# 4 kv heads, 8 experts, top-2): prefill of 128 tokens, 128 greedy decode steps, peak memory.
# The machines are shared and noisy: each engine runs REPEAT times (default 3), interleaved,
# and its best run counts (peak memory: its largest).
# Usage: benches/e2e.sh [DIR]   (DIR keeps the generated checkpoints; default .cache/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/bench-model}
cargo build --release -q -p bora-benches --bin e2e
bin=target/release/e2e
[ -f "$dir/f32/config.json" ] || "$bin" gen "$dir"
out=$(mktemp)
for _ in $(seq "${REPEAT:-3}"); do
  "$bin" bora "$dir/bf16" >> "$out"
  "$bin" bora "$dir/f32" >> "$out"
  "$bin" candle "$dir/f32" >> "$out"
done
python3 - "$out" <<'PY'
import json, sys
runs = {}
for r in map(json.loads, open(sys.argv[1])):
    best = runs.setdefault(r["engine"], dict(r, n=0))
    best["n"] += 1
    for k in ("prefill_tok_s", "decode_tok_s", "decode_gb_s", "peak_rss_bytes"):
        best[k] = max(best[k], r[k])
    assert best["tokens"] == r["tokens"], "greedy tokens changed between runs of " + r["engine"]
c = runs["candle-f32"]
bf = runs["bora-bf16"]
print(f"best of {c['n']} runs each")
print(f"{'engine':12} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode GB/s':>12} {'peak RSS':>10} {'vs candle f32 (prefill, decode)':>34}")
for name, r in runs.items():
    print(f"{name:12} {r['prefill_tok_s']:14.1f} {r['decode_tok_s']:13.2f} {r['decode_gb_s']:12.1f} {r['peak_rss_bytes']/2**30:8.2f}G"
          f" {r['prefill_tok_s']/c['prefill_tok_s']:16.2f}x {r['decode_tok_s']/c['decode_tok_s']:8.2f}x")
print(f"bora-bf16 peak RSS / bf16 checkpoint size: {bf['peak_rss_bytes']/bf['checkpoint_bytes']:.2f}")
same = len({tuple(r["tokens"]) for r in runs.values()}) == 1
print("greedy tokens identical across engines:", same)
if not same:
    for name, r in runs.items():
        print(" ", name, r["tokens"][:16])
PY
