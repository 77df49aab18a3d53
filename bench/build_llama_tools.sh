#!/usr/bin/env bash
# Build llama.cpp's own command-line tools (the oracles: llama-perplexity, llama-quantize, llama-imatrix,
# llama-gguf-split) from the llama.cpp sources inside the llama-cpp-python 0.3.36 sdist, i.e. the same llama.cpp
# commit the project links against. ~5-10 min on 2 cores; a second run only builds what changed.
#   bash bench/build_llama_tools.sh [WORKDIR]      -> WORKDIR/build/bin/llama-perplexity, ...
set -euo pipefail
WORK=${1:-bench/out/llama.cpp}
TARGETS=(llama-perplexity llama-quantize llama-imatrix llama-gguf-split)
mkdir -p "$WORK"
if [ ! -d "$WORK/src" ]; then
  python3 -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$WORK"
  mkdir -p "$WORK/src" && tar xzf "$WORK"/llama_cpp_python-0.3.36.tar.gz -C "$WORK/src" --strip-components=1
fi
cmake -S "$WORK/src/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >/dev/null
cmake --build "$WORK/build" --target "${TARGETS[@]}" -j "$(nproc)" >/dev/null
for t in "${TARGETS[@]}"; do ls -l "$WORK/build/bin/$t"; done
