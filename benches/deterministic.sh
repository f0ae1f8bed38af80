#!/usr/bin/env bash
# What batch-invariant numerics (`--deterministic`) cost: `bora bench` on the CPU-sized random
# Mixtral of benches/e2e.sh (hidden 1024, intermediate 3584, 8 layers, 8 experts, top-2), with
# and without the flag, interleaved (A B B A, REPEAT times, default 2; the best of each counts),
# for bf16 weights and Q4_K (--quantize q4_k). Prints prefill and decode tokens/s at batch 1
# and 8 and the ratio deterministic / default.
# Usage: benches/deterministic.sh [DIR]   (DIR keeps the checkpoint; default .cache/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/bench-model}
cargo build --release -q -p bora-cli -p bora-benches
[ -f "$dir/bf16/config.json" ] || target/release/e2e gen "$dir"
out=$(mktemp)
run() { # WEIGHTS MODE
  local quant=() flag=()
  [ "$1" = q4_k ] && quant=(--quantize q4_k)
  [ "$2" = deterministic ] && flag=(--deterministic)
  target/release/bora -q bench --model "$dir/bf16" --tokenizer models/tokenizers/tokenizer.model.v1 \
    "${quant[@]}" "${flag[@]}" \
    --prompt-len "${PROMPT:-128}" --gen-len "${GEN:-64}" --batch 1,8 --threads 2 --json \
    | python3 -c "
import json, sys
r = json.load(sys.stdin)
for x in r['runs']:
    print(json.dumps({'w': '$1', 'mode': '$2', 'batch': x['batch'],
                      'pp': x['prefill_tokens_per_s'], 'tg': x['decode_tokens_per_s']}))" >> "$out"
}
for _ in $(seq "${REPEAT:-2}"); do
  for w in ${WEIGHTS:-bf16 q4_k}; do
    run "$w" default; run "$w" deterministic; run "$w" deterministic; run "$w" default
  done
done
python3 - "$out" <<'PY'
import json, sys
best = {}
for r in map(json.loads, open(sys.argv[1])):
    b = best.setdefault((r["w"], r["batch"], r["mode"]), {"pp": 0, "tg": 0})
    b["pp"], b["tg"] = max(b["pp"], r["pp"]), max(b["tg"], r["tg"])
print(f"{'weights':8} {'batch':>5} {'prefill default':>16} {'deterministic':>14} {'ratio':>6}"
      f" {'decode default':>15} {'deterministic':>14} {'ratio':>6}")
for (w, batch, mode), d in sorted(best.items()):
    if mode != "default":
        continue
    x = best[(w, batch, "deterministic")]
    print(f"{w:8} {batch:>5} {d['pp']:>16.1f} {x['pp']:>14.1f} {x['pp'] / d['pp']:>6.2f}"
          f" {d['tg']:>15.1f} {x['tg']:>14.1f} {x['tg'] / d['tg']:>6.2f}")
PY
