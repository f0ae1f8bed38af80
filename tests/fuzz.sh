#!/usr/bin/env bash
# The fuzz targets for longer than CI runs them (crates/bora-server/tests/fuzz.rs: request
# bodies through parsing, rendering and the grammar compiler, JSON schemas, and KV-event replay
# requests; tests/tests/fuzz.rs: GGUF files, safetensors headers, config.json;
# crates/bora-batch/tests/fuzz.rs: multipart uploads of JSONL files, and batch jobs from them
# or inline), optimized, in 8 GiB of
# address space (a case that would take the machine's memory fails instead).
# CASES per target (default 20000), SEED the first seed (default 0): a failure names its seed
# (the last one the log names, for a case that aborts), which BORA_FUZZ_SEED=N
# BORA_FUZZ_CASES=1 reruns. Prints each target's executions; the full log is in $LOG.
# Usage: tests/fuzz.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export BORA_FUZZ_CASES=${CASES:-20000} BORA_FUZZ_SEED=${SEED:-0} BORA_FUZZ_VERBOSE=1
LOG=${LOG:-$(mktemp)}
started=$SECONDS
cargo build --release --locked -q -p bora-server --tests -p bora-tests -p bora-batch || exit 1
status=0
for target in "-p bora-server --test fuzz" "-p bora-tests --test fuzz" "-p bora-batch --test fuzz"; do
    # shellcheck disable=SC2086
    (ulimit -v $((8 << 20)); cargo test --release --locked -q $target -- --nocapture --test-threads 2) >>"$LOG" 2>&1 \
        || status=1
done
grep -E "executions|requests:|gguf:|panicked|failed at seed|memory allocation" "$LOG"
if [ "$status" -ne 0 ]; then
    echo "fuzz: FAILED; the last seeds run:"
    grep "seed [0-9]*$" "$LOG" | tail -n 4
fi
echo "fuzz: $BORA_FUZZ_CASES cases per target from seed $BORA_FUZZ_SEED in $((SECONDS - started)) s (log: $LOG)"
exit "$status"
