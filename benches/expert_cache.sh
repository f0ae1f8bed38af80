#!/usr/bin/env bash
# The expert cache's two policies on one workload: `auto` (hot experts by decaying routing
# counts) against `lru`, interleaved A B B A, every expert of the model in host memory
# (--cpu-moe) and a cache holding a quarter of them. Prints each run's hit rate (the share of
# routed tokens computed by a device copy) and copies made, then the best of each policy.
#
# Without a GPU, candle's CPU device stands in for it (--stand-in): the hit rates are the
# policies' own, the tokens/s are not a GPU's. On a GPU machine: DEVICE=cuda benches/expert_cache.sh
# with the CUDA binary (BORA=.cache/cuda-dist/bora).
#   MODEL (default random:demo), QUANT (q8_0), SHARE (0.25 of the experts), BATCH (1,4)
set -euo pipefail
cd "$(dirname "$0")/.."
bora=${BORA:-target/release/bora}
[ -x "$bora" ] || cargo build --release -q -p bora-cli
model=${MODEL:-random:demo}
device=${DEVICE:-cpu}
stand_in=()
[ "$device" = cpu ] && stand_in=(--stand-in)
share=${SHARE:-0.25}
common=(--model "$model" --device "$device" "${stand_in[@]}" --quantize "${QUANT:-q8_0}" --dtype f32
  --cpu-moe --prompt-len 128 --json)
# The cache's size: SHARE of the experts in host memory, from a short run without a cache.
probe=$("$bora" bench "${common[@]}" --gen-len 2 --batch 1 2>/dev/null)
CACHE_MIB=$(python3 -c '
import json, sys
r = json.load(sys.stdin); p = r["placement"]
experts = len(p["host_expert_layers"]) * len(r["experts"][0]["share"])
print(float(sys.argv[1]) * experts * p["expert_bytes"] / 2**20)' "$share" <<<"$probe")
echo "cache: ${share} of the experts in host memory, ${CACHE_MIB} MiB"
res=$(mktemp -d)
run() { # run POLICY N
  "$bora" bench "${common[@]}" --gen-len 64 --batch "${BATCH:-1,4}" --expert-cache "$1" --expert-cache-mib "$CACHE_MIB" 2>/dev/null >"$res/$1-$2.json"
}
run auto 1; run lru 1; run lru 2; run auto 2
python3 - "$res" <<'PY'
import glob, json, os, sys
best = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    name = os.path.basename(path)[:-5]
    r = json.load(open(path))
    c = r["placement"]["expert_cache"]
    dec = {x["batch"]: x["decode_tokens_per_s"] for x in r["runs"]}
    print(f"{name:7} hit rate {100 * c['hit_rate']:5.1f}%  copies {c['moves']:5}  resident {c['resident']}/{c['capacity']}  decode tok/s {dec}")
    policy = name.split("-")[0]
    best[policy] = max(best.get(policy, 0), c["hit_rate"])
print("best hit rate: " + ", ".join(f"{p} {100 * h:.1f}%" for p, h in best.items()))
PY
