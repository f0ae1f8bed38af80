#!/usr/bin/env bash
# The fuzz targets for longer than CI runs them (crates/bora-server/tests/fuzz.rs: request
# bodies through parsing, rendering and the grammar compiler, and JSON schemas;
# tests/tests/fuzz.rs: GGUF files, safetensors headers, config.json), optimized.
# CASES per target (default 20000), SEED the first seed (default 0): a failure names its seed,
# which BORA_FUZZ_SEED=N BORA_FUZZ_CASES=1 reruns. Prints each target's executions.
# Usage: tests/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export BORA_FUZZ_CASES=${CASES:-20000} BORA_FUZZ_SEED=${SEED:-0}
started=$SECONDS
cargo test --release --locked -p bora-server --test fuzz -- --nocapture --test-threads 2 2>&1 \
    | grep -E "fuzz target|requests:|test result|panicked|failed at seed"
cargo test --release --locked -p bora-tests --test fuzz -- --nocapture --test-threads 2 2>&1 \
    | grep -E "fuzz target|gguf:|test result|panicked|failed at seed"
echo "fuzz: $BORA_FUZZ_CASES cases per target from seed $BORA_FUZZ_SEED in $((SECONDS - started)) s"
