#!/usr/bin/env bash
# The GPU checks, for a machine with one NVIDIA GPU, Python 3.12 and no package index (pack with
# bench/gpu/prepare.sh here first). The packages come in two parts, each within the device tool's 64 MiB carry, in
# two device calls while the machine stays warm (it keeps /tmp between calls):
#   carry bench/out/gpu/b:   bash bench/gpu/check.sh install          (Ray and pandas into /tmp/site; ~30 s)
#   carry bench/out/gpu/a:   bash bench/gpu/check.sh all              (the CUDA llama-cpp-python and the rest, then:)
#     generation  batched vs one-at-a-time generation (bench_score.py --only generation) on the tiny gemma4 and on a
#                 random model of Gemma 3 270M's sizes, every layer on the GPU;
#     imatrix     an importance matrix collected on the GPU against one collected on the CPU;
#     trials      the same search with --gpus-per-trial 0.25 and 1 (bench/bench_gpu_trials.py, $TRIALS each).
# `check.sh generation|imatrix|trials` runs one of them; `check.sh rehearsal` (part a only) the 26B-shaped trial
# parts of bench/gpu/rehearsal.py ($LAYERS, default 2,3). Results (Markdown and logs) go to $OUT, or
# bench/out/gpu/results. LOCAL=1: no installing, this machine's python (a dry run of the plumbing on a CPU).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
stage="${1:?usage: check.sh install|all|generation|imatrix|trials|rehearsal}"
RESULTS="${OUT:-bench/out/gpu/results}"
SITE=/tmp/site
PY=python3
mkdir -p "$RESULTS" "$SITE"
exec > >(tee -a "$RESULTS/check-$stage.log") 2>&1
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"

install_part() {  # every wheel of a carried part, and the CUDA llama-cpp-python (built here if it cannot load)
  local part=$1
  [ -d "$part" ] || return 0
  if ls "$part"/*.whl >/dev/null 2>&1; then
    local t0=$(date +%s)
    python3 -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" "$part"/*.whl 2>&1 \
      | grep -v -i warning || true
    echo "installed $(ls "$part"/*.whl | wc -l) wheels from $part in $(($(date +%s) - t0)) s"
  fi
  if [ -f "$part/llama_cpp-cuda-sm90.tar.xz" ]; then
    tar xJf "$part/llama_cpp-cuda-sm90.tar.xz" -C "$SITE"
    local missing
    missing=$(ldd "$SITE/llama_cpp/lib/libggml-cuda.so" | grep "not found" || true)
    if [ -n "$missing" ]; then  # this machine's CUDA differs from the build's: build here (~5.5 min, 16 cores)
      echo "the carried CUDA build cannot load here ($missing): building from the sdist"
      rm -rf /tmp/sdist "$SITE/llama_cpp" && mkdir -p /tmp/sdist
      tar xzf "$part/llama_cpp_python-0.3.36-stripped.tar.gz" -C /tmp/sdist
      local t0=$(date +%s)
      CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DGGML_NATIVE=off -DLLAVA_BUILD=off" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip install --quiet --no-build-isolation --no-deps \
        --target "$SITE" --upgrade /tmp/sdist/llama_cpp_python-0.3.36
      echo "llama-cpp-python CUDA build: $(($(date +%s) - t0)) s"
    fi
  fi
}

if [ "${LOCAL:-0}" = 1 ]; then
  PY="$here/.venv/bin/python"
else
  # libcudart/libcublas 13: the toolkit's, else the nvidia-* wheels beside torch
  libdirs=/usr/local/cuda/lib64
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
    found=$(find /usr/local/cuda/ /usr/lib/x86_64-linux-gnu /opt \
        $(python3 -c 'import site; print(" ".join(site.getsitepackages()))') -name "$lib*" 2>/dev/null | head -1 || true)
    [ -n "$found" ] && libdirs="$libdirs:$(dirname "$found")"
  done
  export LD_LIBRARY_PATH="$libdirs:${LD_LIBRARY_PATH:-}"
  install_part bench/out/gpu/b
  install_part bench/out/gpu/a
  export PYTHONPATH="$here:$SITE"  # this checkout's cerebellum_ray, then the carried packages
fi
[ "$stage" = install ] && exit 0
"$PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'GPU offload:', \
bool(llama_cpp.llama_supports_gpu_offload()))"

run() {  # one part, timed; a failure is reported and the next part still runs
  local name=$1; shift
  local t0=$(date +%s)
  if "$@" > "$RESULTS/$name.md"; then echo "== $name: $(($(date +%s) - t0)) s"; else
    echo "== $name FAILED after $(($(date +%s) - t0)) s"; fi
  cat "$RESULTS/$name.md"
}
case "$stage" in
  all|generation) run generation "$PY" bench/bench_score.py --only generation --models "${MODELS:-tiny,llama-270m}" ;;&
  all|imatrix) run imatrix "$PY" bench/gpu/imatrix_gpu_vs_cpu.py ;;&
  all|trials) run trials "$PY" bench/bench_gpu_trials.py --trials "${TRIALS:-16}" --workdir /tmp/gpu-trials ;;&
  rehearsal) run rehearsal "$PY" bench/gpu/rehearsal.py --layers "${LAYERS:-2,3}" ;;
  all|trials|generation|imatrix) ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
date -u
