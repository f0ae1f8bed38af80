#!/usr/bin/env bash
# End-to-end bench: bora (bf16 and f32 weights) against candle-transformers (f32) on the
# CPU-sized random Mixtral (vocab 32000, hidden 1024, intermediate 3584, 8 layers, 16 heads,
# 4 kv heads, 8 experts, top-2): prefill of 128 tokens, 128 greedy decode steps, peak memory.
# Usage: benches/e2e.sh [DIR]   (DIR keeps the generated checkpoints; default .cache/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/bench-model}
cargo build --release -q -p bora-benches --bin e2e
bin=target/release/e2e
[ -f "$dir/f32/config.json" ] || "$bin" gen "$dir"
out=$(mktemp)
"$bin" bora "$dir/bf16" | tee -a "$out"
"$bin" bora "$dir/f32" | tee -a "$out"
"$bin" candle "$dir/f32" | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
runs = {r["engine"]: r for r in map(json.loads, open(sys.argv[1]))}
c = runs["candle-f32"]
bf = runs["bora-bf16"]
print()
print(f"{'engine':12} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS':>10} {'vs candle f32 (prefill, decode)':>34}")
for name, r in runs.items():
    print(f"{name:12} {r['prefill_tok_s']:14.1f} {r['decode_tok_s']:13.2f} {r['peak_rss_bytes']/2**30:8.2f}G"
          f" {r['prefill_tok_s']/c['prefill_tok_s']:16.2f}x {r['decode_tok_s']/c['decode_tok_s']:8.2f}x")
print(f"bora-bf16 peak RSS / bf16 checkpoint size: {bf['peak_rss_bytes']/bf['checkpoint_bytes']:.2f}")
same = len({tuple(r["tokens"]) for r in runs.values()}) == 1
print("greedy tokens identical across engines:", same)
if not same:
    for name, r in runs.items():
        print(" ", name, r["tokens"][:16])
PY
