"""Throughput of a search: trials per hour and where a trial's time goes (build, load, score), from a store.

    python bench/bench_throughput.py --store DIR --study S [--study S2 ...]

Wall time is from the first trial's start to the last trial's finish (Ray start-up and the reference pass before
the first trial are not counted). A trial's time outside build + load + score is Ray's: actor start-up, imports,
scheduling. Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

from cerebellum_ray.core import store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--study", action="append", required=True)
    args = ap.parse_args()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores; `python bench/bench_throughput.py --store "
          f"{args.store} " + " ".join(f"--study {s}" for s in args.study) + "`\n")
    print("| study | trials (complete / pruned / failed) | wall min | trials per hour | median trial s | build | load "
          "| score | Ray and other |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for study in args.study:
        rows = [r for r in store.rows(args.store, [study]) if r["started_at"] and r["finished_at"]]
        if not rows:
            print(f"| {study} | no rows | | | | | | | |")
            continue
        wall = (max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)).total_seconds()
        spans = [(r["finished_at"] - r["started_at"]).total_seconds() for r in rows]
        parts = {k: sum(r[k] or 0.0 for r in rows) for k in ("build_s", "load_s", "score_s")}
        total = sum(spans)
        other = max(0.0, total - sum(parts.values()))
        counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "pruned", "failed")}
        print(f"| {study} | {len(rows)} ({counts['complete']} / {counts['pruned']} / {counts['failed']}) | "
              f"{wall / 60:.1f} | {3600 * len(rows) / wall:.0f} | {statistics.median(spans):.1f} | "
              f"{100 * parts['build_s'] / total:.0f} % | {100 * parts['load_s'] / total:.0f} % | "
              f"{100 * parts['score_s'] / total:.0f} % | {100 * other / total:.0f} % |")


if __name__ == "__main__":
    main()
