"""Benchmark: llama.cpp's presets against the maps a search found, scored the same way (the model card's question:
does the search beat hand-made quantizations at no larger size?).

    python bench/bench_presets_vs_found.py --store DIR --study S [--study S2 ...] --space SPACE [--model gemma3|tiny]
        [--presets Q2_K,Q3_K_S,Q3_K_M,Q4_K_S,Q4_K_M]

Scores the presets as a study "presets" in the same store (skipped when it is there: same evaluation, so the
numbers are comparable), then for each preset prints the smallest found map that is no larger and has a lower mean
KLD, and how many qualify. Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import os
import platform
import time
from pathlib import Path

from bench_strategies import source_model  # the same source (and tiny imatrix) the strategy studies ran on
from cerebellum_ray.core import store
from cerebellum_ray.study.run import SearchOptions
from cerebellum_ray.study.strategies import run_search

PRESETS = "Q2_K,Q3_K_S,Q3_K_M,Q4_K_S,Q4_K_M"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--study", action="append", required=True, help="the searched studies (repeatable)")
    ap.add_argument("--space", required=True)
    ap.add_argument("--model", choices=["gemma3", "tiny"], default="gemma3")
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    if not store.rows(args.store, ["presets"]):
        source, imatrix = source_model(args.model, Path(args.store).resolve().parent)
        run_search(SearchOptions(strategy="presets", presets=tuple(args.presets.split(",")), study="presets",
                                 space_file=str(Path(args.space).resolve()), source=source, imatrix=imatrix,
                                 store_dir=args.store, cache_dir=args.cache_dir, verbose=False,
                                 num_cpus=os.cpu_count()))
    presets = [r for r in store.rows(args.store, ["presets"]) if r["status"] == "complete"]
    found = [r for r in store.rows(args.store, args.study) if r["status"] == "complete" and r["kld"] is not None]
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores; `python bench/bench_presets_vs_found.py --store "
          f"{args.store} {' '.join('--study ' + s for s in args.study)} --space {args.space} --model {args.model}` "
          f"({time.strftime('%Y-%m-%d')}); {len(found)} complete searched trials\n")
    print("| preset (as llama.cpp assigns it on this model) | bpw | mean KLD | smallest found map no larger with lower "
          "KLD | maps that qualify |")
    print("|---|---:|---:|---|---:|")
    for p in sorted(presets, key=lambda r: r["bpw"]):
        better = sorted((r for r in found if r["size_bytes"] <= p["size_bytes"] and r["kld"] < p["kld"]),
                        key=lambda r: r["size_bytes"])
        best = f"{better[0]['bpw']:.3f} bpw, KLD {better[0]['kld']:.4g}" if better else "none"
        print(f"| {p.get('label') or p['trial_id']} | {p['bpw']:.3f} | {p['kld']:.4g} | {best} | {len(better)} |")


if __name__ == "__main__":
    main()
