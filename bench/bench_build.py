"""Benchmark: cached rebuild vs llama.cpp's whole-model quantizer, and the builder's peak memory.

On a synthetic llama-shaped F16 model of about 1.1 B parameters (TinyLlama's shapes, random weights):
  1. llama_model_quantize (llama.cpp, what llama-quantize runs) of the whole map        -> t_llama
  2. our build of the Q4_K_M map with a cold cache, in a child process                    -> t_cold, peak RSS
  3. our build of a map that differs in 5 tensors, warm cache, in a child process         -> t_rebuild
The map in 1. is the map of 3. (Q4_K_M plus 5 overrides), so both produce the same bytes (checked).

    python bench/bench_build.py [--workdir DIR] [--keep]

Prints a Markdown block for bench/RESULTS.md.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from cerebellum_ray import _ggml, atomic, gguf_io
from cerebellum_ray.ggml_types import file_type

SHAPES = dict(n_embd=2048, n_ff=5632, n_layer=22, n_head=32, n_head_kv=4, vocab=32000)
CHANGED = [f"blk.{i}.attn_q.weight" for i in range(5)]


def synthetic_model(path: Path, seed: int = 0) -> int:
    """Write the F16 model tensor by tensor with the project's own writer; returns the parameter count."""
    s = SHAPES
    head_dim = s["n_embd"] // s["n_head"]
    kv = s["n_head_kv"] * head_dim
    tensors = [("token_embd.weight", (s["n_embd"], s["vocab"])), ("output_norm.weight", (s["n_embd"],)),
               ("output.weight", (s["n_embd"], s["vocab"]))]
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", (s["n_embd"],)), (p + "attn_q.weight", (s["n_embd"], s["n_embd"])),
                    (p + "attn_k.weight", (s["n_embd"], kv)), (p + "attn_v.weight", (s["n_embd"], kv)),
                    (p + "attn_output.weight", (s["n_embd"], s["n_embd"])), (p + "ffn_norm.weight", (s["n_embd"],)),
                    (p + "ffn_gate.weight", (s["n_embd"], s["n_ff"])), (p + "ffn_up.weight", (s["n_embd"], s["n_ff"])),
                    (p + "ffn_down.weight", (s["n_ff"], s["n_embd"]))]
    enc = gguf_io.encode_kv
    U32 = GGUFValueType.UINT32
    kvs = [enc("general.architecture", "llama", GGUFValueType.STRING), enc("general.name", "synthetic-1b",
           GGUFValueType.STRING), enc("llama.block_count", s["n_layer"], U32), enc("llama.context_length", 2048, U32),
           enc("llama.embedding_length", s["n_embd"], U32), enc("llama.feed_forward_length", s["n_ff"], U32),
           enc("llama.attention.head_count", s["n_head"], U32), enc("llama.attention.head_count_kv", s["n_head_kv"],
           U32), enc("llama.attention.layer_norm_rms_epsilon", 1e-5, GGUFValueType.FLOAT32),
           enc("general.file_type", 1, U32)]
    slots = []
    for name, shape in tensors:
        n = int(np.prod(shape))
        type_id, nbytes = (0, 4 * n) if len(shape) == 1 else (1, 2 * n)
        slots.append(gguf_io.TensorSlot(name, shape, type_id, nbytes))
    layout = gguf_io.GGUFLayout.build(kvs, slots, 32)
    rng = np.random.default_rng(seed)
    with atomic.atomic_output(path) as f:
        f.write(layout.header)
        for slot in slots:
            n = int(np.prod(slot.shape))
            if slot.type_id == 0:
                data = np.ones(n, np.float32)
            else:
                data = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(np.float16)
            f.write(data.tobytes())
            gguf_io.write_padding(f, slot.n_bytes, 32)
    return sum(int(np.prod(s.shape)) for s in slots)


# VmHWM (peak resident set of this process image) from /proc: unlike ru_maxrss it is not inherited from the parent
# across fork + exec.
_PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"


def child_build(source: Path, out: Path, cache: Path, sets: list[str]) -> dict:
    """Run `cerebellum-ray build` in a child process; return its JSON report, wall time and peak RSS."""
    code = (
        "import time, json;"
        "t = time.perf_counter();"
        "from cerebellum_ray.cli import main;"
        f"rc = main({['build', '--source', str(source), '--base', 'Q4_K_M', '--out', str(out), '--cache-dir', str(cache), '--json'] + [a for s in sets for a in ('--set', s)]!r});"  # noqa: E501
        "print(json.dumps({'rc': rc, 'wall': time.perf_counter() - t, 'peak_rss': " + _PEAK + "}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    report = json.loads("\n".join(lines[:-1]))
    report.update(json.loads(lines[-1]))
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="bench/out/build")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / "synthetic-1b-f16.gguf"
    t0 = time.perf_counter()
    n_params = synthetic_model(src) if not src.exists() else None
    t_make = time.perf_counter() - t0
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)

    cold = child_build(src, work / "cold.gguf", cache, [])
    sets = [f"{name}=Q8_0" for name in CHANGED]
    rebuild = child_build(src, work / "rebuild.gguf", cache, sets)

    t0 = time.perf_counter()
    _ggml.llama_quantize(str(src), str(work / "llama.gguf"), file_type("Q4_K_M").id,
                         overrides=[(f"^{n.replace('.', '[.]')}$", 8) for n in CHANGED], n_threads=os.cpu_count())
    t_llama = time.perf_counter() - t0
    from gguf import GGUFReader

    ours, theirs = GGUFReader(work / "rebuild.gguf"), GGUFReader(work / "llama.gguf")
    theirs_bytes = {t.name: t.data.tobytes() for t in theirs.tensors}
    identical = all(t.data.tobytes() == theirs_bytes[t.name] for t in ours.tensors)

    from cerebellum_ray.catalog import load_catalog

    largest = max(t.n_bytes for t in load_catalog(src).tensors)
    print(f"""
### Cached rebuild vs llama_model_quantize (synthetic 1.1 B-parameter llama, F16, {src.stat().st_size / 1e9:.2f} GB)

Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; `python bench/bench_build.py`
{f'(model written in {t_make:.0f} s, {n_params / 1e9:.3f} B parameters)' if n_params else ''}

| run | wall s | quantized | from cache | copied | peak RSS |
|---|---:|---:|---:|---:|---:|
| llama_model_quantize, Q4_K_M + 5 overrides, whole model | {t_llama:.1f} | all | - | - | - |
| cerebellum-ray build, Q4_K_M, cold cache | {cold['wall']:.1f} | {cold['quantized']} | {cold['cached']} | {cold['copied']} | {cold['peak_rss'] / 2**20:.0f} MiB |
| cerebellum-ray build, 5 tensors changed, warm cache | {rebuild['wall']:.1f} | {rebuild['quantized']} | {rebuild['cached']} | {rebuild['copied']} | {rebuild['peak_rss'] / 2**20:.0f} MiB |

- speed-up of the cached rebuild over llama_model_quantize: **{t_llama / rebuild['wall']:.1f}x** (target >= 10x)
- rebuilt file byte-identical to llama.cpp's output for the same map: **{identical}**
- peak RSS of the cold build: {cold['peak_rss'] / 2**20:.0f} MiB; largest tensor {largest / 2**20:.0f} MiB;
  3 x largest = {3 * largest / 2**20:.0f} MiB (+ the interpreter's fixed overhead, measured below)
""")  # noqa: E501
    base = subprocess.run([sys.executable, "-c", "import llama_cpp, numpy, gguf, cerebellum_ray.build, "
                           "cerebellum_ray.cli; print(" + _PEAK + ")"],
                          capture_output=True, text=True, check=True)
    overhead = int(base.stdout.strip())
    print(f"- fixed overhead (interpreter + imports, no build): {overhead / 2**20:.0f} MiB; cold build peak minus "
          f"overhead = {(cold['peak_rss'] - overhead) / 2**20:.0f} MiB = "
          f"{(cold['peak_rss'] - overhead) / largest:.2f} x largest tensor")
    if not args.keep:
        for name in ("cold.gguf", "rebuild.gguf", "llama.gguf"):
            (work / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
