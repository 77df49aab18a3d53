"""Benchmark: the ablation strategy vs the Optuna strategy on the tiny MoE, by hypervolume at equal trial counts.

Runs the card's ablation procedure (its trial count N is whatever the procedure needs), then an Optuna study
(NSGA-II) with the same N trials, on the same space, evaluation and reference; both fronts share one hypervolume
reference point. llama.cpp presets are scored too, as reference points. Prints Markdown for bench/RESULTS.md and
writes the plot next to the store.

    python bench/bench_strategies.py [--workdir bench/out/strategies] [--seed 0]
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import os
import platform
import time
from pathlib import Path

from cerebellum_ray import store
from cerebellum_ray.pareto import compare_fronts, compute_fronts
from cerebellum_ray.plots import plot_png
from cerebellum_ray.search import SearchOptions, run_search
from cerebellum_ray.tiny import make_tiny, make_tiny_imatrix


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="bench/out/strategies")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = make_tiny("gemma4", work / "tiny-gemma4-f16.gguf")
    imatrix = make_tiny_imatrix(source, work / "tiny-gemma4.imatrix")
    tag = time.strftime("%H%M%S")
    common = dict(space_file="search_spaces/tiny-gemma4.yaml", source=str(source), store_dir=str(work / "store"),
                  imatrix=str(imatrix), verbose=False, cache_dir=str(work / "cache"), num_cpus=os.cpu_count(),
                  seed=args.seed)
    t0 = time.perf_counter()
    run_search(SearchOptions(strategy="presets", study=f"presets-{tag}", **common))
    t1 = time.perf_counter()
    run_search(SearchOptions(strategy="ablation", study=f"ablation-{tag}", **common))
    t2 = time.perf_counter()
    n = len(store.rows(common["store_dir"], [f"ablation-{tag}"]))
    run_search(SearchOptions(strategy="optuna", study=f"optuna-{tag}", trials=n, **common))
    t3 = time.perf_counter()
    rows = store.rows(common["store_dir"], [f"ablation-{tag}", f"optuna-{tag}"])
    refs = [r for r in store.rows(common["store_dir"], [f"presets-{tag}"]) if r["status"] == "complete"]
    fronts = compute_fronts(rows, ["size", "kld"], group_by="strategy")
    by = {f.study: f for f in fronts}
    cmp = compare_fronts(by["ablation"], by["optuna"])
    plot = work / f"strategies-{tag}.png"
    plot_png(fronts, refs, plot, ["size", "kld"], title="tiny gemma4: ablation vs optuna (same trial count)")
    status = {s: {k: sum(1 for r in rows if r["strategy"] == s and r["status"] == k)
                  for k in ("complete", "pruned", "failed")} for s in ("ablation", "optuna")}
    print(f"""
### Strategies: ablation vs optuna on the tiny MoE (`python bench/bench_strategies.py`)

Machine: {platform.machine()}, {os.cpu_count()} cores, CPU trials (1 CPU each); space `search_spaces/tiny-gemma4.yaml`
(15 parameters), evaluation 6 chunks x 128 tokens, KLD against the F16 source; {n} trials each.

| strategy | trials | complete / pruned / failed | points on front | hypervolume (share of box) | wall s |
|---|---:|---|---:|---:|---:|
| ablation (card procedure) | {n} | {status['ablation']['complete']} / {status['ablation']['pruned']} / {status['ablation']['failed']} | {cmp['n_a']} | {cmp['hypervolume_fraction_a']:.3f} | {t2 - t1:.0f} |
| optuna (NSGA-II) | {n} | {status['optuna']['complete']} / {status['optuna']['pruned']} / {status['optuna']['failed']} | {cmp['n_b']} | {cmp['hypervolume_fraction_b']:.3f} | {t3 - t2:.0f} |

- ablation points dominated by the optuna front: {cmp['a_dominated_by_b']} of {cmp['n_a']}; optuna points dominated by
  the ablation front: {cmp['b_dominated_by_a']} of {cmp['n_b']} (coverage C(ablation, optuna) = {cmp['coverage_a_b']:.2f},
  C(optuna, ablation) = {cmp['coverage_b_a']:.2f})
- presets scored as reference points in {t1 - t0:.0f} s: """ + ", ".join(
        f"{r['label']} {r['bpw']:.2f} bpw / KLD {r['kld']:.3f}" for r in sorted(refs, key=lambda r: r['bpw'])) + f"""
- plot: `{plot}`
""")


if __name__ == "__main__":
    main()
