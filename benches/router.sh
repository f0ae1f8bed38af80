#!/usr/bin/env bash
# Routing policies compared on bora replicas: vllm-router's round_robin, cache_aware and kv_aware
# (fed by the replicas' KV-cache events) in front of fresh replicas, each given the same agent
# workload (benches/router_agents.py: agents with their own system prompts and documents, run
# at once, each turn sending its whole history). Prints each run's prefix-cache hit rate
# (hits / lookups, in blocks, over the replicas) and how the requests spread; then the same with
# KV caches too small to hold every conversation (KV_SMALL MiB a replica).
# Usage: benches/router.sh [-- ARGS FOR bora serve]   env: N (replicas, 2), AGENTS (16), TURNS (6),
#   THINK (seconds an agent works between calls, MIN,MAX; 0.2,1.0), POLICIES (the three),
#   ROUTER_ARGS (more vllm-router arguments, split at spaces), STREAM=1 (agents stream answers),
#   TOGETHER=1 (the agents' first calls arrive at once),
#   REPS (runs of each policy, interleaved ABC CBA; 2), KV_SMALL (MiB, 4; 0 skips it),
#   BIN (target/release/bora, built first)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/bora}
[ -n "${BIN:-}" ] || cargo build --release -q -p bora-cli
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
port=${PORT:-18400}
read -r -a policies <<< "${POLICIES:-round_robin cache_aware kv_aware}"
run() { # policy label [serve args...]
    local policy=$1 label=$2
    shift 2
    local rargs=()
    for x in ${ROUTER_ARGS:-}; do rargs+=(--router-arg "$x"); done
    BORA_REPLICAS_LOGS="$out/logs-$policy" deploy/replicas.sh -n "${N:-2}" --policy "$policy" \
        --port "$port" --bin "$bin" "${rargs[@]}" -- "$@" > "$out/replicas.out" 2>&1 &
    local pid=$!
    for _ in $(seq 1 240); do
        grep -q "^router: " "$out/replicas.out" && break
        kill -0 $pid 2>/dev/null || { cat "$out/replicas.out" >&2; exit 1; }
        sleep 0.5
    done
    local model urls=()
    model=$(grep -o 'model `[^`]*`' "$out/replicas.out" | tr -d '`' | cut -d' ' -f2)
    mapfile -t urls < <(grep -oE '^replica [0-9]+: \S+' "$out/replicas.out" | cut -d' ' -f3)
    python3 benches/router_agents.py "http://127.0.0.1:$port" "${urls[@]}" --model "$model" \
        --agents "${AGENTS:-16}" --turns "${TURNS:-6}" --think "${THINK:-0.2,1.0}" ${STREAM:+--stream} ${TOGETHER:+--together} \
        --label "$policy $label" | tee -a "$out/runs"
    kill -TERM $pid
    wait $pid || true
}
for kv in default "${KV_SMALL:-4}"; do
    [ "$kv" = 0 ] && continue
    extra=("$@")
    [ "$kv" = default ] || extra+=(--kv-cache-mib "$kv")
    for rep in $(seq 1 "${REPS:-2}"); do
        order=("${policies[@]}")
        if [ $((rep % 2)) = 0 ]; then
            order=()
            for ((i = ${#policies[@]} - 1; i >= 0; i--)); do order+=("${policies[$i]}"); done
        fi
        for policy in "${order[@]}"; do
            run "$policy" "kv=$kv" "${extra[@]}"
        done
    done
done
python3 - "$out/runs" <<'PY'
import collections, json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in runs:
    by[r["label"]].append(r)
print()
print(f"{'policy':<14}{'kv':<10}{'hit rate':>10}{'max share':>11}{'errors':>8}  requests")
for label, rs in by.items():
    policy, kv = label.split()
    rate = sum(r["hit_rate"] for r in rs) / len(rs)
    share = max(r["max_share"] for r in rs)
    print(f"{policy:<14}{kv[3:]:<10}{rate:>10.3f}{share:>11.3f}{sum(r['errors'] for r in rs):>8}"
          f"  {' / '.join(str(r['requests']) for r in rs)}")
for kv in sorted({l.split()[1] for l in by}):
    rate = {p: sum(r["hit_rate"] for r in by[f"{p} {kv}"]) / len(by[f"{p} {kv}"])
            for p in ("round_robin", "cache_aware", "kv_aware") if f"{p} {kv}" in by}
    if len(rate) == 3 and rate["round_robin"] > 0:
        print(f"{kv[3:]}: kv_aware / round_robin = {rate['kv_aware'] / rate['round_robin']:.2f}x, "
              f"kv_aware / cache_aware = {rate['kv_aware'] / max(rate['cache_aware'], 1e-9):.2f}x")
PY
