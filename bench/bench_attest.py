"""An independent check of `export --plain`: ggufpacker's `attest` (PyPI ggufpacker) re-derives a GGUF with the real
llama-quantize from the source (and imatrix) and compares the whole file's sha256.

    python bench/bench_attest.py [--ggufpacker ggufpacker] [--llama-quantize PATH] [--out bench/out/attest]

A small real study first: llama.cpp's Q4_K_M preset scored on the tiny Gemma-4-style MoE with an imatrix (a local
Ray, under a minute). Its row is exported twice, as `export` does by default (cerebellum.* provenance keys, the
source's tensor order) and with --plain, each named MODEL-Q4_K_M.gguf (ggufpacker reads the preset from the name),
and each is attested. Expected: the default export refused, the plain one proven bit-exact. ggufpacker is not a
dependency: install it anywhere (`pip install ggufpacker` into a scratch venv) and pass its path. llama-quantize:
bench/build_llama_tools.sh builds it from the llama.cpp inside the llama-cpp-python sdist (the default path).
Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp  # noqa: F401  (before numpy)

ROOT = Path(__file__).resolve().parents[1]


def study(out: Path) -> tuple[str, Path, Path]:
    from cerebellum_ray.formats.tiny import make_tiny, make_tiny_imatrix
    from cerebellum_ray.study.search import SearchOptions, run_search

    source = make_tiny("gemma4", out / "tiny-gemma4-f16.gguf", seed=0)
    imatrix = make_tiny_imatrix(source, out / "tiny-gemma4.imatrix", seed=0)
    run_search(SearchOptions(space_file=str(ROOT / "search_spaces" / "tiny-gemma4.yaml"), source=str(source),
                             study="attest", store_dir=str(out / "store"), strategy="presets", presets=("Q4_K_M",),
                             imatrix=str(imatrix), cache_dir=str(out / "cache"), verbose=False, num_cpus=2))
    return str(out / "store"), source, imatrix


def attest(ggufpacker: str, llama_quantize: str, source: Path, imatrix: Path, model: Path) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([ggufpacker, "attest", "--source", str(source), "--imatrix", str(imatrix),
                           "--llama-quantize", llama_quantize, "-o", str(model) + ".derivation.json", str(model)],
                          capture_output=True, text=True, timeout=1800)
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    verdict = next((x for x in reversed(lines) if x.startswith(("proven", "REFUSED", "error"))), lines[-1] if lines
                   else "")
    return proc.returncode, verdict.strip(), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ggufpacker", default=shutil.which("ggufpacker") or "ggufpacker")
    ap.add_argument("--llama-quantize", default=str(ROOT / "bench/out/llama.cpp/build/bin/llama-quantize"))
    ap.add_argument("--out", default="bench/out/attest")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if not Path(args.llama_quantize).is_file():
        raise SystemExit(f"no llama-quantize at {args.llama_quantize}: run bench/build_llama_tools.sh")
    store_dir, source, imatrix = study(out)

    from cerebellum_ray.results.export import export

    rows = []
    for name, plain in (("default", False), ("plain", True)):
        folder = out / name
        folder.mkdir()
        model = folder / "tiny-gemma4-Q4_K_M.gguf"
        export(store_dir, None, str(model), trial="Q4_K_M", plain=plain)
        rc, verdict, seconds = attest(args.ggufpacker, args.llama_quantize, source, imatrix, model)
        rows.append((name, rc, verdict, seconds))
    version = subprocess.run([args.ggufpacker, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores; {version or 'ggufpacker'}; `python "
          f"bench/bench_attest.py --ggufpacker {args.ggufpacker} --llama-quantize {args.llama_quantize}` "
          f"({time.strftime('%Y-%m-%d')})\n")
    print("| export of the Q4_K_M row | attest exit | verdict | seconds |")
    print("|---|---:|---|---:|")
    for name, rc, verdict, seconds in rows:
        print(f"| {'--plain' if name == 'plain' else 'default (cerebellum.* keys)'} | {rc} | {verdict} | "
              f"{seconds:.1f} |")
    return 0 if rows[1][1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
