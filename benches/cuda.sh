#!/usr/bin/env bash
# bora's CUDA check and benchmark, for a GPU machine lent for a few minutes.
#
#   benches/cuda.sh pack     here (no GPU): builds the CUDA binary (.ci/cuda-build), strips it
#                            and writes .cache/cuda-dist/bora.xz (about 10 MB) to carry there
#   benches/cuda.sh run      there, from the repository root with .cache/cuda-dist carried:
#       1. parity: `bora check-device` on the committed fixtures, f32 then bf16 (logits and
#          greedy tokens of prefill and batched decode steps against bora's CPU path);
#       2. Mixtral 8x7B's shape with random weights made on the GPU (`--model
#          random:mixtral-8x7b`, no file) at Q4_K and Q8_0, and bf16 where it fits (93 GB:
#          an H200, not an H100, where bora's "does not fit" error is the expected result):
#          prefill of 512-token prompts, decode at batch 1, 8 and 32, and the share of the
#          memory bound reached at batch 1 (bytes of weights one token reads over the card's
#          measured copy bandwidth);
#       3. the MoE layer bench (`bora bench-moe`, the criterion bench `moe`'s measurement).
#   It prints one table at the end and writes $OUT (or .cache/cuda-out)/summary.json, every
#   step's JSON in one file, and log.txt, everything it printed.
# The CUDA libraries (cuBLAS, cuRAND, CUDA 13) come from the machine's Python wheels (torch's
# nvidia-* packages); the driver from the machine. Each step has a time limit (2 × 60 s of
# checks, 3 × (110 + 40) s of benchmarks: 570 s at most), so that one 600-second device call
# holds the whole run; TYPES="q4_k" (or any subset) runs fewer.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
dist=.cache/cuda-dist

if [ "$mode" = pack ]; then
  set -e
  bin=$(.ci/cuda-build | tail -1)
  mkdir -p "$dist"
  strip -o "$dist/bora" "$bin"
  xz -T0 -6 -f -k "$dist/bora"
  rm -f "$dist/bora"
  ls -l "$dist"
  exit 0
fi

out=${OUT:-.cache/cuda-out}
res=$(mktemp -d) # one JSON per step; summary.json under $out gathers them all
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
# For a dry run elsewhere: DEVICE=cpu SHAPE=demo TYPES="q8_0 f32" PROMPT_LEN=64 benches/cuda.sh
device=${DEVICE:-cuda}
shape=${SHAPE:-mixtral-8x7b}
types=${TYPES:-q4_k q8_0 bf16}
prompt_len=${PROMPT_LEN:-512}
bora=$dist/bora
[ -x "$bora" ] || { xz -dkf "$dist/bora.xz" && chmod +x "$bora"; } || exit 1
nvlib=$(python3 - <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13"), recursive=True):
        print(os.path.dirname(p)); raise SystemExit
PY
)
export LD_LIBRARY_PATH=${nvlib:+$nvlib:}${LD_LIBRARY_PATH:-}
echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "CUDA libraries from: ${nvlib:-<not found>}"
"$bora" --version

status=0
step() { # step NAME TIMEOUT_S CMD...: runs CMD, its stdout to $out/NAME.json
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$res/$name.json"; then
    echo "   ok in $((SECONDS - t0)) s"
  else
    echo "   FAILED (status $?) in $((SECONDS - t0)) s"
    status=1
  fi
}

step check-f32 60 "$bora" check-device --device "$device" --dtype f32 --json
step check-bf16 60 "$bora" check-device --device "$device" --dtype bf16 --json
for q in $types; do
  case $q in
    bf16 | f16 | f32) args=(--dtype "$q") ;;
    *) args=(--quantize "$q") ;;
  esac
  step "bench-$q" 110 "$bora" bench --model "random:$shape" --device "$device" "${args[@]}" \
    --prompt-len "$prompt_len" --gen-len 64 --batch 1,8,32 --json
  step "moe-$q" 40 "$bora" bench-moe --shape "$shape" --device "$device" "${args[@]}" \
    --tokens 1,8,32,64,512 --json
done

python3 - "$res" "$out" "$types" "$shape" <<'PY'
import json, os, sys
res, out, types, shape = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4]
def load(name):
    try:
        with open(os.path.join(res, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
summary = {"checks": {}, "bench": {}, "moe": {}}
print("\n== parity with the CPU path (|Δ logit| median/p99/max; greedy tokens the same)")
for d in ("f32", "bf16"):
    c = load("check-" + d)
    summary["checks"][d] = c
    if not c:
        print(f"  {d}: no result"); continue
    for m in c["models"]:
        a = m["abs_diff"]
        print(f"  {d:4} {m['model']:40} {a['median']:.1e}/{a['p99']:.1e}/{a['max']:.1e} "
              f"{m['greedy_agree']}/{m['greedy_compared']} {'ok' if m['passed'] else 'FAILED'}")
print(f"\n== {shape} shape, random weights made on the device")
print(f"  {'weights':7} {'prefill tok/s':>13} {'decode b1':>10} {'b8':>9} {'b32':>9} {'bound b1':>9} {'reached':>8}")
for q in types:
    b = load("bench-" + q)
    summary["bench"][q] = b
    if not b:
        print(f"  {q:7} no result (see log.txt: a model that does not fit says so)"); continue
    runs = {r["batch"]: r for r in b["runs"]}
    dec = lambda n: runs[n]["decode_tokens_per_s"] if n in runs else float("nan")
    frac = b.get("batch1_decode_fraction_of_bound") or float("nan")
    print(f"  {q:7} {runs.get(1, {}).get('prefill_tokens_per_s', float('nan')):13.0f} {dec(1):10.1f} "
          f"{dec(8):9.1f} {dec(32):9.1f} {b['decode_bound_tokens_per_s']:9.1f} {100 * frac:7.0f}%")
print("  copy bandwidth (read + written): "
      + ", ".join(f"{q} run {b['memory_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s"
                  for q, b in summary["bench"].items() if b))
print("  published, for comparison (other setups; see the issue's closing note): vLLM fused MoE,"
      " Mixtral 8x7B bf16, H100 TP8, 1000 in + 50 out: 0.459 s at batch 1, 1.489 s at batch 32"
      " (vllm-project/vllm#2542); llama.cpp CUDA, Q5_K_M, H100: 60.7 tok/s decode at batch 1"
      " (abetlen/llama-cpp-python#1017, Dec 2023)")
print(f"\n== MoE block, one {shape} layer (µs per step by tokens)")
for q in types:
    m = load("moe-" + q)
    summary["moe"][q] = m
    if m:
        print(f"  {q:7} " + "  ".join(f"{r['tokens']}: {r['step_us']:.0f}" for r in m["runs"]))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
PY
exit $status
