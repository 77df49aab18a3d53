"""Benchmark: the code axis of a real study (issue 13). Does any map trade code for text, as the model card's router
layer 10 did (best PPL, -9.7 % HumanEval)?

    python bench/bench_code_front.py --store DIR --study S [--with-study PRESETS] [--front-on size,kld,kld_code] \
        [--verify] [--plot bench/gemma3-270m-ppl-vs-humaneval.png]

The study must have scored the code corpus (objectives with kld_code, e.g. search_spaces/gemma3-270m-code.yaml).
With --verify, HumanEval (all 164 problems, greedy, 384 new tokens) runs on every member of the study's front on
--front-on that has no full HumanEval yet (`cerebellum-ray verify`; resumable), each paired against the source model
on the same problems. Then prints Markdown for bench/RESULTS.md:

- text against code over every complete row (of S and the --with-study studies, e.g. llama.cpp's presets scored
  the same way): Spearman of KLD and code KLD, and the measured pairs where one map is
  better on text and worse on code, each by more than 2 standard errors of the difference (a trade), with the
  choices that differ;
- the best map for budgets across the study's range solved by text KLD and by code KLD (`solve --metric`): where
  they differ, the text-optimal map costs code and the code-optimal one costs text;
- the front members with HumanEval: pass@1, its paired difference from the source model (SE, exact McNemar p),
  the share of completions stuck in a repetition loop;
- with --plot, the front of text PPL against HumanEval pass@1 (`cerebellum-ray pareto --x ppl --y humaneval`).
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np

from cerebellum_ray.core import store
from cerebellum_ray.study.run import StudyRecord
from cerebellum_ray.predict.surrogate import spearman
from cerebellum_ray.results.verify import VerifyOptions, members, verify

N_PROBLEMS = 164


def complete_rows(store_dir: str, studies: list[str]) -> list[dict]:
    rows = [r for r in store.rows(store_dir, studies) if r["status"] == "complete" and r.get("kld") is not None
            and r.get("kld_code") is not None]
    if not rows:
        raise SystemExit(f"studies {studies} have no complete rows with kld and kld_code (score the code corpus)")
    return rows


def run_verify(store_dir: str, study: str, front_on: tuple[str, ...]) -> None:
    record = StudyRecord.load(store_dir, study)
    opts = VerifyOptions(store_dir=store_dir, study=study, source=record.source, front_on=front_on,
                         imatrix=record.imatrix, cache_dir=record.cache_dir)
    front = sorted(members(opts), key=lambda r: r["size_bytes"])
    todo = [front[i]["trial_id"] for i in spread_order(len(front)) if (front[i].get("humaneval_n") or 0) < N_PROBLEMS]
    print(f"verify: {len(todo)} of {len(front)} front members without a full HumanEval", file=sys.stderr)
    for trial in todo:  # one at a time: an interrupted run keeps every member verified so far
        t0 = time.perf_counter()
        (row,) = verify(replace(opts, front=False, trials=(trial,)))
        print(f"  {trial}: pass@1 {row['humaneval']:.4f} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def spread_order(n: int) -> list[int]:
    """0..n-1 with the ends first, then each next index as far as possible from those taken: a run stopped early
    has still covered the front's whole size range."""
    order = [0, n - 1][: n] if n > 1 else list(range(n))
    while len(order) < n:
        order.append(max((i for i in range(n) if i not in order), key=lambda i: min(abs(i - j) for j in order)))
    return order


def choices(row: dict) -> dict[str, int]:
    """The row's point (parameter -> candidate index); other params (a preset's base) are left out."""
    params = json.loads(row["params"]) if row.get("params") else {}
    return {p: v for p, v in params.items() if isinstance(v, int)}


def trades(rows: list[dict], z: float = 2.0) -> list[tuple[float, dict, dict]]:
    """(strength, a, b): a is better than b on text KLD and worse on code KLD, each by more than z SE."""
    out = []
    for a, b in itertools.permutations(rows, 2):
        d_text = b["kld"] - a["kld"]  # > 0: a better on text
        d_code = a["kld_code"] - b["kld_code"]  # > 0: a worse on code
        se_text = math.hypot(a["kld_se"] or 0, b["kld_se"] or 0)
        se_code = math.hypot(a["kld_code_se"] or 0, b["kld_code_se"] or 0)
        if se_text > 0 and se_code > 0 and d_text > z * se_text and d_code > z * se_code:
            out.append((min(d_text / se_text, d_code / se_code), a, b))
    return sorted(out, key=lambda t: -t[0])


def differing(a: dict, b: dict, space_types: dict[str, list[str]]) -> str:
    ca, cb = choices(a), choices(b)

    def name(point: dict[str, int], p: str) -> str:
        return space_types[p][point[p]] if p in point and p in space_types else "base"

    return ", ".join(f"{p} {name(cb, p)}->{name(ca, p)}" for p in sorted(set(ca) | set(cb)) if ca.get(p) != cb.get(p))


def space_types_of(store_dir: str, study: str) -> dict[str, list[str]]:
    _, space = StudyRecord.load(store_dir, study).open_space()
    return {d.param: list(d.types) for d in space.dimensions}


def solved_pairs(store_dir: str, study: str, rows: list[dict], n: int = 6) -> None:
    from cerebellum_ray.results.recommend import make_budget, solve_study

    own = [r["bpw"] for r in rows if r["study"] == study]
    budgets = np.linspace(min(own), max(own), n + 2)[1:-1]
    print("\n| budget bpw | solved by | bpw | predicted text KLD | predicted code KLD | same map | choices that differ |")
    print("|---:|---|---:|---:|---:|---|---|")
    for b in budgets:
        by = {m: solve_study(store_dir, study, make_budget(max_bpw=float(b)), metric=m) for m in ("kld", "kld_code")}
        same = by["kld"].map == by["kld_code"].map
        diff = ", ".join(f"{p} {by['kld'].choices[p]}/{by['kld_code'].choices[p]}" for p in by["kld"].choices
                         if by["kld"].choices[p] != by["kld_code"].choices[p])
        for m, res in list(by.items())[: 1 if same else 2]:
            pr = res.predicted
            print(f"| {b:.3f} | {'both' if same else m} | {res.bpw:.3f} | {pr['kld']:.4f} ± {pr['kld_se']:.4f} | "
                  f"{pr['kld_code']:.4f} ± {pr['kld_code_se']:.4f} | {'yes' if same else 'no'} | "
                  f"{diff if m == 'kld' else ''} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--with-study", action="append", default=[], help="more rows for the text-vs-code analysis")
    ap.add_argument("--front-on", default="size,kld,kld_code")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    front_on = tuple(args.front_on.split(","))
    if args.verify:
        run_verify(args.store, args.study, front_on)
    rows = complete_rows(args.store, [args.study, *args.with_study])
    types = space_types_of(args.store, args.study)
    text, code = np.array([r["kld"] for r in rows]), np.array([r["kld_code"] for r in rows])
    lossy = text > 1e-4  # the ratio leaves out maps equal to the reference (KLD ~0 on both)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores; `python bench/bench_code_front.py --store "
          f"{args.store} --study {args.study}{''.join(f' --with-study {s}' for s in args.with_study)} --front-on {args.front_on}{' --verify' if args.verify else ''}` "
          f"({time.strftime('%Y-%m-%d')})\n")
    print(f"- {len(rows)} complete rows: Spearman of text KLD and code KLD {spearman(text, code):.3f}; code KLD / "
          f"text KLD median {np.median(code[lossy] / text[lossy]):.2f} (range {np.min(code[lossy] / text[lossy]):.2f}-"
          f"{np.max(code[lossy] / text[lossy]):.2f}, maps with a text KLD above 1e-4)")
    found = trades(rows)
    print(f"- pairs where one map is better on text and worse on code, each by more than 2 SE: {len(found)} of "
          f"{len(rows) * (len(rows) - 1)} ordered pairs")
    if found:
        print("\n| better on text | text KLD (vs) | code KLD (vs) | bpw (vs) | z (weaker side) | what differs |")
        print("|---|---:|---:|---:|---:|---|")
        seen = set()
        for strength, a, b in found:
            if len(seen) >= 8 or (a["trial_id"], b["trial_id"]) in seen:
                continue
            seen.add((a["trial_id"], b["trial_id"]))
            print(f"| {a['label'] or a['trial_id']} | {a['kld']:.4f} ({b['kld']:.4f}) | {a['kld_code']:.4f} ({b['kld_code']:.4f}) | "
                  f"{a['bpw']:.3f} ({b['bpw']:.3f}) | {strength:.1f} | {differing(a, b, types)} |")
    solved_pairs(args.store, args.study, rows)
    verified = sorted((r for r in rows if r["study"] == args.study and (r.get("humaneval_n") or 0) >= N_PROBLEMS),
                      key=lambda r: r["bpw"])
    if verified:
        print(f"\nFront members on ({args.front_on}) with HumanEval ({N_PROBLEMS} problems), paired against the "
              "source model:\n")
        print("| trial | bpw | text KLD | code KLD | PPL | code PPL | pass@1 | vs source (points, SE) | McNemar p | "
              "loops |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in verified:
            print(f"| {r['trial_id']} | {r['bpw']:.3f} | {r['kld']:.4f} | {r['kld_code']:.4f} | {r['ppl']:.2f} | "
                  f"{r['ppl_code']:.3f} | {100 * r['humaneval']:.1f} % | {100 * r['humaneval_delta']:+.1f} "
                  f"({100 * r['humaneval_delta_se']:.1f}) | {r['humaneval_mcnemar_p']:.3g} | "
                  f"{100 * r['humaneval_loops']:.0f} % |")
        ref = [r["humaneval"] - r["humaneval_delta"] for r in verified]
        print(f"\n- the source model's pass@1 on the same problems: {100 * ref[0]:.1f} %")
        if args.plot:
            cmd = [sys.executable, "-m", "cerebellum_ray.cli", "pareto", "--store", args.store, "--study", args.study,
                   "--x", "ppl", "--y", "humaneval", "--plot", args.plot]
            done = subprocess.run(cmd, capture_output=True, text=True)
            print(f"- plot: {args.plot}" if done.returncode == 0 else f"- plot failed: {done.stderr[-500:]}")


if __name__ == "__main__":
    main()
