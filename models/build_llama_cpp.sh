#!/usr/bin/env bash
# Fetches the llama-cpp-python source distribution from PyPI (it carries llama.cpp's tree:
# converter, gguf-py, quantizer, llama-bench) and builds the parts bora's fixture script and
# benches use. Prints the unpacked directory. Needs a C++ compiler; cmake and ninja come from
# PyPI into a venv of their own.
#   models/build_llama_cpp.sh [DEST]   (default: .cache/llama-cpp)
set -euo pipefail
VERSION=0.3.36
DEST=${1:-.cache/llama-cpp}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
SRC="$DEST/llama_cpp_python-$VERSION"
if [ ! -d "$SRC" ]; then
    # The source distribution, fetched by pip from the package index it is configured with.
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" \
        -d "$DEST/sdist"
    tar xzf "$DEST/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$DEST"
fi
if [ ! -x "$DEST/tools/bin/cmake" ]; then
    python3 -m venv "$DEST/tools"
    "$DEST/tools/bin/pip" install -q cmake ninja
fi
export PATH="$DEST/tools/bin:$PATH"
cd "$SRC/vendor/llama.cpp"
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build build -j"$(nproc)" --target llama llama-quantize llama-bench >/dev/null
echo "$SRC"
