"""Pareto fronts over trial rows: which trials are non-dominated, how much they dominate, and pictures of both.

Computing is separate from drawing (as in optuna, whose `_get_pareto_front_info` feeds both plot back ends):
`compute_fronts` turns rows into frozen `Front` records; `plot_png` (matplotlib) and `plot_html` (plotly) only draw
them. Neither back end is imported until a plot is asked for.

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
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OBJECTIVES",
    "UNIT_SCALE",
    "Front",
    "compare_fronts",
    "compute_fronts",
    "default_reference_point",
    "hypervolume",
    "knee_point",
    "pareto_mask",
    "plot_html",
    "plot_png",
]

# name -> (row column, direction, axis label, display unit). Data: directions, labels and units derive from it.
OBJECTIVES: dict[str, tuple[str, str, str, str]] = {
    "size": ("size_bytes", "min", "file size", "GB"),
    "bpw": ("bpw", "min", "bits per weight", "bpw"),
    "kld": ("kld", "min", "mean KL divergence vs reference", "nats"),
    "ppl": ("ppl", "min", "perplexity", ""),
    "humaneval": ("humaneval", "max", "HumanEval pass@1", "%"),
}

# display unit -> factor from the stored value (bytes, fraction) to the displayed one. Units not listed: 1.
UNIT_SCALE: dict[str, float] = {"GB": 1e-9, "%": 100.0}

DEFAULT_MARGIN = 0.1  # the reference point lies this fraction of each objective's range beyond the worst value
GROUP_BY = ("study", "strategy")
_DIRECTIONS = ("min", "max")
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
    bad = [d for d in directions if d not in _DIRECTIONS]
    if bad:
        raise ValueError(f"every direction must be one of {_DIRECTIONS}, but got {bad}.")
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
    objectives: tuple[str, ...]          # keys of OBJECTIVES
    points: tuple[dict, ...]             # front rows
    hypervolume: float                   # in stored units (e.g. bytes x nats), w.r.t. reference_point
    reference_point: tuple[float, ...]
    ideal_point: tuple[float, ...]       # best value of each objective over all compared rows
    dominated: tuple[dict, ...] = ()     # usable rows of the group that are not on the front
    n_skipped: int = 0                   # rows of the group not complete, or missing an objective
    group_by: str = "study"

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(OBJECTIVES[o][1] for o in self.objectives)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(OBJECTIVES[o][0] for o in self.objectives)

    def values(self, which: str = "points") -> np.ndarray:
        """(n, d) array of the objectives of `points` (or of `dominated`), stored units and signs."""
        rows = getattr(self, which)
        return np.array([[float(r[c]) for c in self.columns] for r in rows], dtype=float).reshape(-1, len(self.columns))

    @property
    def hypervolume_fraction(self) -> float:
        """Hypervolume as a fraction of the box between `ideal_point` and `reference_point` (0..1)."""
        box = float(np.prod(np.abs(np.subtract(self.reference_point, self.ideal_point))))
        return self.hypervolume / box if box > 0 else 0.0


def _rows_as_dicts(rows: Any) -> list[dict]:
    if hasattr(rows, "to_pylist"):  # pyarrow Table / RecordBatch
        return rows.to_pylist()
    return [dict(r) for r in rows]


def _check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    objectives = tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objectives {unknown}: choose from {sorted(OBJECTIVES)}.")
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


def _order_front(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
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
    objectives = _check_objectives(objectives)
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, but got {group_by!r}.")
    columns = [OBJECTIVES[o][0] for o in objectives]
    directions = [OBJECTIVES[o][1] for o in objectives]

    groups: dict[str, list[dict]] = {}
    skipped: dict[str, int] = {}
    for row in _rows_as_dicts(rows):
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
        on = [i for i in _order_front(values, directions) if mask[i]] if group else []
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


# ---------------------------------------------------------------------------------------------------------------
# Drawing (matplotlib and plotly are imported only here)
# ---------------------------------------------------------------------------------------------------------------

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22"]
_MARKERS_MPL = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
_MARKERS_PLOTLY = ["circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "triangle-left",
                   "triangle-right", "hexagon"]
_MARKERS_PLOTLY_3D = ["circle", "square", "diamond", "cross", "x", "circle-open", "square-open", "diamond-open"]
_REFERENCE_COLOUR = "#222222"


def _axis_label(name: str, log: bool = False, direction: bool = True) -> str:
    _, better, label, unit = OBJECTIVES[name]
    text = f"{label} ({unit})" if unit and unit != label else label
    text += ", log scale" if log else ""
    if not direction:
        return text
    return text + (" — lower is better" if better == "min" else " — higher is better")


def _log_ticks(values: np.ndarray) -> list[float]:
    """1-2-5 steps covering the positive `values` (plotly labels log axes with bare digits otherwise)."""
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return []
    lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
    ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 2, 5)]
    return [t for t in ticks if values.min() / 2.5 <= t <= values.max() * 2.5]


def _display(rows: Sequence[Mapping], name: str) -> np.ndarray:
    """Column `name` of rows in display units; missing values as NaN."""
    column, _, _, unit = OBJECTIVES[name]
    scale = UNIT_SCALE.get(unit, 1.0)
    return np.array([np.nan if r.get(column) is None else float(r[column]) * scale for r in rows], dtype=float)


def _legend_name(front: Front) -> str:
    n_all = len(front.points) + len(front.dominated)
    return f"{front.study}: {len(front.points)} of {n_all}, HV {front.hypervolume_fraction:.3f}"


def _reference_name(row: Mapping) -> str:
    return str(row.get("label") or row.get("trial_id") or "reference")


def _check_plot_args(fronts: Sequence[Front], objectives: Sequence[str] | None) -> tuple[str, ...]:
    if not fronts:
        raise ValueError("nothing to plot: fronts is empty.")
    objectives = _check_objectives(objectives if objectives is not None else fronts[0].objectives)
    for f in fronts:
        if f.objectives != objectives:
            raise ValueError(f"front {f.study!r} has objectives {f.objectives}, the plot asks for {objectives}.")
    if len(objectives) > 3:
        raise ValueError(f"plots show 2 or 3 objectives, but got {list(objectives)}.")
    return objectives


def _log_axes(names: Sequence[str], log_scale: Collection[str], rows: Sequence[Mapping]) -> dict[str, bool]:
    """Which of `names` get a log axis: asked for, and every value to show is positive."""
    out = {}
    for name in names:
        values = _display(rows, name)
        values = values[~np.isnan(values)]
        out[name] = name in log_scale and values.size > 0 and bool((values > 0).all())
    return out


def _title(fronts: Sequence[Front], objectives: Sequence[str]) -> str:
    text = f"Pareto fronts per {fronts[0].group_by}: {OBJECTIVES[objectives[0]][2]} / {OBJECTIVES[objectives[1]][2]}"
    return text + (f" (colour: {OBJECTIVES[objectives[2]][2]})" if len(objectives) == 3 else "")


def _split_off_scale(refs: list[dict], fronts: Sequence[Front], objectives: Sequence[str],
                     log_scale: Collection[str]) -> tuple[list[dict], list[str]]:
    """Reference rows that would stretch a log axis by more than 100x below every trial (e.g. the reference model
    itself, KLD ~0) are left off the plot and named in the caption instead."""
    shown, off = [], []
    trials = [r for f in fronts for r in (*f.points, *f.dominated)]
    for o in objectives:
        if o not in log_scale:
            continue
        col = OBJECTIVES[o][0]
        values = [r[col] for r in trials if r.get(col) is not None and r[col] > 0]
        if not values:
            continue
        floor = min(values) / 100
        for r in refs:
            if r.get(col) is not None and r[col] < floor:
                off.append(f"{_reference_name(r)} ({o} {r[col]:.2g})")
    names = {x.split(" (")[0] for x in off}
    shown = [r for r in refs if _reference_name(r) not in names]
    return shown, off


def _hv_note(fronts: Sequence[Front], off_scale: Sequence[str] = ()) -> str:
    """One line saying what HV means, with the actual reference point in display units."""
    f = fronts[0]
    ref = ", ".join(
        f"{v * UNIT_SCALE.get(OBJECTIVES[o][3], 1.0):.4g} {OBJECTIVES[o][3]}".strip()
        for o, v in zip(f.objectives, f.reference_point)
    )
    skipped = sum(x.n_skipped for x in fronts)
    return (f"HV = share of the box from the best value of each objective to the reference point ({ref}; "
            "by default the worst value + 10% of the range) that a front dominates."
            + (f" {skipped} rows not complete or missing an objective are left out." if skipped else "")
            + (f" Off scale, not drawn: {', '.join(off_scale)}." if off_scale else ""))


def _write_atomically(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, then move it into place (gguf_io.atomic_path)."""
    from .gguf_io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write(str(tmp))
    return path


def _step_order(front: Front, x_name: str, y_name: str) -> list[int]:
    """Front point indices along x from best to worst: drawn as a post-step, the line is the attainment boundary."""
    xy = np.c_[_display(front.points, x_name), _display(front.points, y_name)]
    return [int(k) for k in _order_front(xy, [OBJECTIVES[x_name][1], OBJECTIVES[y_name][1]])]


def _plot_inputs(fronts, reference_rows, objectives, log_scale):
    """(objectives, reference rows drawn, reference rows off a log scale, every row drawn) for both plotters."""
    objectives = _check_plot_args(fronts, objectives)
    refs, off_scale = _split_off_scale(_rows_as_dicts(reference_rows or []), fronts, objectives, log_scale)
    shown = [r for f in fronts for r in (*f.points, *f.dominated)] + refs
    return objectives, refs, off_scale, shown


def plot_png(
    fronts: Sequence[Front],
    reference_rows: Any,
    path: str | os.PathLike,
    objectives: Sequence[str] | None = None,
    log_scale: Collection[str] = ("kld",),
    title: str | None = None,
    size_inches: tuple[float, float] = (11.0, 7.0),
    dpi: int = 120,
) -> Path:
    """Draw fronts (and labelled reference rows such as llama.cpp presets) to a PNG with matplotlib (Agg).

    Two objectives: x = first, y = second; each front a coloured step line with its own marker, its dominated rows
    faint. Three: the same 2-D projection of the first two, the third as marker colour (colour bar); each front
    keeps its marker and an edge in its colour. Objectives in `log_scale` get a log axis when all values shown
    are positive. Written atomically; returns the path.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    objectives, refs, off_scale, shown = _plot_inputs(fronts, reference_rows, objectives, log_scale)
    x_name, y_name = objectives[0], objectives[1]
    z_name = objectives[2] if len(objectives) == 3 else None
    logs = _log_axes(objectives[:2], log_scale, shown)

    fig = Figure(figsize=size_inches, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    norm = cmap = None
    if z_name is not None:
        from matplotlib.colors import Normalize

        z_all = _display(shown, z_name)
        z_all = z_all[~np.isnan(z_all)]
        norm = Normalize(vmin=float(z_all.min()), vmax=float(z_all.max())) if z_all.size else Normalize(0, 1)
        cmap = "viridis_r" if OBJECTIVES[z_name][1] == "min" else "viridis"  # bright = better either way

    handles = []
    for i, front in enumerate(fronts):
        colour, marker = _COLOURS[i % len(_COLOURS)], _MARKERS_MPL[i % len(_MARKERS_MPL)]
        dx, dy = _display(front.dominated, x_name), _display(front.dominated, y_name)
        ax.scatter(dx, dy, s=14, marker=marker, color=colour, alpha=0.22, linewidths=0, zorder=1)
        ordered = [front.points[k] for k in _step_order(front, x_name, y_name)]
        x, y = _display(ordered, x_name), _display(ordered, y_name)
        if z_name is None:
            ax.step(x, y, where="post", color=colour, linewidth=1.6, alpha=0.9, zorder=2)
            ax.scatter(x, y, s=40, marker=marker, color=colour, edgecolors="white", linewidths=0.6, zorder=3)
            handles.append(Line2D([], [], color=colour, marker=marker, markeredgecolor="white",
                                  label=_legend_name(front)))
        else:
            ax.scatter(x, y, c=_display(ordered, z_name), cmap=cmap, norm=norm,
                       s=55, marker=marker, edgecolors=colour, linewidths=1.6, zorder=3)
            # the fill is the colour-bar value, so the legend shows only the front's marker and edge colour
            handles.append(Line2D([], [], linestyle="", marker=marker, markersize=8, markerfacecolor="white",
                                  markeredgecolor=colour, markeredgewidth=1.6, label=_legend_name(front)))

    if refs:
        rx, ry = _display(refs, x_name), _display(refs, y_name)
        if z_name is None:
            ax.scatter(rx, ry, s=110, marker="*", color=_REFERENCE_COLOUR, zorder=4)
        else:
            ax.scatter(rx, ry, c=_display(refs, z_name), cmap=cmap, norm=norm, s=150, marker="*",
                       edgecolors=_REFERENCE_COLOUR, linewidths=1.0, zorder=4)
        handles.append(Line2D([], [], linestyle="", marker="*", markersize=12, label="reference points",
                              markerfacecolor=_REFERENCE_COLOUR if z_name is None else "white",
                              markeredgecolor=_REFERENCE_COLOUR))
        labels = [ax.annotate(_reference_name(r), (xv, yv), xytext=_LABEL_OFFSETS[0], textcoords="offset points",
                              fontsize=9, color=_REFERENCE_COLOUR, zorder=5,
                              bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
                  for r, xv, yv in zip(refs, rx, ry) if not (np.isnan(xv) or np.isnan(yv))]

    if z_name is not None:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        bar.set_label(_axis_label(z_name))
    ax.set_xscale("log" if logs[x_name] else "linear")
    ax.set_yscale("log" if logs[y_name] else "linear")
    for axis, name in ((ax.xaxis, x_name), (ax.yaxis, y_name)):
        if logs[name]:
            # plain numbers at 1-2-5 steps: "0.02" reads better than "2x10^-2", and one decade has several labels
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(_axis_label(x_name, logs[x_name]))
    ax.set_ylabel(_axis_label(y_name, logs[y_name]))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(handles=handles, loc="best", fontsize=9, title_fontsize=9,
              title=f"front per {fronts[0].group_by}: points on front of all, HV (faint: dominated trials)")
    ax.set_title(title or _title(fronts, objectives))
    fig.text(0.005, 0.002, _hv_note(fronts, off_scale), fontsize=7, color="#555555", ha="left", va="bottom", wrap=True)
    fig.get_layout_engine().set(h_pad=0.2, rect=(0, 0.05, 1, 0.95))  # the bottom strip holds the note
    if refs:
        _spread_labels(fig, ax, labels)
    return _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


# where a reference point's name may go, in points from the star: right-above first, then around it
_LABEL_OFFSETS = ((7, 6), (7, -14), (-7, 6), (-7, -14), (7, 18), (7, -26), (-7, 18), (-7, -26))


def _spread_labels(fig, ax, labels) -> None:
    """Move each reference label to the first offset where it overlaps no label placed before it (nearby presets,
    e.g. Q2_K and Q3_K_S at almost the same size and KLD, would otherwise print over each other)."""
    fig.canvas.draw()  # the final layout: label extents in display pixels
    placed = []
    for label in labels:
        for dx, dy in _LABEL_OFFSETS:
            label.set_position((dx, dy))
            label.set_horizontalalignment("left" if dx > 0 else "right")
            box = label.get_window_extent()
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(label.get_window_extent())


def plot_html(
    fronts: Sequence[Front],
    reference_rows: Any,
    path: str | os.PathLike,
    objectives: Sequence[str] | None = None,
    log_scale: Collection[str] = ("kld",),
    title: str | None = None,
) -> Path:
    """Draw fronts and labelled reference rows to a self-contained HTML file (plotly.js inline, works offline).

    Two objectives: step lines as in `plot_png`, with hover text naming each trial. Three: a 3-D scatter (front
    points solid, dominated faint, reference points labelled). Written atomically; returns the path.
    """
    import plotly.graph_objects as go

    objectives, refs, off_scale, shown = _plot_inputs(fronts, reference_rows, objectives, log_scale)
    logs = _log_axes(objectives, log_scale, shown)
    three_d = len(objectives) == 3

    def hover(rows: Sequence[Mapping]) -> list[str]:
        out = []
        for r in rows:
            parts = [f"<b>{r.get('label') or r.get('trial_id')}</b>", f"{r.get('study')} / {r.get('strategy')}"]
            for o in objectives:
                v = _display([r], o)[0]
                parts.append(f"{OBJECTIVES[o][2]}: {'n/a' if np.isnan(v) else f'{v:.5g}'} {OBJECTIVES[o][3]}")
            out.append("<br>".join(parts))
        return out

    def coords(rows: Sequence[Mapping]) -> dict:
        keys = ("x", "y", "z") if three_d else ("x", "y")
        return {k: _display(rows, o) for k, o in zip(keys, objectives)}

    fig = go.Figure()
    for i, front in enumerate(fronts):
        colour = _COLOURS[i % len(_COLOURS)]
        name = _legend_name(front)
        if three_d:
            marker = _MARKERS_PLOTLY_3D[i % len(_MARKERS_PLOTLY_3D)]
            fig.add_trace(go.Scatter3d(
                **coords(front.dominated), mode="markers", name=f"{front.study}: dominated", legendgroup=name,
                marker={"size": 2.5, "color": colour, "opacity": 0.2, "symbol": marker},
                hovertext=hover(front.dominated), hoverinfo="text"))
            fig.add_trace(go.Scatter3d(
                **coords(front.points), mode="markers", name=name, legendgroup=name,
                marker={"size": 5, "color": colour, "symbol": marker, "line": {"color": "white", "width": 0.5}},
                hovertext=hover(front.points), hoverinfo="text"))
        else:
            marker = _MARKERS_PLOTLY[i % len(_MARKERS_PLOTLY)]
            fig.add_trace(go.Scatter(
                **coords(front.dominated), mode="markers", name=f"{front.study}: dominated", legendgroup=name,
                showlegend=False, marker={"size": 6, "color": colour, "opacity": 0.2, "symbol": marker},
                hovertext=hover(front.dominated), hoverinfo="text"))
            ordered = [front.points[k] for k in _step_order(front, objectives[0], objectives[1])]
            fig.add_trace(go.Scatter(
                **coords(ordered), mode="lines+markers", line={"shape": "hv", "color": colour, "width": 2},
                name=name, legendgroup=name,
                marker={"size": 9, "color": colour, "symbol": marker, "line": {"color": "white", "width": 1}},
                hovertext=hover(ordered), hoverinfo="text"))
    annotations = []
    if refs:
        names = [_reference_name(r) for r in refs]
        if three_d:
            fig.add_trace(go.Scatter3d(
                **coords(refs), mode="markers+text", name="reference points", text=names,
                textposition="top center", textfont={"size": 12, "color": _REFERENCE_COLOUR},
                marker={"size": 6, "color": _REFERENCE_COLOUR, "symbol": "diamond"},
                hovertext=hover(refs), hoverinfo="text"))
        else:
            fig.add_trace(go.Scatter(
                **coords(refs), mode="markers", name="reference points",
                marker={"size": 14, "color": _REFERENCE_COLOUR, "symbol": "star"},
                hovertext=hover(refs), hoverinfo="text"))
            # annotations rather than trace text: they get a background, so lines behind them stay readable
            xs, ys = coords(refs)["x"], coords(refs)["y"]
            for name, xv, yv in zip(names, xs, ys):
                if np.isnan(xv) or np.isnan(yv):
                    continue
                annotations.append({
                    "x": math.log10(xv) if logs[objectives[0]] else xv,
                    "y": math.log10(yv) if logs[objectives[1]] else yv,
                    "text": name, "showarrow": False, "xanchor": "left", "yanchor": "bottom", "xshift": 6,
                    "yshift": 4, "bgcolor": "rgba(255,255,255,0.75)", "font": {"size": 12, "color": _REFERENCE_COLOUR},
                })

    axes = {}
    for o in objectives:
        axes[o] = {"title": {"text": _axis_label(o, logs[o], direction=not three_d)},
                   "type": "log" if logs[o] else "linear"}
        if logs[o]:
            ticks = _log_ticks(_display(shown, o))
            axes[o].update(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    note = _hv_note(fronts, off_scale)
    if three_d:
        note += "<br>" + "; ".join(
            f"{OBJECTIVES[o][2]}: {'lower' if OBJECTIVES[o][1] == 'min' else 'higher'} is better" for o in objectives)
    fig.update_layout(
        title={"text": title or _title(fronts, objectives)},
        template="plotly_white",
        legend={"title": {"text": f"front per {fronts[0].group_by} (faint: dominated trials)"}},
        margin={"b": 90},
        height=800,
    )
    caption = {"text": note, "xref": "paper", "yref": "paper", "x": 0, "y": -0.13 if not three_d else -0.08,
               "showarrow": False, "xanchor": "left", "align": "left", "font": {"size": 10, "color": "#555555"}}
    if three_d:
        fig.update_layout(
            scene={"xaxis": axes[objectives[0]], "yaxis": axes[objectives[1]], "zaxis": axes[objectives[2]],
                   "aspectmode": "cube", "camera": {"eye": {"x": 1.7, "y": 1.7, "z": 0.7}}},
            annotations=[caption])
    else:
        fig.update_layout(xaxis=axes[objectives[0]], yaxis=axes[objectives[1]], annotations=[caption, *annotations])
    html = fig.to_html(full_html=True, include_plotlyjs=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(html)

    return _write_atomically(path, write)

