#!/usr/bin/env bash
# The embedding examples, as the README shows them, each on the tiny fixture, a GGUF fixture and
# the demo model: Rust (crates/bora-engine/examples/chat.rs), Python (examples/python/chat.py,
# with the package installed in PYTHON's environment; default .cache/py-venv/bin/python) and C
# (examples/c/chat.c compiled against bora.h and libbora, with its checks of errors and
# cancellation, its answer compared with `bora serve`'s for the same request). libbora is built with the `bora` binary, whose compiled dependencies it shares.
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
# The answer `bora serve` gives for the C example's request, on a server started for MODEL.
served_answer() {
    "$python" - "$1" <<'PY'
import json, re, subprocess, sys, urllib.request
proc = subprocess.Popen(["target/release/bora", "serve", "--model", sys.argv[1], "--port", "0",
                         "--kv-cache-mib", "64"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
try:
    url = None
    while url is None:
        line = proc.stdout.readline()
        if not line:
            sys.exit("bora serve exited")
        m = re.search(r"listening on (http://[0-9.:]+)", line)
        url = m.group(1) if m else None
    name = None
    for _ in range(1200):
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                name = json.load(r)["data"][0]["id"]
                break
        except OSError:
            import time; time.sleep(0.1)
    body = {"model": name, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me about experts."}]}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        print(json.load(r)["choices"][0]["message"]["content"])
finally:
    proc.terminate()
    proc.wait(timeout=60)
PY
}

# Each program gets 5 minutes: a loop that never ends fails the run instead of hanging it.
for model in "${models[@]}"; do
    echo "== Rust: $model"
    timeout 300 target/release/examples/chat "$model" "Hello!"
    echo "== Python: $model"
    timeout 300 "$python" examples/python/chat.py "$model" "Hello!"
    echo "== C: $model"
    c_out=$(LD_LIBRARY_PATH=target/release timeout 300 "$out/chat" "$model")
    echo "$c_out"
    # The C API's answer is the server's, for the same request.
    served=$(timeout 300 bash -c "$(declare -f served_answer); python=$python served_answer $model")
    if [ "answer: $served" != "$(echo "$c_out" | grep '^answer: ')" ]; then
        echo "the C API and bora serve answer differently on $model:"
        echo "  C:      $(echo "$c_out" | grep '^answer: ')"
        echo "  served: answer: $served"
        exit 1
    fi
done
