"""Benchmark: exact solve time of cerebellum_ray.predict.solver on a synthetic space shaped like the Gemma-4 26B-A4B space.

The space (search_spaces/gemma4-26b-a4b.yaml on the real shapes, bench-made costs): attn_q per layer (30 x 4 types,
the full-attention layers twice as large), attn_k per layer (30 x 3), the router per layer (30 x Q4_0/Q8_0/F32),
ffn_up, ffn_gate and the experts' gate_up per group (3 x 3): 93 dimensions, exact byte sizes from the ggml type
table. Costs: a per-dimension sensitivity (log-normal) times the type's relative error (about 4x per bit) with 5%
noise, plus `--interactions` random pairwise terms of 10% of a typical choice's cost. `--random` instead draws
every size and cost at random (no two dimensions alike: the hardest case for the dominance pruning).

    python bench/bench_solver.py [--budgets 20] [--interactions 5] [--seed 0] [--random]

Prints one line per budget (bytes, bpw, objective, states kept, seconds) and the total.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cerebellum_ray.formats.ggml_types import ggml_type
from cerebellum_ray.predict.solver import Interaction, Problem, Solver, budget_grid

N_LAYER = 30
EMBD = 2816
REL_ERROR = {"Q2_K": 0.06, "Q3_K": 0.018, "Q4_K": 0.0045, "Q5_K": 0.0012, "Q4_0": 0.007, "Q8_0": 3e-5, "F32": 0.0}


def _dims() -> list[tuple[str, int, int, tuple[str, ...]]]:
    """(param, rows, tensors, types): the 26B space's dimensions on its real shapes."""
    dims = []
    for il in range(N_LAYER):
        full = il % 6 == 5
        dims.append((f"attn_q.L{il}", 16 * (512 if full else 256), 1, ("Q2_K", "Q3_K", "Q4_K", "Q5_K")))
        dims.append((f"attn_k.L{il}", (2 if full else 8) * (512 if full else 256), 1, ("Q2_K", "Q3_K", "Q4_K")))
        dims.append((f"router.L{il}", 128, 1, ("Q4_0", "Q8_0", "F32")))
    dims.append(("ffn_up", 2112, N_LAYER, ("Q2_K", "Q3_K", "Q4_K")))
    dims.append(("ffn_gate", 2112, N_LAYER, ("Q2_K", "Q3_K", "Q4_K")))
    dims.append(("experts_gate_up", 1408 * 128, N_LAYER, ("Q2_K", "Q3_K", "Q4_K")))
    return dims


def make_problem(seed: int, n_interactions: int, random: bool) -> Problem:
    rng = np.random.default_rng(seed)
    params, types, costs, sizes = [], [], [], []
    for name, rows, n_tensors, tys in _dims():
        params.append(name)
        types.append(tys)
        if random:
            sizes.append(tuple(int(v) for v in np.sort(rng.integers(10**5, 10**9, size=len(tys)))))
            costs.append(tuple(float(v) for v in np.sort(rng.random(len(tys)))[::-1]))
            continue
        sizes.append(tuple(n_tensors * rows * ggml_type(t).row_bytes(EMBD) for t in tys))
        sens = float(rng.lognormal(0.0, 1.0)) * n_tensors
        costs.append(tuple(sens * REL_ERROR[t] * float(1 + 0.05 * rng.standard_normal()) for t in tys))
    typical = float(np.median([c[0] - c[-1] for c in costs]))
    interactions = []
    for _ in range(n_interactions):
        a, b = rng.choice(len(params), size=2, replace=False)
        table = rng.normal(0.0, 0.1 * typical, size=(len(types[a]), len(types[b])))
        interactions.append(Interaction(params[a], params[b], tuple(tuple(float(v) for v in r) for r in table)))
    fixed = 6_000_000_000  # token_embd, output, ffn_down, experts' down, attn_v/output, norms at the base types
    n_elements = 25_800_000_000
    return Problem(tuple(params), tuple(types), tuple(costs), tuple(sizes), fixed_bytes=fixed, n_elements=n_elements,
                   interactions=tuple(interactions))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, default=20)
    ap.add_argument("--interactions", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random", action="store_true", help="random sizes and costs (no two dimensions alike)")
    args = ap.parse_args()
    problem = make_problem(args.seed, args.interactions, args.random)
    t0 = time.perf_counter()
    solver = Solver(problem)
    prep = time.perf_counter() - t0
    print(f"{len(problem.params)} dimensions, {sum(len(t) for t in problem.types)} choices, "
          f"{len(problem.interactions)} interactions, {'random' if args.random else '26B-shaped'}; "
          f"sizes {problem.min_bytes}..{problem.max_bytes} bytes; preparation {prep:.3f} s")
    print("| budget bytes | bpw | objective | states | seconds |")
    print("|---:|---:|---:|---:|---:|")
    worst = total = 0.0
    for b in budget_grid(problem, args.budgets):
        s = solver.solve(b)
        worst, total = max(worst, s.seconds), total + s.seconds
        print(f"| {b} | {8 * b / problem.n_elements:.4f} | {s.objective:.6g} | {s.states} | {s.seconds:.3f} |")
    print(f"total {total:.2f} s for {args.budgets} budgets; slowest {worst:.3f} s")


if __name__ == "__main__":
    main()
