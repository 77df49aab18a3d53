"""The model card's ablation procedure, automated.

Every step is a map relative to the space's base preset itself (a partial point: the moved dimensions set, every
other tensor at the preset's type), so the base is the preset exactly even where it gives the tensors of one
dimension different types (Q4_K_M's use_more_bits layers), as in the card.

Phases (each a batch of trials run in parallel on Ray Tune, every trial stored with a label):
  0. base        - the space's base map (the preset).
  1. groups      - every dimension moved alone, as a whole, to each candidate type.
  2. layers      - for a per-layer dimension whose group move to a cheaper type cost quality (a "mixed" result:
                   smaller but worse), each layer moved alone to that type.
  3. routers     - each router layer moved alone to each candidate (dimensions named "router*" are only tried
                   per layer: stacking router changes does not work, the card found).
  4. final       - the accepted moves stacked: every group or layer move that kept quality (mean KLD within 2
                   standard errors of the base, or better) while saving bytes, every promotion that improved KLD
                   by more than 2 standard errors, and the single best router move if it improved KLD.
Maps this study already measured under the same evaluation (same map digest) are answered from the store (this also
makes a rerun resume).
The summary table mirrors the card's: move, tensors, KLD change, size change, decision.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

from ..core.atomic import atomic_output
from ..core.compat import former_names
from ..formats.precision_map import PrecisionMap, resolve
from .run import SearchResult, StudyRun
from .run import point_key as _point_key
from ..formats.space import SearchSpace

TOLERANCE_SE = 2.0
REFERENCE_KLD = 1e-6  # a base this close to its reference is the reference itself (float noise, not quantization)


@dataclass(frozen=True)
class Move:
    label: str
    kind: str  # "group", "layer", "router"
    dimension: str
    params: tuple[str, ...]
    type: str
    n_tensors: int = 0


def _move(space: SearchSpace, base_map: PrecisionMap, params, type_name: str) -> dict[str, int] | None:
    """The partial point setting `params` to `type_name`; None if a dimension lacks that candidate or the move
    changes no tensor of the base map."""
    point = {}
    changes = False
    for p in params:
        dim = space.dimension(p)
        if type_name not in dim.types:
            return None
        point[p] = dim.types.index(type_name)
        changes = changes or any(base_map.types[t] != type_name for t in dim.tensors)
    return point if changes else None


def group_moves(space: SearchSpace, base_map: PrecisionMap) -> list[tuple[Move, dict[str, int]]]:
    out = []
    names = dict.fromkeys(d.dimension for d in space.dimensions)
    for name in names:
        dims = [d for d in space.dimensions if d.dimension == name]
        if name.startswith("router") and len(dims) > 1:
            continue
        for t in dims[0].types:
            point = _move(space, base_map, [d.param for d in dims], t)
            if point is not None:
                n = sum(len(d.tensors) for d in dims)
                out.append((Move(f"group {name}={t}", "group", name, tuple(d.param for d in dims), t, n), point))
    return out


def single_moves(space: SearchSpace, base_map: PrecisionMap, name: str, types, kind: str):
    out = []
    for d in (d for d in space.dimensions if d.dimension == name):
        for t in types:
            point = _move(space, base_map, [d.param], t)
            if point is not None:
                out.append((Move(f"{kind} {d.param}={t}", kind, name, (d.param,), t, len(d.tensors)), point))
    return out


def run_ablation(run: StudyRun) -> SearchResult:
    """Run the procedure as Ray Tune batches of the study run; returns its SearchResult (the summary is printed and
    stored beside the rows)."""
    space = run.space
    store_dir, study = run.store_dir, run.study
    # trials build with the imatrix when there is one; some presets then give other base types
    base_map = resolve(run.catalog, space.base, has_imatrix=run.has_imatrix)
    key = _MapKeys(space, run.catalog, run.has_imatrix)
    runner = _BatchRunner(run, key)
    base: dict[str, int] = {}  # the preset itself
    results = runner.run([(Move("base", "base", "", (), ""), base)], "base")
    base_result = results.get(key(base))
    if base_result is None:
        raise RuntimeError(f"the base map ({space.base.base or space.base.like}) failed to build or score: see the "
                           f"failed row of study {study} in {store_dir}; the ablation needs it as its anchor")
    if base_result["kld"] <= REFERENCE_KLD:
        print(f"warning: the base map ({_base_name(space)}) is the KLD reference itself "
              f"(KLD {base_result['kld']:.1e}): every move takes the model away from the reference and costs KLD, so "
              "none can be kept; quantize from a higher-precision source (BF16/F16) or score against a better "
              "reference (--reference)",
              file=sys.stderr)
    phase1 = group_moves(space, base_map)
    results.update(runner.run(phase1, "groups"))
    phase2 = []
    for move, point in phase1:
        r = results.get(key(point))
        dims = [d for d in space.dimensions if d.dimension == move.dimension]
        if r and len(dims) > 1 and r["size_bytes"] < base_result["size_bytes"] and not _tolerated(r, base_result):
            phase2.extend(single_moves(space, base_map, move.dimension, [move.type], "layer"))
    results.update(runner.run(phase2, "layers"))
    routers = [name for name in dict.fromkeys(d.dimension for d in space.dimensions) if name.startswith("router")]
    phase3 = [m for name in routers for m in single_moves(
        space, base_map, name, next(d for d in space.dimensions if d.dimension == name).types, "router")]
    results.update(runner.run(phase3, "routers"))

    decisions, final_point = decide(base_result, phase1, phase2, phase3, results, key)
    if final_point != base:
        results.update(runner.run([(Move("final", "final", "", (), ""), final_point)], "final"))
    table = summary_table(decisions, base_result, results.get(key(final_point)), _base_name(space))
    with atomic_output(store_dir / f"{study}-ablation.md") as f:
        f.write(table.encode())
    print(table)
    return run.result(len({key(p) for _, p in [(None, base)] + phase1 + phase2 + phase3}))


def _base_name(space: SearchSpace) -> str:
    return space.base.base or (f"like {space.base.like}" if space.base.like else "the base map")


class _MapKeys:
    """A point's map digest (memoized): results are matched by the map they measured, not by how it was named."""

    def __init__(self, space: SearchSpace, catalog, has_imatrix: bool = False):
        self.space, self.catalog, self.has_imatrix, self._memo = space, catalog, has_imatrix, {}

    def __call__(self, point: Mapping[str, int]) -> str:
        k = _point_key(point)
        if k not in self._memo:
            self._memo[k] = self.space.map_for(self.catalog, point, has_imatrix=self.has_imatrix).digest
        return self._memo[k]


def _tolerated(r: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    se = max(r.get("kld_se") or 0.0, base.get("kld_se") or 0.0)
    return r["kld"] <= base["kld"] + TOLERANCE_SE * se


def _improves(r: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    se = max(r.get("kld_se") or 0.0, base.get("kld_se") or 0.0)
    return r["kld"] < base["kld"] - TOLERANCE_SE * se


def decide(base_result, phase1, phase2, phase3, results, key=_point_key):
    """Keep-if-better: returns [(move, result, decision)] and the stacked final (partial) point.

    Per-layer results come first (a layer that tolerates a cheaper type gets it); kept group moves then fill the
    parameters not already set per layer, best KLD first; routers contribute only their single best move.
    `results` maps key(point) to a stored result.
    """
    decisions: dict[Move, tuple[Any, str]] = {}
    final: dict[str, int] = {}
    layered = {m.dimension for m, _ in phase2}

    def result_of(point):
        r = results.get(key(point))
        return r if r is not None and r.get("kld") is not None else None

    for move, point in phase2:
        r = result_of(point)
        if r is None:
            decisions[move] = (r, "failed")
        elif _tolerated(r, base_result):
            final.update({p: point[p] for p in move.params})
            decisions[move] = (r, "keep")
        else:
            decisions[move] = (r, "reject")
    kept_groups = []
    for move, point in phase1:
        r = result_of(point)
        if r is None:
            decisions[move] = (r, "failed")
            continue
        smaller = r["size_bytes"] < base_result["size_bytes"]
        if smaller and move.dimension in layered and not _tolerated(r, base_result):
            decisions[move] = (r, "mixed: tested per layer")
        elif (smaller and _tolerated(r, base_result)) or (not smaller and _improves(r, base_result)):
            kept_groups.append((r["kld"], move, point))
        else:
            decisions[move] = (r, "reject")
    for _, move, point in sorted(kept_groups, key=lambda x: x[0]):
        free = [p for p in move.params if p not in final]
        if free:
            final.update({p: point[p] for p in free})
            note = "keep" if len(free) == len(move.params) else f"keep for the {len(free)} layers not set per layer"
        else:
            note = "not stacked: these tensors already took another kept move"
        decisions[move] = (result_of(point), note)
    best = None
    for move, point in phase3:
        r = result_of(point)
        ok = r is not None and _improves(r, base_result)
        decisions[move] = (r, "failed" if r is None else "reject")
        if ok and (best is None or r["kld"] < best[1]["kld"]):
            best = (move, r, point)
    if best is not None:
        final.update({p: best[2][p] for p in best[0].params})
        decisions[best[0]] = (best[1], "keep (best router; routers are not stacked)")
    ordered = [(m, *decisions[m]) for m, _ in phase1 + phase2 + phase3]
    return ordered, final


def _kld_change(kld: float, base_kld: float) -> str:
    """Relative change, or the absolute one when the base is the reference itself (KLD ~ 0)."""
    if base_kld > REFERENCE_KLD:
        return f"{100 * (kld - base_kld) / base_kld:+.1f}%"
    return f"{kld - base_kld:+.5f} (abs.)"


def summary_table(decisions, base_result, final_result, base_name: str = "the base map") -> str:
    lines = ["| move | tensors | KLD | KLD change | size change | decision |", "|---|---:|---:|---:|---:|---|"]
    b_kld, b_size = base_result["kld"], base_result["size_bytes"]
    lines.append(f"| base ({base_name}) | | {b_kld:.5f} | | | |")
    for move, r, decision in decisions:
        if r is None or r.get("kld") is None:
            lines.append(f"| {move.label} | {move.n_tensors} | | | | {decision} |")
            continue
        lines.append(f"| {move.label} | {move.n_tensors} | {r['kld']:.5f} | {_kld_change(r['kld'], b_kld)} "
                     f"| {100 * (r['size_bytes'] - b_size) / b_size:+.2f}% | {decision} |")
    if final_result:
        lines.append(f"| **final (stacked)** | | {final_result['kld']:.5f} | "
                     f"{_kld_change(final_result['kld'], b_kld)} | "
                     f"{100 * (final_result['size_bytes'] - b_size) / b_size:+.2f}% | |")
    return "\n".join(lines) + "\n"


class _BatchRunner:
    """Runs a list of labelled (partial) points as one Ray Tune experiment of the study run (a grid over the
    points), skipping maps already measured under this evaluation."""

    def __init__(self, run: StudyRun, key: _MapKeys):
        self.study_run, self.key = run, key

    def known(self) -> dict[str, dict[str, Any]]:
        """map digest -> stored complete row of this study under this evaluation."""
        return {row["map_hash"]: row for row in self.study_run.measured() if row["map_hash"]}

    def run(self, moves, phase: str) -> dict[str, dict[str, Any]]:
        known = self.known()
        todo = {}
        for move, point in moves:
            if self.key(point) not in known:
                todo.setdefault(self.key(point), (move, point))
        if todo:
            self.study_run.run_points([p for _, p in todo.values()], "ablation", phase,
                                      labels={_point_key(p): m.label for m, p in todo.values()})
            known = self.known()
        return {k: known[k] for k in (self.key(p) for _, p in moves) if k in known}


__all__ = ["Move", "decide", "group_moves", "run_ablation", "single_moves", "summary_table"]

__getattr__ = former_names(__name__, {"load_catalog": "cerebellum_ray.formats.catalog:load_catalog",
                                      "store": "cerebellum_ray.core.store", "Path": "pathlib:Path"})
