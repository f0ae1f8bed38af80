#!/usr/bin/env bash
# The embedding examples, as the README shows them, each on the tiny fixture, a GGUF fixture and
# the demo model: Rust (crates/bora-engine/examples/chat.rs), Python (examples/python/chat.py,
# with the package installed in PYTHON's environment; default .cache/py-venv/bin/python) and C
# (examples/c/chat.c compiled against bora.h and libbora, with its checks of errors and
# cancellation). libbora is built with the `bora` binary, whose compiled dependencies it shares.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.cache/py-venv/bin/python}
models=(models/fixtures/tiny-mixtral models/fixtures/gguf/tiny-Q4_K_M.gguf bora-demo)
cargo build --release --locked -p bora-cli -p bora-c
cargo build --release --locked -p bora-engine --example chat
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -std=c99 -Wall -Wextra -Werror -I crates/bora-c/include examples/c/chat.c \
    -L target/release -lbora -o "$out/chat"
for model in "${models[@]}"; do
    echo "== Rust: $model"
    target/release/examples/chat "$model" "Hello!"
    echo "== Python: $model"
    "$python" examples/python/chat.py "$model" "Hello!"
    echo "== C: $model"
    LD_LIBRARY_PATH=target/release "$out/chat" "$model"
done
