"""The guided search: every measurement teaches the next one.

    prior (no model run: prior.py) ──► sensitivities: each dimension family moved as a whole from the base map
                                        (the ablation's group moves), measured as one batch of trials
                                              │
          ┌───────────────────────────────────┘
          ▼
    rows of the study (and of --warm-start studies) ──► surrogate (surrogate.py: KLD around the prior, interactions
          ▲                                               the rows support, a standard error for every prediction)
          │                                                  │
          │       the surrogate's Pareto curve over the feasible sizes (solver.refined_curve: exact solves, the
          │       budgets gathered where the curve bends)           │
          └──── measured as full trials ◄── its maps not measured yet, by the hypervolume their optimistic
                                              prediction adds to the measured front (a batch per round)
    when every map of the curve is measured it is traced finer; when even the finest proposes nothing new, the rest
    of the trial budget goes to NSGA-II (search.optuna_search), seeded with every measured point.

Every row stores the phase that proposed it and the surrogate's prediction made before it ran (predicted_kld,
predicted_kld_se: none for sensitivity rows, which come before any fit). The store is the state: running the same
study again (or with --resume) reads its rows and continues where it stopped. `fit_study` is shared with `solve`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import store
from ..core.compat import former_names
from ..core.errors import CerebellumError
from ..formats.catalog import ModelCatalog

if TYPE_CHECKING:
    from .run import SearchResult, StudyRun

STRATEGY = "guided"
SENSITIVITY_SHARE = 0.3  # at most this share of the trial budget goes to sensitivity moves (at least one per family)
MIN_BATCH = 4  # maps measured per round: at least this many (more when more trials run at once)
CURVE_SOLVES = 48  # exact solves tracing the predicted curve each round; doubled when it proposes nothing new ...
MAX_CURVE_SOLVES = 384  # ... up to this many, before NSGA-II takes the rest of the budget


class GuidedError(CerebellumError):
    """A guided search or solve that cannot run as asked; the message names the study, space or objective."""


@dataclass(frozen=True)
class Proposal:
    """A point to measure, why, and what the surrogate expected of it."""

    point: Mapping[str, int]
    phase: str  # sensitivity | solved | nsga2
    label: str
    predicted_kld: float | None = None
    predicted_kld_se: float | None = None

    def columns(self) -> dict[str, Any]:
        return {"phase": self.phase, "predicted_kld": self.predicted_kld, "predicted_kld_se": self.predicted_kld_se}


@dataclass(frozen=True)
class StudyModel:
    """What the study's rows say: the prior, the fitted surrogate (None with too few rows) and the rows used."""

    prior: Any  # prior.Prior
    surrogate: Any  # surrogate.Surrogate | None
    n_rows: int
    n_skipped: int
    observed: tuple[tuple[int, float], ...] = ()  # (tensor bytes, KLD) of every row fitted on

    @property
    def table(self):
        return self.prior.table


def require_kld_objective(space) -> None:
    """Refuse a space the guided search (and `solve`) cannot model: KLD must be among its objectives."""
    if "kld" not in space.objectives:
        raise GuidedError(f"space {space.name}: the guided search models KLD against size; its objectives "
                          f"{list(space.objectives)} need kld (e.g. objectives: [kld, size])")


def study_prior(space, catalog: ModelCatalog, source: str, imatrix_path: str | None, cache_dir: str | None):
    """The space's prior on the source, cached under the tensor cache's directory (prior/)."""
    from ..predict.prior import space_prior
    from ..quant.tensor_cache import TensorCache

    cache = TensorCache(cache_dir)
    try:
        return space_prior(space, catalog, source, imatrix=imatrix_path, cache=cache,
                           has_imatrix=imatrix_path is not None)
    finally:
        cache.close()


def fit_study(prior, rows: Iterable[Mapping[str, Any]], eval_hash: str | None, metric: str = "kld") -> StudyModel:
    """The surrogate of `metric` (kld, or kld_code) fitted on every complete row (of `eval_hash`) whose map is a
    choice of the prior's table."""
    from ..predict.surrogate import MIN_ROWS, fit_surrogate, observations_from_rows

    obs, skipped = observations_from_rows(prior.table, rows, eval_hash=eval_hash, metric=metric)
    surrogate = fit_surrogate(prior.table, obs, prior) if len(obs) >= MIN_ROWS else None
    observed = tuple((prior.table.size_of_levels(o.levels), o.value) for o in obs)
    return StudyModel(prior, surrogate, len(obs), skipped, observed)


def sensitivity_proposals(space, catalog: ModelCatalog, has_imatrix: bool, limit: int) -> list[Proposal]:
    """The base map, then one-at-a-time moves of whole dimension families from it (the ablation's group moves;
    router families one layer at a time), cheapest type of every family first, then the next, ...: `limit` in all."""
    from .ablation import group_moves, single_moves
    from ..formats.precision_map import resolve

    base_map = resolve(catalog, space.base, has_imatrix=has_imatrix)
    moves = group_moves(space, base_map)
    routers = dict.fromkeys(d.dimension for d in space.dimensions
                            if d.dimension.startswith("router") and sum(e.dimension == d.dimension
                                                                        for e in space.dimensions) > 1)
    for name in routers:  # the first layer's router moved alone: what a router costs, not what they cost stacked
        first = next(d for d in space.dimensions if d.dimension == name)
        moves += [m for m in single_moves(space, base_map, name, first.types, "layer") if m[0].params == (first.param,)]
    by_family: dict[str, list] = {}
    for move, point in moves:
        by_family.setdefault(move.dimension, []).append((move, point))
    for name, family in by_family.items():  # cheapest first: the largest, clearest effects
        dim = next(d for d in space.dimensions if d.dimension == name)
        family.sort(key=lambda mp: sum(catalog[t].bytes_as(mp[0].type) for t in dim.tensors))
    ordered = [family[i] for i in range(max(map(len, by_family.values()), default=0))
               for family in by_family.values() if i < len(family)]
    base = Proposal({}, "sensitivity", "base")  # the map every move is measured against
    return [base] + [Proposal(dict(point), "sensitivity", move.label) for move, point in ordered[:limit - 1]]


def feasible_range(problem, space, catalog: ModelCatalog) -> tuple[int, int]:
    """Tensor bytes of the space's smallest map and of its largest feasible one (max_size / max_bpw / vram)."""
    from ..predict.choices import bytes_for_bpw

    hi = problem.max_bytes
    if space.max_size is not None:
        hi = min(hi, int(space.max_size))
    if space.max_bpw is not None:
        hi = min(hi, bytes_for_bpw(space.max_bpw, catalog.n_elements))
    lo = problem.min_bytes
    if hi < lo:
        raise GuidedError(f"space {space.name}: no map fits its constraints (the smallest is {lo} tensor bytes, the "
                          f"limit {hi})")
    return lo, hi


def solved_proposals(model: StudyModel, space, catalog: ModelCatalog, has_imatrix: bool, measured: set[str],
                     n_solves: int, limit: int) -> list[Proposal]:
    """At most `limit` maps to measure next: the surrogate's Pareto curve over the feasible sizes (`n_solves` exact
    solves, refined where the curve bends: solver.refined_curve), its maps not measured yet (by map digest), taken
    one at a time by the hypervolume their optimistic prediction (mean - one standard error) adds to the measured
    (size, KLD) front and the ones already taken; when none adds any, the most uncertain."""
    from ..predict.solver import Solver, refined_curve

    if model.surrogate is None:
        return []
    problem = model.surrogate.problem()
    lo, hi = feasible_range(problem, space, catalog)
    seen: dict[str, Mapping[str, int]] = {}
    for sol in refined_curve(Solver(problem), lo, hi, n_initial=min(16, n_solves), n_total=n_solves):
        digest = space.map_for(catalog, sol.point, has_imatrix=has_imatrix).digest
        if digest not in measured and digest not in seen:
            seen[digest] = dict(sol.point)
    points = list(seen.values())
    if not points:
        return []
    mean, se = model.surrogate.predict(points)
    sizes = np.array([model.table.size_of(p) for p in points], dtype=float)
    order = hypervolume_batch(model.observed, sizes, np.maximum(mean - se, 0.0), limit)
    rest = sorted(set(range(len(points))) - set(order), key=lambda i: -se[i] / max(mean[i], 1e-12))
    return [Proposal(points[i], "solved", f"solved {model.table.bpw_of(model.table.size_of(points[i])):.3f} bpw",
                     float(mean[i]), float(se[i])) for i in (order + rest)[:limit]]


def hypervolume_batch(observed: Sequence[tuple[int, float]], sizes: np.ndarray, values: np.ndarray,
                      limit: int) -> list[int]:
    """Indices of up to `limit` candidates (sizes, predicted values), each the one adding most hypervolume to the
    observed points and those taken before it (reference: 5 % beyond the largest size and value seen); stops when
    none adds any."""
    from ..predict.fronts import hypervolume

    def hv(points: np.ndarray) -> float:
        return hypervolume(points, ("min", "min"), ref)

    obs = np.array(observed, dtype=float).reshape(-1, 2)
    every = np.vstack([obs, np.c_[sizes, values]])
    span = np.ptp(every, axis=0)
    ref = (float(every[:, 0].max() + 0.05 * span[0] + 1.0), float(every[:, 1].max() + 0.05 * span[1] + 1e-12))
    taken: list[int] = []
    current = obs
    base = hv(current)
    for _ in range(limit):
        gains = [(hv(np.vstack([current, [[sizes[i], values[i]]]])) - base, i)
                 for i in range(len(sizes)) if i not in taken]
        if not gains:
            break
        gain, best = max(gains)
        if gain <= 0:
            break
        taken.append(best)
        current = np.vstack([current, [[sizes[best], values[best]]]])
        base += gain
    return taken


def run_guided(run: StudyRun) -> SearchResult:
    """Run (or continue) a guided study on Ray Tune; returns its SearchResult."""
    space, opts, catalog, has_imatrix = run.space, run.opts, run.catalog, run.has_imatrix
    require_kld_objective(space)
    n_trials = run.n_trials
    prior = study_prior(space, catalog, run.ctx.source, run.ctx.imatrix_path, opts.cache_dir)
    say = (lambda m: print(f"guided: {m}", file=sys.stderr)) if opts.verbose else (lambda m: None)
    say(f"prior of {prior.table.n_params} parameters ({prior.computed} errors computed, {prior.from_cache} cached)")

    def state():
        own = [r for r in store.rows(run.store_dir, [run.study]) if r["strategy"] == STRATEGY]
        measured = {r["map_hash"] for r in own if r["status"] == "complete" and r["eval_hash"] == run.ctx.eval_hash}
        return own, measured

    own, measured = state()
    n_families = len({d.dimension for d in space.dimensions})
    limit = min(n_trials, max(n_families + 1, int(SENSITIVITY_SHARE * n_trials)))
    todo = [p for p in sensitivity_proposals(space, catalog, has_imatrix, limit)
            if run.map_of(p.point).digest not in measured]
    todo = todo[: max(0, limit - sum(r.get("phase") == "sensitivity" for r in own))]
    if todo:
        say(f"sensitivities: {len(todo)} family moves from the base map")
        _measure(run, todo)
    batch_size = max(MIN_BATCH, run.concurrency)
    n_solves = CURVE_SOLVES
    while True:
        own, measured = state()
        remaining = n_trials - len(own)
        if remaining <= 0:
            break
        model = fit_study(prior, _fit_rows(run), run.ctx.eval_hash)
        batch = solved_proposals(model, space, catalog, has_imatrix, measured, n_solves, min(remaining, batch_size))
        if not batch:
            if model.surrogate is None or n_solves >= MAX_CURVE_SOLVES:
                break
            n_solves = min(MAX_CURVE_SOLVES, 2 * n_solves)  # a finer curve: maps between those measured
            say(f"every map of the predicted curve is measured: {n_solves} solves")
            continue
        q = model.surrogate.quality
        say(f"fit on {model.n_rows} rows (leave-one-out Spearman {q.loo_spearman:.2f}, interactions "
            f"{len(model.surrogate.interactions)}): {len(batch)} solved maps to measure")
        _measure(run, batch)
    own, _ = state()
    remaining = n_trials - len(own)
    if remaining > 0:
        say(f"the solver proposes nothing new: {remaining} trials of NSGA-II seeded with the measured points")
        _nsga2_tail(run, remaining, prior)
    return run.result(n_trials)


def _fit_rows(run: StudyRun) -> list[dict[str, Any]]:
    """The rows a fit learns from: the study's and its --warm-start studies'."""
    return store.rows(run.store_dir, [run.study, *run.opts.warm_start])


def _measure(run: StudyRun, proposals: Sequence[Proposal]) -> None:
    from .run import point_key

    run.run_points([p.point for p in proposals], STRATEGY, proposals[0].phase,
                   labels={point_key(p.point): p.label for p in proposals},
                   extra={point_key(p.point): p.columns() for p in proposals})


def _nsga2_tail(run: StudyRun, remaining: int, prior) -> None:
    """NSGA-II for the rest of the budget, seeded with every measured point of the study (and warm-start studies);
    each of its trials stores the surrogate's prediction too (refitted as rows arrive would cost a fit per trial:
    the fit made when the tail starts is used)."""
    from .search import optuna_search

    predictor = Predictor(fit_study(prior, _fit_rows(run), run.ctx.eval_hash).surrogate, "nsga2")
    # resume=True: a tail already started (this study run before) is continued, never refused
    tail = run.derive(trials=remaining, warm_start=(run.study, *run.opts.warm_start), resume=True)
    optuna_search(tail, strategy=STRATEGY, predict=predictor)


@dataclass(frozen=True)
class Predictor:
    """point -> the columns a row stores about its prediction (picklable: Tune checkpoints the searcher)."""

    surrogate: Any  # surrogate.Surrogate | None
    phase: str

    def __call__(self, point: Mapping[str, int]) -> dict[str, Any]:
        if self.surrogate is None:
            return {"phase": self.phase}
        mean, se = self.surrogate.predict([point])
        return {"phase": self.phase, "predicted_kld": float(mean[0]), "predicted_kld_se": float(se[0])}


def study_departures(store_dir: str, study: str, min_z: float = 3.0) -> list[dict[str, Any]]:
    """Pairs of choices whose measured joint effect departs from the sum of their effects by more than `min_z`
    standard errors, in the surrogate fitted on the study's rows (the interactions the rows support)."""
    from .run import StudyRecord

    record = StudyRecord.load(store_dir, study)
    catalog, space = record.open_space()
    require_kld_objective(space)
    prior = study_prior(space, catalog, record.source, record.imatrix, record.cache_dir)
    model = fit_study(prior, store.rows(store_dir, [study]), record.eval_hash)
    if model.surrogate is None:
        return []
    return [{"a": d.a, "b": d.b, "type_a": d.type_a, "type_b": d.type_b, "departure": d.departure, "se": d.se,
             "z": d.z} for d in model.surrogate.departures(min_z)]


__all__ = ["GuidedError", "Predictor", "Proposal", "StudyModel", "feasible_range", "fit_study", "hypervolume_batch",
           "require_kld_objective", "run_guided", "sensitivity_proposals", "solved_proposals", "study_departures",
           "study_prior"]

__getattr__ = former_names(__name__, {
    "check_objectives": "cerebellum_ray.study.guided:require_kld_objective",
    "load_catalog": "cerebellum_ray.formats.catalog:load_catalog", "Path": "pathlib:Path",
    "replace": "dataclasses:replace",
    "_run": "cerebellum_ray.study.guided:_measure", "_study_rows": "cerebellum_ray.study.guided:_fit_rows",
})
