"""The 26B-A4B rehearsal on a GPU machine: one trial's parts at the real model's tensor shapes (device check).

    python bench/gpu/rehearsal.py [--layers 2,3] [--chunks 8] [--ctx 512]

For each layer count: make-tiny --arch gemma4 --shape gemma4-26b-a4b --dtype BF16 (random weights, 262144-token
vocabulary), the reference pass of the BF16 model on the GPU (what a study computes once), a cold Q4_K_M build
into an empty tensor cache (what the first trial pays), the trial rebuild with 5 attn_q tensors changed (what every
later trial pays), loading the quantized model with every layer on the GPU, and scoring it (KLD against the
reference, top 128 + 128 tail samples per position). Two layer counts give the cost per layer. Prints Markdown.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from cerebellum_ray.quant.build import build
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.evaluate.corpus import default_text
from cerebellum_ray.evaluate.llama_runner import LlamaRunner, RunnerConfig
from cerebellum_ray.formats.precision_map import MapSpec, Rule, resolve
from cerebellum_ray.evaluate.score import EvalSpec, compute_reference, score_stream
from cerebellum_ray.quant.tensor_cache import TensorCache
from cerebellum_ray.formats.tiny import make_tiny

WORK = Path(os.environ.get("REHEARSAL_DIR", "/tmp/rehearsal"))


def one(n_layer: int, spec: EvalSpec, shape: str) -> dict:
    src = WORK / f"g4-{shape}-{n_layer}L-bf16.gguf"
    t = {}
    t0 = time.perf_counter()
    if not src.exists():
        make_tiny("gemma4", src, shape=shape, n_layer=n_layer, dtype="BF16")
    t["make"] = time.perf_counter() - t0
    cat = load_catalog(src)
    t0 = time.perf_counter()
    reference = compute_reference(src, spec, RunnerConfig(n_ctx=spec.n_ctx))
    t["reference"] = time.perf_counter() - t0
    cache_dir = WORK / f"cache-{n_layer}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache = TensorCache(cache_dir)
    base = resolve(cat, MapSpec(base="Q4_K_M"))
    changed = resolve(cat, MapSpec(base="Q4_K_M", rules=tuple(Rule(f"blk.{i}.attn_q.weight", "Q8_0")
                                                              for i in range(min(5, n_layer)))))
    t0 = time.perf_counter()
    cold = build(src, base, WORK / "cold.gguf", cache=cache, sync=False, page_aligned=True)
    t["cold build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuild = build(src, changed, WORK / "trial.gguf", cache=cache, sync=False, page_aligned=True)
    t["rebuild"] = time.perf_counter() - t0
    cache.close()
    t0 = time.perf_counter()
    runner = LlamaRunner(WORK / "trial.gguf", RunnerConfig(n_ctx=spec.n_ctx))
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    *_, rec = score_stream(WORK / "trial.gguf", spec, reference, runner=runner)
    t["score"] = time.perf_counter() - t0
    runner.close()
    return dict(n_layer=n_layer, source_gb=src.stat().st_size / 1e9, out_gb=rebuild.file_size / 1e9,
                quantized=rebuild.count("quantized"), cold_quantized=cold.count("quantized"), kld=rec.kld,
                tokens=rec.n_chunks * spec.n_ctx, device=runner.device, **t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="2,3")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--shape", default="gemma4-26b-a4b", help="make-tiny --shape (tiny: a dry run of the script)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    spec = EvalSpec(default_text(), n_ctx=args.ctx, n_chunks=args.chunks)
    rows = [one(int(n), spec, args.shape) for n in args.layers.split(",")]
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip()
    except FileNotFoundError:
        gpu = "no GPU"
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {gpu}; `python bench/gpu/rehearsal.py --layers "
          f"{args.layers} --chunks {args.chunks} --ctx {args.ctx}` ({time.strftime('%Y-%m-%d')})\n")
    cols = ["make", "reference", "cold build", "rebuild", "load", "score"]
    print("| layers | source GB (BF16) | trial GGUF GB | " + " | ".join(f"{c} s" for c in cols)
          + " | scored tokens | tokens/s scoring | quantized in the rebuild | device |")
    print("|---:|---:|---:|" + "---:|" * len(cols) + "---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['n_layer']} | {r['source_gb']:.2f} | {r['out_gb']:.2f} | "
              + " | ".join(f"{r[c]:.1f}" for c in cols)
              + f" | {r['tokens']} | {r['tokens'] / r['score']:.0f} | {r['quantized']} | {r['device']} |")
    if len(rows) == 2:
        a, b = rows
        d = b["n_layer"] - a["n_layer"]
        print("\nPer layer: " + ", ".join(f"{c} {(b[c] - a[c]) / d:.2f} s" for c in cols[1:]))
        print("30 layers (linear): " + ", ".join(
            f"{c} {a[c] + (30 - a['n_layer']) * (b[c] - a[c]) / d:.0f} s" for c in cols[1:]))


if __name__ == "__main__":
    main()
