"""The exact budget solver against brute force, and its refusals."""

import itertools

import numpy as np
import pytest

from cerebellum_ray.predict.solver import (Interaction, Problem, Solver, SolverError, budget_grid, pareto_front,
                                   refined_curve, size_range, solve, solve_many)


def random_problem(rng, n_dims, max_choices, n_interactions, interaction_scale=0.3, distinct_sizes=True):
    ks = rng.integers(2, max_choices + 1, size=n_dims)
    types, costs, sizes = [], [], []
    for k in ks:
        s = np.sort(rng.integers(1, 1000, size=k)) if distinct_sizes else np.arange(1, k + 1) * 100
        c = np.sort(rng.random(k))[::-1] + rng.normal(0, 0.1, k)  # mostly cheaper when larger, not always
        types.append(tuple(f"T{j}" for j in range(k)))
        costs.append(tuple(float(v) for v in c))
        sizes.append(tuple(int(v) for v in s))
    params = tuple(f"p{i}" for i in range(n_dims))
    pairs = list(itertools.combinations(range(n_dims), 2))
    interactions = []
    for j in rng.choice(len(pairs), size=min(n_interactions, len(pairs)), replace=False):
        a, b = pairs[j]
        table = rng.normal(0, interaction_scale, size=(ks[a], ks[b]))
        interactions.append(Interaction(params[a], params[b], tuple(tuple(float(v) for v in r) for r in table)))
    return Problem(params, tuple(types), tuple(costs), tuple(sizes), fixed_bytes=int(rng.integers(0, 100)),
                   n_elements=10_000, constant=1.0, interactions=tuple(interactions))


def brute_force(problem):
    """(objective, size) of every point, vectorized."""
    ks = [len(t) for t in problem.types]
    grid = np.array(list(itertools.product(*[range(k) for k in ks])))
    cost = np.full(len(grid), problem.constant)
    size = np.full(len(grid), problem.fixed_bytes, dtype=np.int64)
    index = {p: i for i, p in enumerate(problem.params)}
    for d in range(len(ks)):
        cost += np.asarray(problem.costs[d])[grid[:, d]]
        size += np.asarray(problem.sizes[d])[grid[:, d]]
    for it in problem.interactions:
        cost += np.asarray(it.table)[grid[:, index[it.a]], grid[:, index[it.b]]]
    return cost, size


@pytest.mark.parametrize("with_interactions", [False, True])
def test_matches_brute_force_on_small_random_spaces(with_interactions):
    rng = np.random.default_rng(1 if with_interactions else 2)
    checked = 0
    for _ in range(60):
        n_dims = int(rng.integers(1, 7))
        problem = random_problem(rng, n_dims, 4, int(rng.integers(1, 6)) if with_interactions else 0,
                                 distinct_sizes=bool(rng.integers(0, 2)))
        cost, size = brute_force(problem)
        solver = Solver(problem)
        for budget in np.linspace(problem.min_bytes, problem.max_bytes + 5, 6).astype(int):
            best = cost[size <= budget].min()
            sol = solver.solve(int(budget))
            assert sol.objective == pytest.approx(best, abs=1e-9)
            assert sol.size_bytes <= budget == sol.budget_bytes
            assert problem.objective(sol.point) == pytest.approx(sol.objective, abs=1e-12)
            assert problem.size(sol.point) == sol.size_bytes
            assert sol.choices == {p: problem.types[i][sol.point[p]] for i, p in enumerate(problem.params)}
            checked += 1
    assert checked == 360


def test_matches_brute_force_with_many_open_interactions():
    """Nine dimensions, up to 13 pairs (several dimensions open at once in the dynamic programme), strong terms."""
    rng = np.random.default_rng(7)
    for _ in range(8):
        problem = random_problem(rng, 9, 4, int(rng.integers(5, 14)), interaction_scale=float(rng.choice([0.1, 1.0])))
        cost, size = brute_force(problem)
        for budget in np.linspace(problem.min_bytes, problem.max_bytes, 5).astype(int):
            assert solve(problem, int(budget)).objective == pytest.approx(cost[size <= budget].min(), abs=1e-9)


def test_infeasible_budget_is_refused_with_the_range():
    problem = random_problem(np.random.default_rng(3), 4, 3, 0)
    with pytest.raises(SolverError, match=r"below the smallest point of the space.*spans \d+\.\.\d+ bytes") as exc:
        solve(problem, problem.min_bytes - 1)
    assert "\n" not in str(exc.value)
    assert solve(problem, problem.min_bytes).size_bytes == problem.min_bytes


def test_bpw_budget_is_floor_of_bytes():
    problem = random_problem(np.random.default_rng(4), 5, 4, 2)
    bpw = 8.0 * (problem.min_bytes + problem.max_bytes) / 2 / problem.n_elements
    by_bpw = solve(problem, max_bpw=bpw)
    assert by_bpw.budget_bytes == int(bpw * problem.n_elements / 8)
    assert by_bpw == solve(problem, by_bpw.budget_bytes)
    assert by_bpw.bpw == pytest.approx(8.0 * by_bpw.size_bytes / problem.n_elements)
    with pytest.raises(SolverError, match="exactly one budget"):
        solve(problem, 100, max_bpw=3.0)
    with pytest.raises(SolverError, match="exactly one budget"):
        solve(problem)
    with pytest.raises(SolverError, match="integer number of bytes"):
        solve(problem, 12.5)


def test_solve_many_is_the_pareto_curve():
    problem = random_problem(np.random.default_rng(5), 6, 4, 3)
    lo, hi = size_range(problem)
    assert (lo, hi) == (problem.min_bytes, problem.max_bytes)
    budgets = budget_grid(problem, 12)
    assert budgets[0] == lo and budgets[-1] == hi and list(budgets) == sorted(budgets)
    sols = solve_many(problem, list(reversed(budgets)))
    assert [s.budget_bytes for s in sols] == list(reversed(budgets))  # in the order given
    by_budget = sorted(sols, key=lambda s: s.budget_bytes)
    assert all(a.objective >= b.objective - 1e-12 for a, b in zip(by_budget, by_budget[1:]))  # more room, no worse
    cost, size = brute_force(problem)
    for s in sols:
        assert s.objective == pytest.approx(cost[size <= s.budget_bytes].min(), abs=1e-9)
    front = pareto_front(sols)
    assert all(a.size_bytes < b.size_bytes and a.objective > b.objective for a, b in zip(front, front[1:]))


def test_refined_curve_finds_the_whole_exact_front_and_gathers_where_it_bends():
    """Enough solves trace every point of the exact (brute-force) Pareto front; with few, the budgets gather where
    the objective falls fastest (the low end of a quantization curve), not evenly."""
    problem = random_problem(np.random.default_rng(11), 5, 4, 0)
    cost, size = brute_force(problem)
    order = np.lexsort((cost, size))
    exact, best = [], np.inf
    for i in order:
        if cost[i] < best - 1e-12:
            exact.append((int(size[i]), float(cost[i])))
            best = cost[i]
    lo, hi = size_range(problem)
    curve = refined_curve(Solver(problem), lo, hi, n_initial=4, n_total=400)
    traced = {(s.size_bytes, round(s.objective, 9)) for s in pareto_front(curve)}
    assert {(a, round(b, 9)) for a, b in exact} <= traced
    for s in curve:  # every solve is the optimum under its budget
        assert s.objective == pytest.approx(cost[size <= s.budget_bytes].min(), abs=1e-9)
    few = refined_curve(Solver(problem), lo, hi, n_initial=4, n_total=12)
    assert len(few) == 12 and len({s.budget_bytes for s in few}) == 12
    assert sorted(s.budget_bytes for s in few) != list(budget_grid(problem, 12))  # not an even grid


def test_malformed_problems_are_refused():
    ok = dict(params=("a", "b"), types=(("X", "Y"), ("X", "Y")), costs=((1.0, 0.5), (1.0, 0.2)), sizes=((1, 2), (1, 3)))
    Problem(**ok)
    with pytest.raises(SolverError, match="choices"):
        Problem(**{**ok, "costs": ((1.0,), (1.0, 0.2))})
    with pytest.raises(SolverError, match="non-negative integers"):
        Problem(**{**ok, "sizes": ((1, 2.5), (1, 3))})
    with pytest.raises(SolverError, match="non-finite"):
        Problem(**{**ok, "costs": ((1.0, float("nan")), (1.0, 0.2))})
    with pytest.raises(SolverError, match="two different parameters"):
        Problem(**ok, interactions=(Interaction("a", "a", ((0.0, 0.0), (0.0, 0.0))),))
    with pytest.raises(SolverError, match="2 x 2"):
        Problem(**ok, interactions=(Interaction("a", "b", ((0.0,), (0.0,))),))
    with pytest.raises(SolverError, match="exactly"):
        Problem(**ok).objective({"a": 0})


def test_repeated_pairs_add_up_and_either_orientation_works():
    base = dict(params=("a", "b"), types=(("X", "Y"), ("X", "Y", "Z")), costs=((0.0, 0.0), (0.0, 0.0, 0.0)),
                sizes=((0, 0), (0, 0, 0)))
    t1 = Interaction("a", "b", ((0.0, 1.0, 1.0), (1.0, 1.0, 1.0)))
    t2 = Interaction("b", "a", ((0.0, 0.0), (-5.0, 0.0), (0.0, 0.0)))  # b=Y, a=X: -5
    sol = solve(Problem(**base, interactions=(t1, t2)), 0)
    assert dict(sol.point) == {"a": 0, "b": 1} and sol.objective == pytest.approx(-4.0)
