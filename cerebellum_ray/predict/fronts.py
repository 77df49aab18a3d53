"""Pareto fronts over trial rows: which trials are non-dominated, how much they dominate, and pictures of both.

Computing is separate from drawing (as in optuna, whose `_get_pareto_front_info` feeds both plot back ends):
`compute_fronts` turns rows into frozen `Front` records; `plots.py` (matplotlib PNG, plotly HTML) only draws them.

Rules, in one place:

* Dominance. With every objective turned into "smaller is better", point p dominates q when p <= q in every
  objective and p < q in at least one. A point is on the front when no point dominates it. Exact duplicates do not
  dominate each other, so **every copy of a non-dominated point is kept** (two trials that measured the same are
  both reported, in input order).
* Rows. Only rows whose `status` is "complete" and whose chosen objectives are all present and not NaN take part;
  the others are counted in `Front.n_skipped`.
* Reference point (hypervolume). Unless one is given, it is the worst value of each objective over **all compared
  points** (every group passed to one `compute_fronts` call) moved a further 10 % of that objective's range towards
  worse; when all values of an objective are equal the margin is 10 % of |value| (0.1 when the value is 0). All
  fronts of one call share it, and `compare_fronts` refuses fronts whose reference points differ. Points that are
  not strictly better than the reference point in every objective add no volume.
* Hypervolume is reported in the objectives' stored units (`Front.hypervolume`) and as the fraction of the box
  between the ideal point (best value of each objective over all compared points) and the reference point
  (`Front.hypervolume_fraction`, 0..1, what the plots show). Both order fronts the same way.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import metrics
from ..core.compat import former_names
from ..core.errors import CerebellumError
from ..core.metrics import UNIT_SCALE

__all__ = [
    "OBJECTIVES",
    "UNIT_SCALE",
    "Front",
    "check_front_objectives",
    "compare_fronts",
    "compute_fronts",
    "default_reference_point",
    "hypervolume",
    "knee_point",
    "order_front",
    "pareto_mask",
    "prediction_check",
    "rows_as_dicts",
    "rows_for_fronts",
]

# Every metric a front can be drawn on is one of the registry's (core.metrics); this is its older tuple view,
# name -> (row column, direction, axis label, display unit), for callers that index it.
OBJECTIVES: dict[str, tuple[str, str, str, str]] = {m.name: (m.column, m.direction, m.label, m.unit)
                                                    for m in metrics.METRICS}

DEFAULT_MARGIN = 0.1  # the reference point lies this fraction of each objective's range beyond the worst value
GROUP_BY = ("study", "strategy")
_BLOCK = 512  # rows per block in the O(n^2) dominance test: bounds memory to _BLOCK * n * d booleans


# ---------------------------------------------------------------------------------------------------------------
# Pure computation on arrays
# ---------------------------------------------------------------------------------------------------------------

def _as_minimization(points: Any, directions: Sequence[str]) -> np.ndarray:
    """(n, d) float array with max-objectives negated, so that smaller is better everywhere."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1 and pts.size == 0:
        pts = pts.reshape(0, len(directions))
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n points x d objectives), but got shape {pts.shape}.")
    if pts.shape[1] != len(directions):
        raise ValueError(
            f"points have {pts.shape[1]} objectives but {len(directions)} directions were given ({directions=})."
        )
    bad = [d for d in directions if d not in metrics.DIRECTIONS]
    if bad:
        raise ValueError(f"every direction must be one of {metrics.DIRECTIONS}, but got {bad}.")
    if np.isnan(pts).any():
        rows = sorted(set(np.nonzero(np.isnan(pts))[0].tolist()))[:5]
        raise ValueError(f"points must not contain NaN (rows {rows}...): drop incomplete trials first.")
    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    return pts * sign


def _pareto_mask_2d(p: np.ndarray) -> np.ndarray:
    """Sort-based O(n log n) front for two minimized objectives (duplicates of a front point all kept)."""
    n = p.shape[0]
    order = np.lexsort((p[:, 1], p[:, 0]))  # by x, then y
    x, y = p[order, 0], p[order, 1]
    # Group equal x; within a group only the smallest y (the group's first) can be on the front, and it must be
    # strictly smaller than every y seen at a strictly smaller x.
    new_group = np.r_[True, x[1:] != x[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    cummin = np.minimum.accumulate(y)
    before = cummin[np.maximum(group_start - 1, 0)]  # min y over all points with x strictly smaller
    keep = (y == y[group_start]) & ((group_start == 0) | (y < before))  # (no inf sentinel: y may be inf)
    mask = np.zeros(n, dtype=bool)
    mask[order] = keep
    return mask


def _pareto_mask_nd(p: np.ndarray) -> np.ndarray:
    """O(n^2 d) vectorized dominance test in blocks (any number of minimized objectives)."""
    n = p.shape[0]
    dominated = np.zeros(n, dtype=bool)
    for start in range(0, n, _BLOCK):
        q = p[start:start + _BLOCK]  # candidates
        le = (p[None, :, :] <= q[:, None, :]).all(axis=2)  # le[i, j]: p[j] <= q[i] everywhere
        lt = (p[None, :, :] < q[:, None, :]).any(axis=2)
        dominated[start:start + _BLOCK] = (le & lt).any(axis=1)
    return ~dominated


def pareto_mask(points: Any, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `points` (n x d), one direction ("min"/"max") per column.

    p dominates q when p is no worse in every objective and strictly better in one. Exact duplicates do not
    dominate each other: all copies of a non-dominated point are True. Infinite values are allowed (an infinite
    loss is simply worst), NaN is refused. Two objectives use an O(n log n) sort; more use an O(n^2) numpy test.
    """
    p = _as_minimization(points, directions)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if p.shape[1] == 1:
        return p[:, 0] == p[:, 0].min()
    if p.shape[1] == 2:
        return _pareto_mask_2d(p)
    return _pareto_mask_nd(p)


def default_reference_point(points: Any, directions: Sequence[str], margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The module's reference-point rule: each objective's worst value plus `margin` of its range, towards worse.

    When an objective has a single value the margin is `margin * |value|` (or `margin` when the value is 0).
    Returned in the caller's units and signs (not negated).
    """
    p = _as_minimization(points, directions)
    if p.shape[0] == 0:
        raise ValueError("the default reference point needs at least one point.")
    if not np.isfinite(p).all():
        raise ValueError("the default reference point needs finite points: give reference_point explicitly.")
    worst, best = p.max(axis=0), p.min(axis=0)
    span = worst - best
    fallback = np.where(worst != 0, np.abs(worst), 1.0)
    ref = worst + margin * np.where(span > 0, span, fallback)
    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    return ref * sign


def _hv_3d(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact 3-D hypervolume by a sweep along z that keeps the 2-D staircase of the points seen so far.

    Each point, taken in z order, is inserted into the staircase (x ascending, y strictly descending), the points it
    dominates leave it, and the staircase's area grows by the new point's exclusive area; the volume adds the area
    times the distance to the next z. O(n log n) searches plus list edits: fast for fronts of thousands of points.
    """
    xs: list[float] = []
    ys: list[float] = []
    area = volume = 0.0
    p = p[np.argsort(p[:, 2], kind="stable")]
    z_next = np.r_[p[1:, 2], ref[2]]
    for (px, py, _), dz in zip(p.tolist(), (z_next - p[:, 2]).tolist()):
        j = bisect.bisect_right(xs, px) - 1
        if not (j >= 0 and ys[j] <= py):  # not weakly dominated by the staircase
            i = bisect.bisect_left(xs, px)
            h = ys[i - 1] if i > 0 else ref[1]  # staircase height just left of px (> py, or it would dominate)
            cur, k = px, i
            while k < len(xs) and ys[k] >= py:  # points the new one dominates: its exclusive area runs over them
                area += (xs[k] - cur) * (h - py)
                cur, h = xs[k], ys[k]
                k += 1
            area += ((xs[k] if k < len(xs) else ref[0]) - cur) * (h - py)
            xs[i:k], ys[i:k] = [px], [py]
        volume += area * dz
    return volume


def _hv_min(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimized points that are all strictly better than `ref` (slicing down to 3-D)."""
    if p.shape[0] == 0:
        return 0.0
    d = p.shape[1]
    if d == 1:
        return float(ref[0] - p[:, 0].min())
    if d == 2:
        front = np.unique(p[_pareto_mask_2d(p)], axis=0)  # x ascending, so y strictly descending
        widths = np.r_[front[1:, 0], ref[0]] - front[:, 0]
        return float(widths @ (ref[1] - front[:, 1]))
    if d == 3:
        return _hv_3d(p, ref)
    # Slice along the last objective: between consecutive distinct values z_k < z_{k+1} the cross-section is the
    # (d-1)-volume dominated by the points with z <= z_k.
    p = p[pareto_mask(p, ["min"] * d)]
    p = p[np.argsort(p[:, -1], kind="stable")]
    z = p[:, -1]
    cuts = np.r_[np.nonzero(z[1:] != z[:-1])[0] + 1, len(z)]  # end index of each distinct-z slab
    bounds = np.r_[z[cuts - 1], ref[-1]]
    total = 0.0
    for k, end in enumerate(cuts):
        total += _hv_min(p[:end, :-1], ref[:-1]) * (bounds[k + 1] - bounds[k])
    return total


def hypervolume(points: Any, directions: Sequence[str], reference_point: Any = None) -> float:
    """Exact hypervolume dominated by `points` and bounded by `reference_point` (default: `default_reference_point`).

    Max-objectives are negated first; points not strictly better than the reference point in every objective add
    nothing. Two objectives: an O(n log n) sweep; three: a sweep along the third keeping the 2-D staircase (fronts
    of thousands of points in well under a second); four or more: slicing along the last objective down to three
    (HSO), exact and fine for fronts of a few hundred points.
    """
    p = _as_minimization(points, directions)
    if reference_point is None:
        if p.shape[0] == 0:
            return 0.0
        reference_point = default_reference_point(points, directions)
    ref = np.asarray(reference_point, dtype=float).reshape(-1)
    if ref.shape[0] != len(directions) or not np.isfinite(ref).all():
        raise ValueError(
            f"reference_point must hold {len(directions)} finite values, but got {reference_point!r}."
        )
    ref = ref * np.array([1.0 if d == "min" else -1.0 for d in directions])
    p = p[(p < ref).all(axis=1)]
    return float(_hv_min(p, ref))


# ---------------------------------------------------------------------------------------------------------------
# Rows -> fronts
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Front:
    """The non-dominated complete trials of one group (a study or a strategy) under the chosen objectives.

    `points` are the front's rows (all columns, trial ids and labels included), ordered by the first objective from
    best to worst (ties: by the next objectives, then input order). `dominated` are the group's other usable rows.
    `reference_point` and `ideal_point` are in stored units and shared by all fronts of one `compute_fronts` call.
    """

    study: str                           # the group's value of `group_by` (a study name or a strategy)
    objectives: tuple[str, ...]          # registered metric names (core.metrics)
    points: tuple[dict, ...]             # front rows
    hypervolume: float                   # in stored units (e.g. bytes x nats), w.r.t. reference_point
    reference_point: tuple[float, ...]
    ideal_point: tuple[float, ...]       # best value of each objective over all compared rows
    dominated: tuple[dict, ...] = ()     # usable rows of the group that are not on the front
    n_skipped: int = 0                   # rows of the group not complete, or missing an objective
    group_by: str = "study"

    @property
    def directions(self) -> tuple[str, ...]:
        return metrics.directions(self.objectives)

    @property
    def columns(self) -> tuple[str, ...]:
        return metrics.columns(self.objectives)

    def values(self, which: str = "points") -> np.ndarray:
        """(n, d) array of the objectives of `points` (or of `dominated`), stored units and signs."""
        rows = getattr(self, which)
        return np.array([[float(r[c]) for c in self.columns] for r in rows], dtype=float).reshape(-1, len(self.columns))

    @property
    def hypervolume_fraction(self) -> float:
        """Hypervolume as a fraction of the box between `ideal_point` and `reference_point` (0..1)."""
        box = float(np.prod(np.abs(np.subtract(self.reference_point, self.ideal_point))))
        return self.hypervolume / box if box > 0 else 0.0


def rows_as_dicts(rows: Any) -> list[dict]:
    if hasattr(rows, "to_pylist"):  # pyarrow Table / RecordBatch
        return rows.to_pylist()
    return [dict(r) for r in rows]


def check_front_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """The objectives of a front: at least two distinct registered metrics (ValueError otherwise)."""
    objectives = tuple(objectives)
    unknown = [o for o in objectives if o not in metrics.BY_NAME]
    if unknown:
        raise ValueError(f"unknown objectives {unknown}: choose from {sorted(metrics.NAMES)}.")
    if len(objectives) < 2 or len(set(objectives)) != len(objectives):
        raise ValueError(f"a front needs at least two distinct objectives, but got {list(objectives)}.")
    return objectives


def _usable(row: Mapping, columns: Sequence[str]) -> bool:
    if row.get("status") != "complete":
        return False
    for c in columns:
        v = row.get(c)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return False
    return True


def order_front(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices ordering rows by objective 1 best-first, then objective 2, ...; stable for exact ties."""
    p = _as_minimization(values, directions)
    return np.lexsort(tuple(p[:, k] for k in reversed(range(p.shape[1]))))


def compute_fronts(
    rows: Any,
    objectives: Sequence[str],
    group_by: str = "study",
    reference_point: Sequence[float] | None = None,
) -> list[Front]:
    """One `Front` per value of `group_by` ("study" or "strategy"), sorted by that value, sharing one reference point.

    `rows` is a pyarrow Table or an iterable of mappings. Only complete rows with every chosen objective present
    count. `reference_point` (stored units, one per objective) overrides the default rule, which is applied to all
    usable rows of all groups together so that the fronts' hypervolumes are comparable.
    """
    objectives = check_front_objectives(objectives)
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, but got {group_by!r}.")
    columns = metrics.columns(objectives)
    directions = metrics.directions(objectives)

    groups: dict[str, list[dict]] = {}
    skipped: dict[str, int] = {}
    for row in rows_as_dicts(rows):
        key = str(row.get(group_by))
        groups.setdefault(key, [])
        if _usable(row, columns):
            groups[key].append(row)
        else:
            skipped[key] = skipped.get(key, 0) + 1

    every = [r for g in groups.values() for r in g]
    if not every:
        raise ValueError(f"no complete rows with all of {columns} present: nothing to build fronts from.")
    all_values = np.array([[float(r[c]) for c in columns] for r in every])
    if reference_point is None:
        ref = default_reference_point(all_values, directions)
    else:
        ref = np.asarray(reference_point, dtype=float)
        if ref.shape != (len(objectives),):
            raise ValueError(f"reference_point must hold one value per objective {objectives}, got {reference_point}.")
    p_min = _as_minimization(all_values, directions)
    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    ideal = p_min.min(axis=0) * sign

    fronts = []
    for key in sorted(groups):
        group = groups[key]
        values = np.array([[float(r[c]) for c in columns] for r in group]).reshape(-1, len(columns))
        mask = pareto_mask(values, directions) if group else np.zeros(0, dtype=bool)
        on = [i for i in order_front(values, directions) if mask[i]] if group else []
        off = [i for i in range(len(group)) if not mask[i]]
        fronts.append(Front(
            study=key,
            objectives=objectives,
            points=tuple(group[i] for i in on),
            hypervolume=hypervolume(values[mask], directions, ref) if group else 0.0,
            reference_point=tuple(float(v) for v in ref),
            ideal_point=tuple(float(v) for v in ideal),
            dominated=tuple(group[i] for i in off),
            n_skipped=skipped.get(key, 0),
            group_by=group_by,
        ))
    return fronts


def _dominates_any(p: np.ndarray, q: np.ndarray, strict: bool) -> np.ndarray:
    """For each row of q: is it dominated (strict) or weakly dominated (p <= q everywhere) by some row of p?"""
    if p.shape[0] == 0 or q.shape[0] == 0:
        return np.zeros(q.shape[0], dtype=bool)
    le = (p[None, :, :] <= q[:, None, :]).all(axis=2)
    if strict:
        le &= (p[None, :, :] < q[:, None, :]).any(axis=2)
    return le.any(axis=1)


def compare_fronts(a: Front, b: Front) -> dict:
    """Compare two fronts computed with the same objectives and reference point.

    Returns hypervolumes (stored units and fractions), front sizes, `a_dominated_by_b` (how many of a's front
    points some point of b's front dominates, strictly) and `b_dominated_by_a`, and Zitzler's coverage
    `coverage_a_b` = C(a, b): the fraction of b's front points weakly dominated (no worse anywhere, so equal points
    count) by some point of a; `coverage_b_a` likewise. C(a, b) = 1 and C(b, a) < 1 means a is strictly better.
    """
    if a.objectives != b.objectives:
        raise ValueError(f"fronts must share objectives, but got {a.objectives} and {b.objectives}.")
    if a.reference_point != b.reference_point:
        raise ValueError(
            "fronts must share one reference point to compare hypervolumes (compute them in one compute_fronts "
            f"call), but got {a.reference_point} and {b.reference_point}."
        )
    pa = _as_minimization(a.values(), a.directions)
    pb = _as_minimization(b.values(), b.directions)
    return {
        "a": a.study,
        "b": b.study,
        "hypervolume_a": a.hypervolume,
        "hypervolume_b": b.hypervolume,
        "hypervolume_fraction_a": a.hypervolume_fraction,
        "hypervolume_fraction_b": b.hypervolume_fraction,
        "n_a": len(a.points),
        "n_b": len(b.points),
        "a_dominated_by_b": int(_dominates_any(pb, pa, strict=True).sum()),
        "b_dominated_by_a": int(_dominates_any(pa, pb, strict=True).sum()),
        "coverage_a_b": float(_dominates_any(pa, pb, strict=False).mean()) if len(b.points) else 0.0,
        "coverage_b_a": float(_dominates_any(pb, pa, strict=False).mean()) if len(a.points) else 0.0,
    }


def knee_point(front: Front) -> dict:
    """The front's knee: the row with the best trade-off, by a fixed rule on objectives normalized over the front.

    Each objective is mapped to [0, 1] over the front's own points, 0 = best (an objective with a single value maps
    to 0). Two objectives: the point farthest from the straight line through the two extreme points, on the side
    of the ideal point (after normalization the extremes are (0, 1) and (1, 0), so this maximizes 1 - x - y).
    Three or more: the point nearest to the ideal point (Euclidean). Ties: the first in front order.
    """
    if not front.points:
        raise ValueError(f"front {front.study!r} has no points: there is no knee.")
    p = _as_minimization(front.values(), front.directions)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    u = (p - lo) / span
    if p.shape[1] == 2:
        score = 1.0 - u[:, 0] - u[:, 1]  # proportional to the signed distance to the line x + y = 1
    else:
        score = -np.sqrt((u ** 2).sum(axis=1))
    return front.points[int(np.argmax(score))]


def rows_for_fronts(store_dir: str, studies: list[str] | None) -> tuple[list[dict], list[dict]]:
    """(search rows, reference rows) of a store: presets and fixed maps are reference points, not fronts."""
    from ..core import store

    rows = store.rows(store_dir, studies or None)
    if not rows:
        raise CerebellumError(f"no trials in store {store_dir}" + (f" for studies {studies}" if studies else ""))
    search = [r for r in rows if r["strategy"] not in store.REFERENCE_STRATEGIES]
    refs = [r for r in rows if r["strategy"] in store.REFERENCE_STRATEGIES and r["status"] == "complete"]
    return search, refs


def prediction_check(rows: Sequence[Mapping]) -> dict | None:
    """How the predictions stored with rows (the guided strategy's and solve's, made before each trial ran) compare
    with what the trials measured: count, rank correlation, share within 2 standard errors, median relative error,
    per phase, and the worst misses. None when no complete row carries a prediction."""
    from .surrogate import spearman

    hits = [r for r in rows if r.get("status") == "complete" and r.get("predicted_kld") is not None
            and r.get("kld") is not None]
    if not hits:
        return None

    def summary(group: Sequence[Mapping]) -> dict:
        pred = np.array([r["predicted_kld"] for r in group], dtype=np.float64)
        se = np.array([r.get("predicted_kld_se") or 0.0 for r in group], dtype=np.float64)
        meas = np.array([r["kld"] for r in group], dtype=np.float64)
        rho = spearman(pred, meas) if len(group) > 2 else float("nan")
        return {"n": len(group), "spearman": None if math.isnan(rho) else rho,
                "within_2se": float(np.mean(np.abs(meas - pred) <= 2 * se)),
                "median_relative_error": float(np.median(np.abs(meas - pred) / np.maximum(np.abs(meas), 1e-12)))}

    phases: dict[str, list[Mapping]] = {}
    for r in hits:
        phases.setdefault(r.get("phase") or r.get("strategy") or "", []).append(r)

    def z(r):
        return abs(r["kld"] - r["predicted_kld"]) / max(r.get("predicted_kld_se") or 0.0, 1e-12)

    worst = sorted(hits, key=z, reverse=True)[:3]
    return {**summary(hits), "by_phase": {k: summary(v) for k, v in phases.items()},
            "worst": [{"trial_id": r["trial_id"], "phase": r.get("phase"), "predicted_kld": r["predicted_kld"],
                       "predicted_kld_se": r.get("predicted_kld_se"), "kld": r["kld"], "bpw": r.get("bpw")}
                      for r in worst]}


__getattr__ = former_names(__name__, {"check_objectives": "cerebellum_ray.predict.fronts:check_front_objectives",
                                      "_DIRECTIONS": "cerebellum_ray.core.metrics:DIRECTIONS"})
