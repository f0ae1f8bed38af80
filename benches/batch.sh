#!/usr/bin/env bash
# Batch jobs against the same requests sent concurrently through /v1/chat/completions, on the
# bench model (Q4_K_M GGUF of the CPU-sized random Mixtral, made by benches/gguf.sh), plus the
# first-token latency of interactive requests sent while a job runs (benches/batch_bench.py
# says how each figure is measured).
# Usage: benches/batch.sh [MODEL]   env: N (requests, default 2000), TOKENS (per answer, 16),
#        WINDOW (requests in flight, 32), PROBES (interactive requests during a job, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-.cache/bench-model/mixtral-Q4_K_M.gguf}
[ -f "$model" ] || { echo "no $model: run benches/gguf.sh first" >&2; exit 1; }
cargo build --release -q -p bora-cli
data=$(mktemp -d)
log=$(mktemp)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data" "$log"' EXIT
window=${WINDOW:-32}
target/release/bora serve --model "$model" --port 0 --data-dir "$data" --max-seqs "$window" \
  > "$log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  url=$(grep -oE 'ready in [0-9.]+ s: http://[0-9.:]+' "$log" | grep -oE 'http://[0-9.:]+' || true)
  [ -n "$url" ] && break
  kill -0 "$pid" || { cat "$log"; exit 1; }
  sleep 0.2
done
[ -n "$url" ] || { echo "the server did not become ready" >&2; cat "$log"; exit 1; }
name=$(python3 -c "import json,sys,urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1] + '/v1/models'))['data'][0]['id'])" "$url")
echo "bora serve on $model (model $name), $window sequences at once; $(nproc) cores"
python3 benches/batch_bench.py "$url" "${N:-2000}" "${TOKENS:-16}" "$window" "${PROBES:-10}" "$name"
