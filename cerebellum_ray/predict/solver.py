"""The exact best point of a space under a size budget, for an objective additive over dimension choices plus a
sparse set of pairwise interaction terms (the surrogate's predicted KLD, or the prior's summed error).

Problem: choose x_d in {0..k_d-1} for every dimension d to minimise

    constant + sum_d cost_d[x_d] + sum_{(a,b)} q_ab[x_a, x_b]     subject to   fixed + sum_d size_d[x_d] <= budget

(a multiple-choice knapsack with pairwise terms). Sizes are exact integers (bytes), so "exact" means: the returned
point is optimal over the space's discrete choices, up to floating-point rounding of the objective (1e-12
relative); nothing is rounded or bucketed.

Algorithm: dynamic programming over dimensions on exact (size, cost) states with two prunings that never discard an
optimal completion:

* dominance: of two partial assignments with the same choices of the dimensions still "open" (chosen, but with an
  interaction partner not chosen yet), one at most as large and at most as costly is kept;
* bounds: a state is dropped when it cannot fit (its size plus the smallest completion exceeds the budget) or when
  its cost plus a lower bound of the best completion is not better than a feasible point already known. The bound
  is the LP relaxation of the remaining dimensions (their lower convex hulls, filled greedily by slope: the
  Sinha-Zoltners bound of the multiple-choice knapsack), evaluated exactly at each state's remaining budget; an
  interaction term counts in it as its minimum over the earlier dimension's choices.

The known feasible point comes from the LP's greedy rounding improved by single-dimension moves. Dimensions that
interact are ordered together so that few are open at once. On 90 dimensions of 3-5 choices the LP gap is small and
a solve takes well under a second (bench/bench_solver.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ..core.errors import CerebellumError

DEFAULT_MAX_STATES = 5_000_000  # per dimension; beyond it the solve is refused rather than made inexact
_REL_TOL = 1e-12


class SolverError(CerebellumError):
    """A budget no point fits, a malformed problem, or one too large to solve exactly; one line."""


@dataclass(frozen=True)
class Interaction:
    """A pairwise term: `table[i][j]` is added when parameter `a` takes choice i and `b` choice j."""

    a: str
    b: str
    table: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Problem:
    """What the solver minimises (see the module docstring). `types` name each choice (for the solution)."""

    params: tuple[str, ...]
    types: tuple[tuple[str, ...], ...]
    costs: tuple[tuple[float, ...], ...]
    sizes: tuple[tuple[int, ...], ...]
    fixed_bytes: int = 0
    n_elements: int = 0  # for bits per weight (0: unknown)
    constant: float = 0.0
    interactions: tuple[Interaction, ...] = ()

    def __post_init__(self):
        n = len(self.params)
        if n == 0:
            raise SolverError("a problem needs at least one dimension")
        if len(set(self.params)) != n:
            raise SolverError("a problem names a parameter twice")
        for name in ("types", "costs", "sizes"):
            if len(getattr(self, name)) != n:
                raise SolverError(f"problem: {name} has {len(getattr(self, name))} rows for {n} parameters")
        for p, ts, cs, ss in zip(self.params, self.types, self.costs, self.sizes):
            if not ts or len(cs) != len(ts) or len(ss) != len(ts):
                raise SolverError(f"problem: parameter {p} has {len(ts)} choices, {len(cs)} costs, {len(ss)} sizes")
            if not all(math.isfinite(c) for c in cs):
                raise SolverError(f"problem: parameter {p} has a non-finite cost {cs}")
            if not all(isinstance(s, (int, np.integer)) and s >= 0 for s in ss):
                raise SolverError(f"problem: parameter {p}: sizes must be non-negative integers (bytes), got {ss}")
        if not math.isfinite(self.constant):
            raise SolverError("problem: the constant is not finite")
        index = {p: i for i, p in enumerate(self.params)}
        for it in self.interactions:
            if it.a not in index or it.b not in index or it.a == it.b:
                raise SolverError(f"interaction ({it.a}, {it.b}) must join two different parameters of the problem")
            ka, kb = len(self.types[index[it.a]]), len(self.types[index[it.b]])
            if len(it.table) != ka or any(len(r) != kb for r in it.table):
                raise SolverError(f"interaction ({it.a}, {it.b}): table must be {ka} x {kb}")
            if not all(math.isfinite(v) for r in it.table for v in r):
                raise SolverError(f"interaction ({it.a}, {it.b}) has a non-finite term")

    @property
    def min_bytes(self) -> int:
        """The smallest point's size (fixed bytes included)."""
        return self.fixed_bytes + sum(min(s) for s in self.sizes)

    @property
    def max_bytes(self) -> int:
        return self.fixed_bytes + sum(max(s) for s in self.sizes)

    def bytes_for_bpw(self, bpw: float) -> int:
        from .choices import bytes_for_bpw

        return bytes_for_bpw(bpw, self.n_elements)

    def _choices(self, point: Mapping[str, int]) -> list[int]:
        if set(point) != set(self.params):
            missing = sorted(set(self.params) - set(point)) or sorted(set(point) - set(self.params))
            raise SolverError(f"point must give every parameter of the problem exactly (e.g. {missing[0]!r})")
        out = []
        for p, ts in zip(self.params, self.types):
            x = int(point[p])
            if not 0 <= x < len(ts):
                raise SolverError(f"point: {p}={x} is outside its {len(ts)} choices")
            out.append(x)
        return out

    def objective(self, point: Mapping[str, int]) -> float:
        """The objective of a full point."""
        x = self._choices(point)
        index = {p: i for i, p in enumerate(self.params)}
        value = self.constant + sum(c[xi] for c, xi in zip(self.costs, x))
        return value + sum(it.table[x[index[it.a]]][x[index[it.b]]] for it in self.interactions)

    def size(self, point: Mapping[str, int]) -> int:
        """The exact size of a full point (fixed bytes included)."""
        return self.fixed_bytes + sum(s[xi] for s, xi in zip(self.sizes, self._choices(point)))


@dataclass(frozen=True)
class Solution:
    """The optimal point under one budget."""

    point: Mapping[str, int]
    choices: Mapping[str, str]  # param -> chosen type
    objective: float
    size_bytes: int
    budget_bytes: int
    bpw: float | None  # of size_bytes (None when the problem does not know its element count)
    states: int = field(default=0, compare=False)  # DP states kept, summed over dimensions
    seconds: float = field(default=0.0, compare=False)


# ---- preparation (shared by every budget) ----------------------------------------------------------------------------


@dataclass
class _Prepared:
    order: list[int]  # dimension indices in DP order
    costs: list[np.ndarray]  # per position
    sizes: list[np.ndarray]  # per position (int64)
    folded: list[np.ndarray]  # per position: cost + each incoming interaction's minimum (bound only)
    incoming: list[list[tuple[int, np.ndarray]]]  # per position: (open column of the partner, table [xa, xb])
    open_after: list[list[int]]  # per position: dimension indices open after it (signature columns)
    min_size_suffix: np.ndarray  # [D + 1]: smallest total size of positions p..D-1
    bound_x: list[np.ndarray]  # per suffix start p: breakpoints (remaining budget) of the LP value function
    bound_y: list[np.ndarray]


def _order(problem: Problem) -> list[int]:
    """Interacting dimensions first, each connected component in breadth-first order (few open at once)."""
    index = {p: i for i, p in enumerate(problem.params)}
    adj: dict[int, set[int]] = {}
    for it in problem.interactions:
        a, b = index[it.a], index[it.b]
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    order: list[int] = []
    seen: set[int] = set()
    for start in sorted(adj):
        if start in seen:
            continue
        queue = [start]
        seen.add(start)
        while queue:
            v = queue.pop(0)
            order.append(v)
            for w in sorted(adj[v]):
                if w not in seen:
                    seen.add(w)
                    queue.append(w)
    return order + [i for i in range(len(problem.params)) if i not in seen]


def _hull(sizes: np.ndarray, costs: np.ndarray) -> list[int]:
    """The choices on the lower convex hull of (size, cost), from the smallest size (cheapest among ties) toward
    lower cost with increasing slopes: the LP relaxation's view of a dimension. Dominated choices are not on it."""
    chain: list[int] = []
    for i in np.lexsort((costs, sizes)):
        if not chain or (costs[i] < costs[chain[-1]] and sizes[i] > sizes[chain[-1]]):
            chain.append(int(i))
    hull: list[int] = []
    for i in chain:
        while len(hull) >= 2:
            i1, i2 = hull[-2], hull[-1]
            # drop hull[-1] when it lies on or above the chord from hull[-2] to i
            if (costs[i2] - costs[i1]) * (sizes[i] - sizes[i1]) >= (costs[i] - costs[i1]) * (sizes[i2] - sizes[i1]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def _prepare(problem: Problem) -> _Prepared:
    order = _order(problem)
    pos = {d: p for p, d in enumerate(order)}
    index = {name: i for i, name in enumerate(problem.params)}
    n = len(order)
    costs = [np.asarray(problem.costs[d], dtype=np.float64) for d in order]
    sizes = [np.asarray(problem.sizes[d], dtype=np.int64) for d in order]
    # merge tables per (earlier, later) pair, oriented [x_earlier, x_later]
    tables: dict[tuple[int, int], np.ndarray] = {}
    for it in problem.interactions:
        a, b = index[it.a], index[it.b]
        t = np.asarray(it.table, dtype=np.float64)
        if pos[a] > pos[b]:
            a, b, t = b, a, t.T
        tables[(a, b)] = tables.get((a, b), 0) + t
    last_partner = {d: max([pos[b] for (a, b) in tables if a == d], default=-1) for d in order}
    open_after: list[list[int]] = []
    current: list[int] = []
    for p, d in enumerate(order):
        current = [a for a in current if last_partner[a] > p]
        if last_partner[d] > p:
            current.append(d)
        open_after.append(list(current))
    incoming: list[list[tuple[int, np.ndarray]]] = []
    folded = []
    for p, d in enumerate(order):
        terms = []
        f = costs[p].copy()
        for (a, b), t in tables.items():
            if b == d:
                prev_open = open_after[p - 1]
                terms.append((prev_open.index(a), t))
                f += t.min(axis=0)
        incoming.append(terms)
        folded.append(f)
    min_size_suffix = np.zeros(n + 1, dtype=np.int64)
    for p in range(n - 1, -1, -1):
        min_size_suffix[p] = min_size_suffix[p + 1] + int(sizes[p].min())
    # LP value function of every suffix: g_p(b) = interp(b, bound_x[p], bound_y[p]) for b >= bound_x[p][0]
    starts, segs = [], []
    for p in range(n):
        h = _hull(sizes[p], folded[p])
        sz, fc = sizes[p].astype(np.float64), folded[p]
        starts.append((sz[h[0]], fc[h[0]]))
        segs.append([(sz[b] - sz[a], fc[b] - fc[a]) for a, b in zip(h, h[1:])])
    bound_x: list[np.ndarray] = [np.zeros(1)] * (n + 1)
    bound_y: list[np.ndarray] = [np.zeros(1)] * (n + 1)
    bound_x[n], bound_y[n] = np.array([0.0]), np.array([0.0])
    for p in range(n - 1, -1, -1):
        ds = np.array([s for q in range(p, n) for s, _ in segs[q]], dtype=np.float64)
        dc = np.array([c for q in range(p, n) for _, c in segs[q]], dtype=np.float64)
        x0 = sum(starts[q][0] for q in range(p, n))
        y0 = sum(starts[q][1] for q in range(p, n))
        if ds.size:
            o = np.argsort(dc / ds, kind="stable")
            bound_x[p] = np.concatenate([[x0], x0 + np.cumsum(ds[o])])
            bound_y[p] = np.concatenate([[y0], y0 + np.cumsum(dc[o])])
        else:
            bound_x[p], bound_y[p] = np.array([x0]), np.array([y0])
    return _Prepared(order, costs, sizes, folded, incoming, open_after, min_size_suffix, bound_x, bound_y)


# ---- a feasible point (the incumbent) --------------------------------------------------------------------------------


def _evaluate(problem: Problem, x: Sequence[int]) -> float:
    return problem.objective(dict(zip(problem.params, x)))


def _greedy(problem: Problem, prep: _Prepared, cap: int) -> list[int] | None:
    """LP greedy rounding (hull segments by slope while they fit), then best single-dimension moves."""
    n = len(prep.order)
    x = [0] * len(problem.params)
    used = 0
    segs = []
    for p, d in enumerate(prep.order):
        s, c = prep.sizes[p], prep.folded[p]
        hull = _hull(s, c)
        x[d] = hull[0]
        used += int(s[hull[0]])
        for j in range(1, len(hull)):
            a, b = hull[j - 1], hull[j]
            segs.append(((c[b] - c[a]) / (s[b] - s[a]), p, b, int(s[b] - s[a])))
    if used > cap:
        return None
    blocked = [False] * n
    for _, p, b, ds in sorted(segs, key=lambda t: t[0]):
        d = prep.order[p]
        if blocked[p]:
            continue
        if used + ds <= cap:
            x[d] = b
            used += ds
        else:
            blocked[p] = True
    return _improve(problem, x, cap)


def _improve(problem: Problem, x: list[int], cap: int) -> list[int]:
    """Take the best single-dimension change that fits and lowers the objective, until none does."""
    index = {p: i for i, p in enumerate(problem.params)}
    costs = [np.asarray(c, dtype=np.float64) for c in problem.costs]
    sizes = [np.asarray(s, dtype=np.int64) for s in problem.sizes]
    pairs: dict[int, list[tuple[int, np.ndarray]]] = {}  # d -> [(partner, table oriented [x_d, x_partner])]
    for it in problem.interactions:
        a, b = index[it.a], index[it.b]
        t = np.asarray(it.table, dtype=np.float64)
        pairs.setdefault(a, []).append((b, t))
        pairs.setdefault(b, []).append((a, t.T))
    x = list(x)
    used = int(sum(sizes[d][x[d]] for d in range(len(x))))
    scale = max(1.0, abs(_evaluate(problem, x)))
    for _ in range(10 * len(x)):
        best = (-_REL_TOL * scale, -1, -1)  # (delta, d, k): only strict improvements
        for d in range(len(x)):
            delta = costs[d] - costs[d][x[d]]
            for e, t in pairs.get(d, ()):
                delta = delta + t[:, x[e]] - t[x[d], x[e]]
            fits = used - sizes[d][x[d]] + sizes[d] <= cap
            if fits.any():
                k = int(np.argmin(np.where(fits, delta, np.inf)))
                if delta[k] < best[0]:
                    best = (float(delta[k]), d, k)
        if best[1] < 0:
            break
        _, d, k = best
        used += int(sizes[d][k] - sizes[d][x[d]])
        x[d] = k
    return x


# ---- the exact solve -------------------------------------------------------------------------------------------------


def _segmented_keep(sig: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Rows already sorted by (sig, size, cost): keep a row when its cost is below every earlier row's of its sig."""
    keep = np.zeros(len(cost), dtype=bool)
    if len(cost) == 0:
        return keep
    bounds = np.flatnonzero(np.diff(sig)) + 1
    for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(cost)]])):
        c = cost[lo:hi]
        prev_min = np.concatenate([[np.inf], np.minimum.accumulate(c)[:-1]])
        keep[lo:hi] = c < prev_min
    return keep


def _solve_cap(problem: Problem, prep: _Prepared, cap: int, incumbent: list[int] | None,
               max_states: int) -> tuple[list[int], float, int]:
    """The optimal choices (by dimension index) within `cap` bytes of dimension sizes; (x, objective, states)."""
    inc_x = incumbent
    inc_v = _evaluate(problem, inc_x) - problem.constant if inc_x is not None else math.inf
    tol = _REL_TOL * max(1.0, abs(inc_v) if math.isfinite(inc_v) else 1.0)
    size = np.zeros(1, dtype=np.int64)
    cost = np.zeros(1, dtype=np.float64)
    opened = np.zeros((1, 0), dtype=np.int64)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    total_states = 0
    n = len(prep.order)
    for p in range(n):
        s, c = prep.sizes[p], prep.costs[p]
        k = len(s)
        add = np.broadcast_to(c, (len(size), k)).copy()
        for col, table in prep.incoming[p]:
            add += table[opened[:, col]]
        new_size = (size[:, None] + s[None, :]).ravel()
        new_cost = (cost[:, None] + add).ravel()
        parent = np.repeat(np.arange(len(size)), k)
        choice = np.tile(np.arange(k), len(size))
        remaining = cap - new_size
        ok = remaining >= prep.min_size_suffix[p + 1]
        if p + 1 < n:
            bound = new_cost + np.interp(remaining.astype(np.float64), prep.bound_x[p + 1], prep.bound_y[p + 1])
        else:
            bound = new_cost
        ok &= bound < inc_v - tol
        new_size, new_cost, parent, choice = new_size[ok], new_cost[ok], parent[ok], choice[ok]
        # the open columns after this position
        prev_open = prep.open_after[p - 1] if p else []
        d = prep.order[p]
        cols = []
        for a in prep.open_after[p]:
            cols.append(choice if a == d else opened[parent, prev_open.index(a)])
        new_opened = np.stack(cols, axis=1) if cols else np.zeros((len(parent), 0), dtype=np.int64)
        radices = [len(prep.sizes[prep.order.index(a)]) for a in prep.open_after[p]]
        if not radices:
            sig = np.zeros(len(parent), dtype=np.int64)
        elif math.prod(radices) < 2**62:
            sig = new_opened @ np.cumprod([1] + radices[:-1])
        else:  # too many open dimensions for a mixed-radix integer
            sig = np.unique(new_opened, axis=0, return_inverse=True)[1].reshape(-1)
        o = np.lexsort((new_cost, new_size, sig))
        keep = o[_segmented_keep(sig[o], new_cost[o])]
        size, cost, opened = new_size[keep], new_cost[keep], new_opened[keep]
        back.append((parent[keep], choice[keep]))
        total_states += len(keep)
        if len(keep) > max_states:
            raise SolverError(f"the exact solve keeps {len(keep)} states at dimension {p + 1} of {n}, over the "
                              f"limit of {max_states}: the problem is too hard to solve exactly this way")
        if len(keep) == 0:
            break
    if len(cost) and n == len(back) and cost.min() < inc_v - tol:
        j = int(np.argmin(cost))
        x = [0] * len(problem.params)
        for p in range(n - 1, -1, -1):
            par, ch = back[p]
            x[prep.order[p]] = int(ch[j])
            j = int(par[j])
        return x, _evaluate(problem, x), total_states
    if inc_x is None:  # the bound pruned nothing it should not have: no point fits
        raise SolverError("no point fits the budget")
    return inc_x, _evaluate(problem, inc_x), total_states


def _budget(problem: Problem, max_bytes: int | None, max_bpw: float | None) -> int:
    if (max_bytes is None) == (max_bpw is None):
        raise SolverError("give exactly one budget: max_bytes or max_bpw")
    if max_bpw is not None:
        return problem.bytes_for_bpw(max_bpw)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise SolverError(f"max_bytes must be an integer number of bytes, got {max_bytes!r}")
    return int(max_bytes)


def _describe(problem: Problem, n_bytes: int) -> str:
    if problem.n_elements:
        return f"{n_bytes} bytes ({8.0 * n_bytes / problem.n_elements:.4f} bpw)"
    return f"{n_bytes} bytes"


class Solver:
    """Solves one problem for many budgets, sharing the preparation (ordering, hulls, bounds)."""

    def __init__(self, problem: Problem, max_states: int = DEFAULT_MAX_STATES):
        self.problem = problem
        self.max_states = int(max_states)
        self._prep = _prepare(problem)

    def solve(self, max_bytes: int | None = None, *, max_bpw: float | None = None,
              hint: Mapping[str, int] | None = None) -> Solution:
        """The optimal point whose size (fixed bytes included) is at most the budget. `hint`: a feasible point to
        start from (any point; an infeasible one is ignored)."""
        started = time.perf_counter()
        pr = self.problem
        budget = _budget(pr, max_bytes, max_bpw)
        if budget < pr.min_bytes:
            raise SolverError(f"budget {_describe(pr, budget)} is below the smallest point of the space, "
                              f"{_describe(pr, pr.min_bytes)}; the space spans {pr.min_bytes}..{pr.max_bytes} bytes")
        cap = budget - pr.fixed_bytes
        start = _greedy(pr, self._prep, cap)
        if hint is not None:
            h = pr._choices(hint)
            if sum(pr.sizes[d][h[d]] for d in range(len(h))) <= cap and (
                    start is None or _evaluate(pr, h) < _evaluate(pr, start)):
                start = _improve(pr, h, cap)
        x, value, states = _solve_cap(pr, self._prep, cap, start, self.max_states)
        point = dict(zip(pr.params, x))
        size = pr.fixed_bytes + sum(pr.sizes[d][x[d]] for d in range(len(x)))
        return Solution(
            point=MappingProxyType(point),
            choices=MappingProxyType({p: pr.types[i][x[i]] for i, p in enumerate(pr.params)}),
            objective=float(value), size_bytes=int(size), budget_bytes=budget,
            bpw=8.0 * size / pr.n_elements if pr.n_elements else None, states=states,
            seconds=time.perf_counter() - started,
        )

    def solve_many(self, budgets: Iterable[int]) -> tuple[Solution, ...]:
        """One solution per budget (bytes), in the order given; each solve starts from the best point found for a
        smaller budget (feasible under a larger one)."""
        budgets = [int(b) for b in budgets]
        out: dict[int, Solution] = {}
        prev: Mapping[str, int] | None = None
        for b in sorted(set(budgets)):
            out[b] = self.solve(b, hint=prev)
            prev = out[b].point
        return tuple(out[b] for b in budgets)


def solve(problem: Problem, max_bytes: int | None = None, *, max_bpw: float | None = None,
          max_states: int = DEFAULT_MAX_STATES) -> Solution:
    """The optimal point under a byte budget (`max_bytes`, fixed bytes included) or a bits-per-weight budget
    (`max_bpw`: bytes = floor(bpw * n_elements / 8)); SolverError when no point fits."""
    return Solver(problem, max_states).solve(max_bytes, max_bpw=max_bpw)


def solve_many(problem: Problem, budgets: Iterable[int], max_states: int = DEFAULT_MAX_STATES) -> tuple[Solution, ...]:
    """The optimal point for each byte budget (the problem's Pareto curve when the budgets spread over
    `size_range`); SolverError when any budget fits no point."""
    return Solver(problem, max_states).solve_many(budgets)


def size_range(problem: Problem) -> tuple[int, int]:
    """(smallest, largest) size of a point of the problem, fixed bytes included."""
    return problem.min_bytes, problem.max_bytes


def budget_grid(problem: Problem, n: int) -> tuple[int, ...]:
    """`n` byte budgets evenly spread from the smallest to the largest point (both included)."""
    lo, hi = size_range(problem)
    return budget_grid_between(lo, hi, n)


def budget_grid_between(lo: int, hi: int, n: int) -> tuple[int, ...]:
    """`n` byte budgets evenly spread from `lo` to `hi` (both included)."""
    if n < 1:
        raise SolverError(f"a budget grid needs at least one budget, not {n}")
    if n == 1 or hi <= lo:
        return (int(hi),)
    return tuple(sorted({int(round(lo + (hi - lo) * i / (n - 1))) for i in range(n)}))


def refined_curve(solver: Solver, lo: int, hi: int, n_initial: int = 16, n_total: int = 96) -> tuple[Solution, ...]:
    """The problem's Pareto curve between budgets `lo` and `hi` (bytes), refined where it bends: `n_initial` evenly
    spread budgets, then the budget halfway between the two neighbouring solutions farthest apart (in size and
    objective, each scaled by its range) is solved, until `n_total` solves or no gap can be split. Where a few cheap
    choices buy most of the objective (the low end of a quantization curve), the budgets gather."""
    budgets = list(budget_grid_between(lo, hi, n_initial))
    solved = dict(zip(budgets, solver.solve_many(budgets)))
    done: set[tuple[int, int]] = set()
    while len(solved) < n_total:
        keys = sorted(solved)
        sizes = np.array([solved[k].size_bytes for k in keys], dtype=float)
        objs = np.array([solved[k].objective for k in keys], dtype=float)
        span_s = max(sizes.max() - sizes.min(), 1.0)
        span_o = max(objs.max() - objs.min(), 1e-300)
        gaps = np.hypot(np.diff(sizes) / span_s, np.diff(objs) / span_o)
        for j in np.argsort(-gaps):
            a, b = keys[j], keys[j + 1]
            if gaps[j] > 0 and b - a > 1 and (a, b) not in done:
                break
        else:
            break
        done.add((a, b))
        mid = (a + b) // 2
        solved[mid] = solver.solve(mid, hint=solved[a].point)
    return tuple(solved[k] for k in sorted(solved))


def pareto_front(solutions: Sequence[Solution]) -> tuple[Solution, ...]:
    """The solutions that no other solution beats in both size and objective, by size (duplicates once)."""
    front: list[Solution] = []
    for s in sorted(solutions, key=lambda s: (s.size_bytes, s.objective)):
        if front and s.objective >= front[-1].objective:
            continue
        front.append(s)
    return tuple(front)


__all__ = ["DEFAULT_MAX_STATES", "Interaction", "Problem", "Solution", "Solver", "SolverError", "budget_grid",
           "budget_grid_between", "pareto_front", "refined_curve", "size_range", "solve", "solve_many"]
