"""Commands on model files: inspect, map, build, make-tiny, surgery."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (Command, add_split_option, cache_dir_option, human, imatrix_option, json_option,
                      load_imatrix_arg, non_negative, positive, print_json, split_size)

__all__ = ["COMMANDS", "cmd_build", "cmd_inspect", "cmd_make_tiny", "cmd_map", "cmd_surgery", "format_surgery"]


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")


def cmd_inspect(args) -> int:
    from ..formats.catalog import catalog_as_dict, load_catalog

    cat = load_catalog(args.model)
    if args.json:
        print_json(catalog_as_dict(cat))
        return 0
    print(f"{cat.path}: {cat.arch}, {cat.n_layer} layers, {len(cat.tensors)} tensors, "
          f"{cat.n_elements / 1e6:.2f} M weights, {human(cat.tensor_bytes)} of tensor data "
          f"({cat.bits_per_weight:.3f} bits per weight), file {human(cat.file_size)}")
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


def _map_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="the model the map applies to")
    _add_map_options(p)
    p.add_argument("--tensor-type-file", help="also write the map as llama-quantize --tensor-type-file lines")
    p.add_argument("-v", "--verbose", action="store_true", help="every fallback, one line per tensor")


def cmd_map(args) -> int:
    from ..quant.build import predicted_file_size
    from ..formats.catalog import load_catalog
    from ..formats.precision_map import by_group, tensor_bytes, to_tensor_type_lines

    cat = load_catalog(args.source)
    pmap = _resolve_map(args, cat)
    imatrix = load_imatrix_arg(args)
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
        print_json(result)
        return 0
    print(f"map on {cat.path} (base {pmap.base}): file {fsize} bytes ({human(fsize)}), {bpw:.4f} bits per weight")
    for group, counts in by_group(cat, pmap).items():
        print(f"  {group:<17} " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items())))
    _print_fallbacks(pmap.fallbacks, args.verbose, indent="  ")
    return 0


def _build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="full-precision (or quantized) source GGUF")
    _add_map_options(p)
    p.add_argument("--out", required=True, help="output GGUF (written atomically; never one of the inputs)")
    p.add_argument("--cache-size", default="20G", help="cache size bound, least-recently-used eviction (20G)")
    p.add_argument("--no-cache", action="store_true", help="quantize everything, store nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="every fallback, one line per tensor")
    p.add_argument("--threads", type=positive, default=None, help="quantizer threads (default: all cores)")
    p.add_argument("--plain", action="store_true",
                   help="no cerebellum.* keys, laid out as llama-quantize writes (tensor and key order, its "
                        "quantize.imatrix.* keys naming the --imatrix file): a map it can express gives its file")
    add_split_option(p)


def cmd_build(args) -> int:
    from ..core.atomic import check_destination, refuse_inputs
    from ..quant.build import PlainFile, build
    from ..formats.catalog import load_catalog
    from ..quant.tensor_cache import TensorCache
    from ..core.units import parse_size

    check_destination(args.out)  # before any work: a bad output is refused at once
    refuse_inputs(args.out, _map_inputs(args))
    split_max_bytes = split_size(args)
    cat = load_catalog(args.source)
    pmap = _resolve_map(args, cat)
    imatrix = load_imatrix_arg(args)
    cache = None if args.no_cache else TensorCache(args.cache_dir, size_limit=parse_size(args.cache_size,
                                                                                           "--cache-size"))
    try:
        report = build(args.source, pmap, args.out, imatrix=imatrix, cache=cache, n_threads=args.threads,
                       inputs=_map_inputs(args), split_max_bytes=split_max_bytes,
                       plain=PlainFile(Path(args.imatrix).name if args.imatrix else None) if args.plain else None)
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
        print_json(result)
        return 0
    _print_fallbacks(pmap.fallbacks, args.verbose)
    parts = f" (and {len(report.parts) - 1} more parts)" if len(report.parts) > 1 else ""
    print(f"wrote {report.out}{parts}: {human(report.file_size)}, {report.bits_per_weight:.4f} bits per weight, "
          f"{result['quantized']} quantized, {result['cached']} from cache, {result['copied']} copied, "
          f"{report.seconds:.2f} s")
    return 0


def _make_tiny_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=["gemma4", "llama", "mixtral"], default="gemma4")
    p.add_argument("--shape", choices=["tiny", "gemma4-26b-a4b", "llama-270m"], default="tiny",
                   help="tiny (tests), gemma4-26b-a4b (Gemma 4 26B-A4B's true tensor shapes, --arch gemma4) or "
                        "llama-270m (Gemma 3 270M's sizes on the llama architecture, --arch llama)")
    p.add_argument("--layers", type=positive, help="number of layers (default: the shape's own)")
    p.add_argument("--dtype", choices=["F16", "BF16", "F32"], default="F16", help="type of the weight matrices (F16)")
    p.add_argument("out")
    p.add_argument("--seed", type=non_negative, default=0)


def cmd_make_tiny(args) -> int:
    from ..formats.tiny import make_tiny, make_tiny_imatrix

    path = make_tiny(args.arch, args.out, seed=args.seed, shape=args.shape, n_layer=args.layers, dtype=args.dtype)
    made = [str(path)]
    if args.imatrix:
        fmt = "dat" if args.imatrix.endswith(".dat") else "gguf"
        made.append(str(make_tiny_imatrix(path, args.imatrix, fmt=fmt, seed=args.seed)))
    if args.json:
        print_json({"files": made})
    else:
        for m in made:
            print(f"wrote {m} ({human(Path(m).stat().st_size)})")
    return 0


def _surgery_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the GGUF to operate on")
    p.add_argument("--set", action="append", default=[], required=True, metavar="TENSOR=TYPE",
                   help="recast TENSOR (an exact name, or a regex as in map rules) to TYPE (repeatable), "
                        "e.g. blk.8.ffn_gate_inp.weight=Q8_0")
    p.add_argument("--out", help="output GGUF (may be the input: replaced only after the check); "
                                 "required unless --dry-run")
    p.add_argument("--dry-run", action="store_true", help="show each change and the size delta, write nothing")
    p.add_argument("--threads", type=positive, default=None, help="quantizer and check threads (default: all cores)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers on the GPU for the llama.cpp check (0)")


def cmd_surgery(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..results.surgery import SurgeryError, surgery

    if not args.out and not args.dry_run:
        raise SurgeryError("--out OUT.gguf is required (it may be the input file), or ask for --dry-run")
    from ..results.surgery import surgery_imatrix

    imatrix_path = surgery_imatrix(args.model, args.set, args.imatrix)  # the file's own, by default
    imatrix = None
    if imatrix_path:
        from ..formats.imatrix import load_imatrix

        imatrix = load_imatrix(imatrix_path)
    if args.out:
        from ..core.atomic import refuse_inputs

        refuse_inputs(args.out, {"imatrix": imatrix_path})
    report = surgery(args.model, args.set, args.out, imatrix=imatrix, dry_run=args.dry_run,
                     n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    if args.json:
        print_json({**report.as_dict(), "imatrix": imatrix_path})
    else:
        print(format_surgery(report))
        if imatrix_path and not args.imatrix:
            print(f"imatrix: {imatrix_path} (the one the file was built with, from its card)")
    return 0


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


def _print_fallbacks(fallbacks, verbose: bool, indent: str = "") -> None:
    """llama.cpp's row-length fallbacks: one line per rule and reason (tensors as ranges), each tensor with -v."""
    from ..formats.precision_map import fallback_summary

    if verbose:
        for fb in fallbacks:
            print(f"{indent}fallback: {fb.tensor}: {fb.asked or 'preset'} -> {fb.got} ({fb.reason})")
    else:
        for line in fallback_summary(fallbacks):
            print(f"{indent}fallback: {line}")


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
                 f"{human(r.size_before)} -> {human(r.size_after)})")
    if r.check:
        lines.append(f"check: {r.check}")
    return "\n".join(lines)


COMMANDS = (
    Command("inspect", "list every tensor: group, layer, shape, type, bytes, legal types", _inspect_arguments,
            cmd_inspect, shared=(json_option("machine-readable output"),)),
    Command("map", "resolve a precision map on a model: exact file size and bpw, no quantizing", _map_arguments,
            cmd_map, shared=(json_option(),)),
    Command("build", "build the quantized GGUF of a precision map (cached, streamed, atomic)", _build_arguments,
            cmd_build, shared=(cache_dir_option("tensor cache directory (default $CEREBELLUM_CACHE or "
                                         "~/.cache/cerebellum-ray)"), json_option())),
    Command("make-tiny", "write a tiny deterministic model (and imatrix) for tests and demos, or a random model "
                         "with a real model's shapes for rehearsals", _make_tiny_arguments, cmd_make_tiny,
            shared=(imatrix_option("also write a matching imatrix here (.dat: legacy format, else GGUF)"),
                    json_option())),
    Command("surgery", "recast individual tensors of a quantized GGUF (MoE routers included); everything else "
                       "byte-identical", _surgery_arguments, cmd_surgery,
            description="Recast individual tensors of an existing GGUF (dequantize with ggml, quantize to the new "
                        "type). Every other tensor and all metadata stay byte-identical; the result is loaded and "
                        "run in llama.cpp before it is renamed into place.",
            shared=(imatrix_option("importance matrix for the recast tensors (llama-imatrix .dat or GGUF)"),
                    json_option("machine-readable output"))),
)
