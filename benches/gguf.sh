#!/usr/bin/env bash
# bora against llama.cpp on the same GGUF files, made by llama.cpp's converter and quantizer
# from the CPU-sized random Mixtral of benches/e2e.sh (vocab 32000, hidden 1024, intermediate
# 3584, 8 layers, 8 experts, top-2): prefill of 128 tokens and 128 decode tokens, one stream,
# 2 threads. llama.cpp is built from the llama-cpp-python sdist (models/build_llama_cpp.sh);
# the converter needs a Python with torch (PYTHON, default python3; models/requirements-fixtures.txt).
# The machines are shared and noisy: both run REPEAT times (default 3), interleaved, and the
# best run of each counts. Prints tokens/s and bora's ratio to llama.cpp per file.
# LLAMA_BENCH=PATH runs another llama-bench build (e.g. one configured with -DGGML_NATIVE=OFF
# -DGGML_AVX2=ON -DGGML_AVX512=OFF, to compare on the instruction set bora's kernels use).
# Usage: benches/gguf.sh [DIR]   (DIR keeps the checkpoints and GGUF files; default .cache/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/bench-model}
py=${PYTHON:-python3}
llama=$(models/build_llama_cpp.sh "${LLAMA_CPP_DIR:-.cache/llama-cpp}" | tail -1)
tree="$llama/vendor/llama.cpp"
lbin="$tree/build/bin"
cargo build --release -q -p bora-cli -p bora-benches
[ -f "$dir/bf16/config.json" ] || target/release/e2e gen "$dir"
if [ ! -f "$dir/mixtral-F16.gguf" ]; then
  src="$dir/gguf-src"
  mkdir -p "$src"
  for f in "$dir"/bf16/*; do ln -sf "$(realpath "$f")" "$src/"; done
  cp models/tokenizers/tokenizer.model.v1 "$src/tokenizer.model"
  "$py" "$tree/convert_hf_to_gguf.py" "$src" --outtype f16 --outfile "$dir/mixtral-F16.gguf" >/dev/null 2>&1
fi
types=${TYPES:-Q4_K_M Q8_0}
for q in $types; do
  [ -f "$dir/mixtral-$q.gguf" ] || "$lbin/llama-quantize" "$dir/mixtral-F16.gguf" "$dir/mixtral-$q.gguf" "$q" >/dev/null 2>&1
done
out=$(mktemp)
# The peak once loaded: a one-token prompt and one decode step (activations next to nothing).
for q in $types; do
  f="$dir/mixtral-$q.gguf"
  target/release/bora -q bench --model "$f" --prompt-len 1 --gen-len 2 --batch 1 --threads 2 --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'engine':'load','type':'$q','peak':r['peak_memory_bytes']}))" >> "$out"
done
for _ in $(seq "${REPEAT:-3}"); do
  for q in $types; do
    f="$dir/mixtral-$q.gguf"
    target/release/bora -q bench --model "$f" --prompt-len 128 --gen-len 128 --batch 1 --threads 2 --json \
      | python3 -c "import json,os,sys; r=json.load(sys.stdin); x=r['runs'][0]; print(json.dumps({'engine':'bora','type':'$q','pp':x['prefill_tokens_per_s'],'tg':x['decode_tokens_per_s'],'peak':r['peak_memory_bytes'],'file':os.path.getsize('$f')}))" >> "$out"
    "${LLAMA_BENCH:-$lbin/llama-bench}" -m "$f" -p 128 -n 128 -t 2 -r 1 -o jsonl 2>/dev/null \
      | python3 -c "
import json,sys
r={}
for l in sys.stdin:
    d=json.loads(l); r['pp' if d['n_prompt']>0 else 'tg']=d['avg_ts']
print(json.dumps({'engine':'llama.cpp','type':'$q',**r}))" >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, sys
best, loaded = {}, {}
for r in map(json.loads, open(sys.argv[1])):
    if r["engine"] == "load":
        loaded[r["type"]] = r["peak"]
        continue
    b = best.setdefault((r["engine"], r["type"]), {"pp": 0, "tg": 0, "n": 0, "peak": 0})
    b["pp"], b["tg"], b["n"] = max(b["pp"], r["pp"]), max(b["tg"], r["tg"]), b["n"] + 1
    if "peak" in r:
        b["peak"], b["file"] = max(b["peak"], r["peak"]), r["file"]
types = sorted({t for _, t in best})
print(f"best of {best[('bora', types[0])]['n']} interleaved runs each; prompt 128, decode 128, 2 threads")
print(f"{'file':8} {'bora pp':>9} {'llama pp':>9} {'ratio':>6} {'bora tg':>9} {'llama tg':>9} {'ratio':>6}")
for t in types:
    b, l = best[("bora", t)], best[("llama.cpp", t)]
    print(f"{t:8} {b['pp']:9.1f} {l['pp']:9.1f} {b['pp']/l['pp']:6.2f} {b['tg']:9.1f} {l['tg']:9.1f} {b['tg']/l['tg']:6.2f}")
for t in types:
    b = best[("bora", t)]
    print(f"bora {t}: peak RSS {b['peak']/2**20:.0f} MiB for a {b['file']/2**20:.0f} MiB file"
          f" ({b['peak']/b['file']:.2f}x; KV cache, activations and the binary included);"
          f" once loaded {loaded[t]/2**20:.0f} MiB ({loaded[t]/b['file']:.2f}x)")
PY
