#!/usr/bin/env bash
# Predicted outputs against plain decoding on the CPU-sized random Mixtral of benches/e2e.sh
# (hidden 1024, intermediate 3584, 8 layers, 8 experts, top-2), at Q4_K_M (the file
# benches/gguf.sh has llama.cpp's llama-quantize make; Q4_K from `--quantize q4_k` where it is
# missing) and bf16: `bora bench --prediction` answers a prompt once (GEN tokens, default 400,
# greedy), then decodes it again interleaved (plain, right, wrong, wrong, right, plain): with no
# prediction, with the answer itself as the prediction (an edit whose result is known) and with
# another prompt's answer (a wrong one). Prints the best decode tokens/s of each, the ratios to
# plain decoding, the drafts kept and rejected, and whether every output equalled the plain one.
# Usage: benches/predicted.sh [DIR]   (DIR keeps the checkpoints; default .cache/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/bench-model}
cargo build --release -q -p bora-cli -p bora-benches
[ -f "$dir/bf16/config.json" ] || target/release/e2e gen "$dir"
tok=(--tokenizer models/tokenizers/tokenizer.model.v1)
q4=(--model "$dir/mixtral-Q4_K_M.gguf")
if [ ! -f "$dir/mixtral-Q4_K_M.gguf" ]; then
  echo "no $dir/mixtral-Q4_K_M.gguf (benches/gguf.sh makes it): Q4_K from the bf16 checkpoint instead"
  q4=(--model "$dir/bf16" "${tok[@]}" --quantize q4_k)
fi
for weights in ${WEIGHTS:-q4_k_m bf16}; do
  case $weights in
    q4_k_m) model=("${q4[@]}") ;;
    bf16) model=(--model "$dir/bf16" "${tok[@]}") ;;
  esac
  target/release/bora -q bench "${model[@]}" --prompt-len "${PROMPT:-64}" --gen-len "${GEN:-400}" \
    --batch 1 --prediction --json | python3 -c "
import json, sys
p = json.load(sys.stdin)['prediction']
r, w = p['right'], p['wrong']
print(f\"$weights: plain {p['plain_decode_tokens_per_s']:.1f} tok/s; \"
      f\"right prediction {r['decode_tokens_per_s']:.1f} tok/s = {r['vs_plain']:.2f}x \"
      f\"(kept {r['accepted_prediction_tokens']}, rejected {r['rejected_prediction_tokens']}); \"
      f\"wrong {w['decode_tokens_per_s']:.1f} tok/s = {w['vs_plain']:.2f}x \"
      f\"(kept {w['accepted_prediction_tokens']}, rejected {w['rejected_prediction_tokens']}); \"
      f\"outputs identical to plain: {p['same_output']}\")"
done
