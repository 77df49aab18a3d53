#!/usr/bin/env bash
# The device check for issue 3's generation target, as one script for a GPU machine with no package index (run
# bench/gpu/prepare.sh here first; the device tool carries bench/out/gpu):
#   1. build llama-cpp-python 0.3.36 with CUDA into /tmp/site unless it is there (~5.5 min on 16 cores; /tmp lives
#      as long as the machine stays warm), install the carried wheels beside it;
#   2. run `bench/bench_score.py --only generation --models tiny` (batched vs one-at-a-time create_completion, step
#      costs, KV layouts) with every layer on the GPU; results go to $OUT (or bench/out/gpu/results).
#   CUDA_ARCH=90 (H100/H200) by default; CPU_ONLY=1 skips the CUDA build and uses the installed llama_cpp (a dry
#   run of everything else on a machine without a GPU).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
PACK=bench/out/gpu
RESULTS="${OUT:-$PACK/results}"
SITE="${SITE:-/tmp/site}"
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/check.log") 2>&1
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 --version
if [ "${CPU_ONLY:-0}" != 1 ]; then
  if ! PYTHONPATH="$SITE" python3 -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" \
      2>/dev/null; then
    rm -rf /tmp/sdist && mkdir -p /tmp/sdist "$SITE"
    tar xzf "$PACK/llama_cpp_python-0.3.36-stripped.tar.gz" -C /tmp/sdist
    t0=$(date +%s)
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DGGML_NATIVE=off -DLLAVA_BUILD=off" \
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip install --quiet --no-build-isolation --no-deps \
      --target "$SITE" /tmp/sdist/llama_cpp_python-0.3.36
    echo "llama-cpp-python CUDA build: $(($(date +%s) - t0)) s"
  fi
  # everything else from the carried wheels (never over what the machine has: numpy, pyarrow, torch's jinja2)
  python3 -m pip install --quiet --no-index --no-deps --target "$SITE" --upgrade "$PACK"/wheels/*.whl
  export PYTHONPATH="$here:$SITE"  # this checkout's cerebellum_ray, then the machine's own packages
fi
python3 - <<'PY'
import llama_cpp
print("llama_cpp", llama_cpp.__version__, "GPU offload:", bool(llama_cpp.llama_supports_gpu_offload()))
PY
python3 bench/bench_score.py --only generation --models tiny | tee "$RESULTS/generation.md"
