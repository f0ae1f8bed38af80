#!/usr/bin/env bash
# The low-bit GGUF fixtures: the tiny fixture model (models/fixtures/gguf/tiny-F16.gguf, made by
# gen_gguf_fixtures.py) in every i-quant, Q2_K and Q3_K, each `--pure` (every layer matrix of
# that type; the token embedding and output matrices Q8_0, which the importance matrix has no
# entries for), made by llama-quantize from the newest llama.cpp on PyPI with an importance
# matrix that llama-imatrix computes on a text in the repository (the IQ1 and IQ2 types need
# one).
#   models/gen_low_bit_gguf.sh   (builds llama.cpp with models/build_llama_cpp.sh first)
# Writes models/fixtures/gguf/tiny-TYPE-pure.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(models/build_llama_cpp.sh "${LLAMA_CPP_DIR:-.cache/llama-cpp}" | tail -1)
bin="$tree/build/bin"
out=models/fixtures/gguf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The calibration text: the README (English prose, code and numbers).
"$bin/llama-imatrix" -m "$out/tiny-F16.gguf" -f README.md -o "$work/imatrix.gguf" \
    -c 128 --chunks 16 -t "$(nproc)" >"$work/imatrix.log" 2>&1 \
    || { cat "$work/imatrix.log"; exit 1; }
# TYPE:FTYPE, the block type and the llama-quantize file type whose base type it is (`IQ2_S`
# files are IQ2_XS blocks; IQ2_S blocks are `IQ2_M`'s).
for tf in IQ1_S:IQ1_S IQ1_M:IQ1_M IQ2_XXS:IQ2_XXS IQ2_XS:IQ2_XS IQ2_S:IQ2_M IQ3_XXS:IQ3_XXS \
          IQ3_S:IQ3_S IQ4_NL:IQ4_NL IQ4_XS:IQ4_XS Q2_K:Q2_K Q3_K:Q3_K; do
    t=${tf%%:*}
    "$bin/llama-quantize" --pure --imatrix "$work/imatrix.gguf" \
        --token-embedding-type q8_0 --output-tensor-type q8_0 "$out/tiny-F16.gguf" \
        "$out/tiny-$t-pure.gguf" "${tf##*:}" >"$work/quantize.log" 2>&1 \
        || { cat "$work/quantize.log"; exit 1; }
    echo "wrote $out/tiny-$t-pure.gguf"
done
