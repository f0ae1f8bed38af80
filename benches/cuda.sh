#!/usr/bin/env bash
# bora's CUDA check and benchmark, for a GPU machine lent for a few minutes, in short calls
# (each well inside one 600-second device call; parity first, so that a broken path shows
# before any time goes to speed).
#
#   benches/cuda.sh pack       here (no GPU): builds the CUDA binary (.ci/cuda-build), strips
#                              it and writes .cache/cuda-dist/bora.xz (about 10 MB) to carry
#   benches/cuda.sh PHASE      there, from the repository root with .cache/cuda-dist carried:
#     parity  (about 4 min at most) the machine, a warm-up that pays the JIT of the PTX
#             kernels, then `bora check-device` on the committed fixtures: f32, bf16, and f32
#             with every expert in host memory (--cpu-moe: the split step) and with the first
#             layer's (--n-cpu-moe 1);
#     speed   (about 8 min) Mixtral 8x7B's shape with random weights made on the GPU at Q4_K
#             and Q8_0 (TYPES=...), bf16 where it fits: prefill of 512-token prompts, decode
#             at batch 1, 8 and 32, the share of the memory bound reached; `bora bench-moe`;
#     hybrid  (about 8 min) 8x7B's shape at Q4_K all on the GPU, against the GPU's memory
#             capped at 24 GB (--device-memory-mib 24576: the fit puts the first layers'
#             experts in host memory), and the same with --expert-cache auto: batch 1 and 8,
#             prefill 512; the plan and the cache's hit rate in the table.
#   Each prints its table and writes $OUT (or .cache/cuda-out)/PHASE.json (its steps' JSON)
#   and PHASE.log (everything it printed). A step that fails says so and the phase goes on;
#   the phase's status is 1 if any failed.
# The CUDA libraries (cuBLAS, cuRAND, CUDA 13) come from the machine's Python wheels (torch's
# nvidia-* packages, in either of their layouts) or a CUDA toolkit; the driver from the
# machine. The kernels of candle are built for CUDA_COMPUTE_CAP (default 90: H100/H200) by
# .ci/cuda-build; bora's own are PTX for 7.5 and later.
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

phase=$mode
case $phase in parity | speed | hybrid) ;; *) echo "usage: $0 pack|parity|speed|hybrid" >&2; exit 2 ;; esac
out=${OUT:-.cache/cuda-out}
res=$(mktemp -d) # one JSON per step; $out/$phase.json gathers them
mkdir -p "$out"
exec > >(tee "$out/$phase.log") 2>&1
# For a dry run elsewhere: DEVICE=cpu SHAPE=demo TYPES="q8_0 f32" PROMPT_LEN=64 benches/cuda.sh speed
# (hybrid: DEVICE=cpu SHAPE=demo HYBRID_TYPE=q8_0 CAP_MIB=30 PROMPT_LEN=64)
device=${DEVICE:-cuda}
shape=${SHAPE:-mixtral-8x7b}
types=${TYPES:-q4_k q8_0 bf16}
prompt_len=${PROMPT_LEN:-512}
bora=$dist/bora
[ -x "$bora" ] || { xz -dkf "$dist/bora.xz" && chmod +x "$bora"; } || exit 1
# cuBLAS 13 and cuRAND: torch's wheels put them under nvidia/cu13/lib or nvidia/*/lib; a
# toolkit under /usr/local/cuda*/lib64; ldconfig knows the system's.
nvlib=$(python3 - <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = []
for r in roots:
    dirs += glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13*"), recursive=True)
    dirs += glob.glob(os.path.join(r, "nvidia", "**", "libcurand.so.10*"), recursive=True)
dirs += glob.glob("/usr/local/cuda*/lib64/libcublas.so.13*") + glob.glob("/usr/local/cuda*/targets/*/lib/libcublas.so.13*")
seen = []
for p in dirs:
    d = os.path.dirname(p)
    if d not in seen:
        seen.append(d)
print(":".join(seen))
PY
)
export LD_LIBRARY_PATH=${nvlib:+$nvlib:}${LD_LIBRARY_PATH:-}
echo "== $phase on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv,noheader || true
echo "CUDA libraries from: ${nvlib:-none found in the Python wheels or /usr/local/cuda, the system ones}"
"$bora" --version || exit 1

status=0
step() { # step NAME TIMEOUT_S CMD...: runs CMD, its stdout to $res/NAME.json
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

case $phase in
  parity)
    # The first launches JIT candle's and bora's PTX for this GPU: a step of its own.
    step warm-up 150 "$bora" check-device --device "$device" --dtype f32 --steps 1 \
      --models models/fixtures/gguf/tiny-Q4_K_M.gguf --json
    step check-f32 60 "$bora" check-device --device "$device" --dtype f32 --json
    step check-bf16 60 "$bora" check-device --device "$device" --dtype bf16 --json
    step check-cpu-moe 60 "$bora" check-device --device "$device" --dtype f32 --cpu-moe --json
    step check-n-cpu-moe 60 "$bora" check-device --device "$device" --dtype f32 --n-cpu-moe 1 --json
    ;;
  speed)
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
    ;;
  hybrid)
    cap=${CAP_MIB:-24576}
    hyb=(bench --model "random:$shape" --device "$device" --quantize "${HYBRID_TYPE:-q4_k}"
      --prompt-len "$prompt_len" --gen-len 64 --batch 1,8 --json)
    # A dry run on the CPU: candle's CPU device stands in for the GPU.
    [ "$device" = cpu ] && hyb+=(--stand-in --dtype f32)
    step hybrid-all-gpu 150 "$bora" "${hyb[@]}" --n-cpu-moe 0
    step hybrid-fit 150 "$bora" "${hyb[@]}" --device-memory-mib "$cap"
    step hybrid-cache 150 "$bora" "${hyb[@]}" --device-memory-mib "$cap" --expert-cache auto
    ;;
esac

python3 - "$res" "$out" "$types" "$shape" "$phase" <<'PY'
import glob, json, os, sys
res, out, types, shape, phase = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4], sys.argv[5]
def load(name):
    try:
        with open(os.path.join(res, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
nan = float("nan")
if phase == "parity":
    print("\n== parity with the CPU path (|Δ logit| median/p99/max; greedy tokens the same)")
    for d in ("warm-up", "check-f32", "check-bf16", "check-cpu-moe", "check-n-cpu-moe"):
        c = load(d)
        if not c:
            print(f"  {d}: no result (see {phase}.log)"); continue
        for m in c["models"]:
            a = m["abs_diff"]
            print(f"  {d:15} {m['model']:40} {a['median']:.1e}/{a['p99']:.1e}/{a['max']:.1e} "
                  f"{m['greedy_agree']}/{m['greedy_compared']} {'ok' if m['passed'] else 'FAILED'}")
if phase == "speed":
    print(f"\n== {shape} shape, random weights made on the device")
    print(f"  {'weights':7} {'prefill tok/s':>13} {'decode b1':>10} {'b8':>9} {'b32':>9} {'bound b1':>9} {'reached':>8}")
    for q in types:
        b = load("bench-" + q)
        if not b:
            print(f"  {q:7} no result (see {phase}.log: a model that does not fit says so)"); continue
        runs = {r["batch"]: r for r in b["runs"]}
        dec = lambda n: runs[n]["decode_tokens_per_s"] if n in runs else nan
        frac = b.get("batch1_decode_fraction_of_bound") or nan
        print(f"  {q:7} {runs.get(1, {}).get('prefill_tokens_per_s', nan):13.0f} {dec(1):10.1f} "
              f"{dec(8):9.1f} {dec(32):9.1f} {b['decode_bound_tokens_per_s']:9.1f} {100 * frac:7.0f}%")
        print(f"          copy bandwidth (read + written) {b['memory_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s")
    print("  published, for comparison (other setups): vLLM fused MoE, Mixtral 8x7B bf16, H100 TP8,"
          " 1000 in + 50 out: 0.459 s at batch 1 (vllm-project/vllm#2542); llama.cpp CUDA, Q5_K_M,"
          " H100: 60.7 tok/s decode at batch 1 (abetlen/llama-cpp-python#1017, Dec 2023)")
    print(f"\n== MoE block, one {shape} layer (µs per step by tokens)")
    for q in types:
        m = load("moe-" + q)
        if m:
            print(f"  {q:7} " + "  ".join(f"{r['tokens']}: {r['step_us']:.0f}" for r in m["runs"]))
if phase == "hybrid":
    print(f"\n== {shape} shape at {os.environ.get('HYBRID_TYPE', 'q4_k')}: all on the GPU against a capped GPU (prefill {os.environ.get('PROMPT_LEN', 512)})")
    print(f"  {'case':16} {'host layers':>11} {'prefill b1':>10} {'decode b1':>10} {'decode b8':>10} {'on GPU':>7} {'cache hit':>9}")
    for case in ("hybrid-all-gpu", "hybrid-fit", "hybrid-cache"):
        b = load(case)
        if not b:
            print(f"  {case:16} no result (see {phase}.log)"); continue
        runs = {r["batch"]: r for r in b["runs"]}
        p = b.get("placement") or {}
        c = p.get("expert_cache") or {}
        print(f"  {case:16} {len(p.get('host_expert_layers', [])):11} "
              f"{runs.get(1, {}).get('prefill_tokens_per_s', nan):10.0f} "
              f"{runs.get(1, {}).get('decode_tokens_per_s', nan):10.1f} "
              f"{runs.get(8, {}).get('decode_tokens_per_s', nan):10.1f} "
              f"{100 * p.get('routed_on_device_share', nan):6.1f}% "
              + (f"{100 * c['hit_rate']:8.1f}%" if c else f"{'-':>9}"))
    print("  (the plan each load made is in hybrid.log, after the load line)")
summary = {os.path.basename(f)[:-5]: load(os.path.basename(f)[:-5])
           for f in sorted(glob.glob(os.path.join(res, "*.json")))}
with open(os.path.join(out, phase + ".json"), "w") as f:
    json.dump(summary, f, indent=1)
PY
exit $status
