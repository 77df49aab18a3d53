"""Benchmark: `cerebellum-ray solve` on a finished guided study: how long an answer takes, and whether the maps it
proposes land within the predicted uncertainty when measured.

    python bench/bench_solve.py --store DIR --study S [--budgets 10] [--verify]

Budgets: bits per weight spread evenly over the measured range of the study (its smallest and largest complete
rows). Each solve is a separate `cerebellum-ray solve --json` process (what a user waits for, the fit included);
with --verify each is run again with --verify (one trial each, stored as strategy "solve": run it on a copy of a
store whose tables you still need unchanged). Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from cerebellum_ray.core import store


def solve(store_dir: str, study: str, bpw: float, verify: bool) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "cerebellum_ray.cli", "solve", "--store", store_dir, "--study", study, "--max-bpw",
           f"{bpw:.4f}", "--json"] + (["--verify"] if verify else [])
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"solve failed for {bpw}: {out.stderr[-2000:]}")
    return json.loads(out.stdout), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--budgets", type=int, default=10)
    ap.add_argument("--verify", action="store_true")
    args = ap.parse_args()
    rows = [r for r in store.rows(args.store, [args.study]) if r["status"] == "complete" and r.get("bpw")]
    lo, hi = min(r["bpw"] for r in rows), max(r["bpw"] for r in rows)
    budgets = np.linspace(lo, hi, args.budgets + 2)[1:-1]
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores; `python bench/bench_solve.py --store {args.store} "
          f"--study {args.study} --budgets {args.budgets}{' --verify' if args.verify else ''}` "
          f"({time.strftime('%Y-%m-%d')}); {len(rows)} complete rows, measured {lo:.3f}-{hi:.3f} bpw\n")
    print("| budget bpw | map bpw | solve wall s (process) | in-process s | predicted KLD ± SE | already measured | "
          "verified KLD ± SE | within 2 SE |")
    print("|---:|---:|---:|---:|---:|---|---:|---|")
    walls, hits, n_verified = [], 0, 0
    for b in budgets:
        res, wall = solve(args.store, args.study, float(b), False)
        walls.append(wall)
        verified, inside = "-", "-"
        if args.verify and res["measured"] is None:
            res_v, _ = solve(args.store, args.study, float(b), True)
            v = res_v["verified"]
            verified = f"{v['kld']:.5f} ± {v['kld_se'] or 0:.5f}"
            inside = "yes" if v["within_2se"] else "no"
            hits += bool(v["within_2se"])
            n_verified += 1
        p = res["predicted"]
        print(f"| {b:.3f} | {res['bpw']:.3f} | {wall:.1f} | {res['seconds']:.2f} | {p['kld']:.5f} ± {p['kld_se']:.5f} | "
              f"{'yes' if res['measured'] is not None else 'no'} | {verified} | {inside} |")
    print(f"\nSlowest solve {max(walls):.1f} s as a whole process (median {np.median(walls):.1f} s)"
          + (f"; verified maps within 2 predicted SE: {hits} of {n_verified}" if args.verify else "") + ".")


if __name__ == "__main__":
    main()
