#!/usr/bin/env bash
# The README's quick-start check: the documented serve command, run verbatim from the README,
# must answer 200 on /health within a minute (the build itself is done first, untimed).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=$(grep -m1 -E '^cargo run --release -p bora-cli -- serve' README.md) || {
    echo "README check: no 'cargo run --release -p bora-cli -- serve' line in README.md"
    exit 1
}
port=$(echo "$cmd" | { grep -oE -- '--port [0-9]+' || true; } | awk '{print $2}')
port=${port:-8080}
echo "README check: building, then timing: $cmd"
cargo build --release -p bora-cli --locked
log=$(mktemp)
bash -c "$cmd" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for i in $(seq 1 60); do
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
        echo "README check: /health answered 200 after about $i s"
        kill -TERM $pid
        wait $pid || true
        trap - EXIT
        exit 0
    fi
    if ! kill -0 $pid 2>/dev/null; then
        break
    fi
    sleep 1
done
echo "README check: the quick-start server did not answer /health within a minute:"
cat "$log"
exit 1
