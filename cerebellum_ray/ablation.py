"""The model card's ablation procedure, automated.

Phases (each a batch of trials run in parallel on Ray Tune, every trial stored with a label):
  0. base        - the space's base map.
  1. groups      - every dimension moved alone, as a whole, to each candidate type.
  2. layers      - for a per-layer dimension whose group move to a cheaper type cost quality (a "mixed" result:
                   smaller but worse), each layer moved alone to that type.
  3. routers     - each router layer moved alone to each candidate (dimensions named "router*" are only tried
                   per layer: stacking router changes does not work, the card found).
  4. final       - the accepted moves stacked: every group or layer move that kept quality (mean KLD within 2
                   standard errors of the base, or better) while saving bytes, every promotion that improved KLD
                   by more than 2 standard errors, and the single best router move if it improved KLD.
Points already measured under the same evaluation are answered from the store (this also makes a rerun resume).
The summary table mirrors the card's: move, tensors, KLD change, size change, decision.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from . import store
from .catalog import load_catalog
from .ggml_types import TYPES
from .space import SearchSpace

TOLERANCE_SE = 2.0


@dataclass(frozen=True)
class Move:
    label: str
    kind: str  # "group", "layer", "router"
    dimension: str
    params: tuple[str, ...]
    type: str


def _point_key(point: Mapping[str, int]) -> str:
    return json.dumps(dict(sorted(point.items())))


def _with(space: SearchSpace, base: Mapping[str, int], params, type_name: str) -> dict[str, int] | None:
    point = dict(base)
    for p in params:
        dim = next(d for d in space.dimensions if d.param == p)
        if type_name not in dim.types:
            return None
        point[p] = dim.types.index(type_name)
    return point if point != dict(base) else None


def group_moves(space: SearchSpace, base: Mapping[str, int]) -> list[tuple[Move, dict[str, int]]]:
    out = []
    names = dict.fromkeys(d.dimension for d in space.dimensions)
    for name in names:
        dims = [d for d in space.dimensions if d.dimension == name]
        if name.startswith("router") and len(dims) > 1:
            continue
        for t in dims[0].types:
            point = _with(space, base, [d.param for d in dims], t)
            if point is not None:
                out.append((Move(f"group {name}={t}", "group", name, tuple(d.param for d in dims), t), point))
    return out


def single_moves(space: SearchSpace, base: Mapping[str, int], name: str, types, kind: str):
    out = []
    for d in (d for d in space.dimensions if d.dimension == name):
        for t in types:
            point = _with(space, base, [d.param], t)
            if point is not None:
                out.append((Move(f"{kind} {d.param}={t}", kind, name, (d.param,), t), point))
    return out


def run_ablation(opts):
    """Run the procedure as Ray Tune batches; returns a SearchResult (the summary is printed and stored)."""
    from .search import SearchResult, init_ray, prepare, trial_resources

    store_dir = Path(opts.store_dir).resolve()
    ctx = prepare(opts)
    cluster = init_ray(opts)
    resources = trial_resources(opts, cluster)
    space = ctx.space
    catalog = load_catalog(ctx.source)
    from .precision_map import resolve

    base_map = resolve(catalog, space.base)
    base = space.base_point(base_map)
    runner = _BatchRunner(ctx, opts, resources, store_dir)
    mixed = [d.param for d in space.dimensions if len({base_map.types[t] for t in d.tensors}) > 1]
    if mixed:
        # a per-group dimension whose tensors the preset gives different types (e.g. Q4_K_M's use_more_bits layers)
        # cannot hold the preset exactly: the ablation's base is then the space point nearest to the preset
        print(f"warning: the base preset {space.base.base} gives the tensors of {', '.join(mixed)} different types; "
              "the ablation starts from the nearest point of the space (make those dimensions per layer to start "
              "from the preset itself)", file=sys.stderr)

    results = runner.run([(Move("base", "base", "", (), ""), base)], "base")
    base_result = results[_point_key(base)]
    phase1 = group_moves(space, base)
    results.update(runner.run(phase1, "groups"))
    phase2 = []
    for move, point in phase1:
        r = results.get(_point_key(point))
        dims = [d for d in space.dimensions if d.dimension == move.dimension]
        if r and len(dims) > 1 and _cheaper(move, base_map, dims) and not _tolerated(r, base_result):
            phase2.extend(single_moves(space, base, move.dimension, [move.type], "layer"))
    results.update(runner.run(phase2, "layers"))
    routers = [name for name in dict.fromkeys(d.dimension for d in space.dimensions) if name.startswith("router")]
    phase3 = [m for name in routers for m in single_moves(
        space, base, name, next(d for d in space.dimensions if d.dimension == name).types, "router")]
    results.update(runner.run(phase3, "routers"))

    decisions, final_point = decide(space, base, base_map, base_result, phase1, phase2, phase3, results)
    if final_point != base:
        results.update(runner.run([(Move("final", "final", "", (), ""), final_point)], "final"))
    table = summary_table(decisions, base_result, results.get(_point_key(final_point)))
    (store_dir / f"{opts.study}-ablation.md").write_text(table)
    print(table)
    n = len({_point_key(p) for _, p in [(None, base)] + phase1 + phase2 + phase3})
    return SearchResult(opts.study, str(store_dir), str(store_dir / "_tune"), n, {})


def _cheaper(move: Move, base_map, dims) -> bool:
    current = base_map.types[dims[0].tensors[0]]
    return TYPES[move.type].bits_per_weight < TYPES[current].bits_per_weight


def _tolerated(r: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    se = max(r.get("kld_se") or 0.0, base.get("kld_se") or 0.0)
    return r["kld"] <= base["kld"] + TOLERANCE_SE * se


def _improves(r: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    se = max(r.get("kld_se") or 0.0, base.get("kld_se") or 0.0)
    return r["kld"] < base["kld"] - TOLERANCE_SE * se


def decide(space, base, base_map, base_result, phase1, phase2, phase3, results):
    """Keep-if-better: returns [(move, result, decision)] and the stacked final point.

    Per-layer results come first (a layer that tolerates a cheaper type gets it); kept group moves then fill the
    parameters still at their base value, best KLD first; routers contribute only their single best move.
    """
    decisions: dict[Move, tuple[Any, str]] = {}
    final = dict(base)
    layered = {m.dimension for m, _ in phase2}

    def result_of(point):
        r = results.get(_point_key(point))
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
        free = [p for p in move.params if final[p] == base[p]]
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


def summary_table(decisions, base_result, final_result) -> str:
    lines = ["| move | tensors | KLD | KLD change | size change | decision |", "|---|---:|---:|---:|---:|---|"]
    b_kld, b_size = base_result["kld"], base_result["size_bytes"]
    lines.append(f"| base (the space point nearest the base preset) | | {b_kld:.5f} | | | |")
    for move, r, decision in decisions:
        if r is None or r.get("kld") is None:
            lines.append(f"| {move.label} | {len(move.params)} | | | | {decision} |")
            continue
        lines.append(f"| {move.label} | {len(move.params)} | {r['kld']:.5f} | {100 * (r['kld'] - b_kld) / b_kld:+.1f}% "
                     f"| {100 * (r['size_bytes'] - b_size) / b_size:+.2f}% | {decision} |")
    if final_result:
        lines.append(f"| **final (stacked)** | | {final_result['kld']:.5f} | "
                     f"{100 * (final_result['kld'] - b_kld) / b_kld:+.1f}% | "
                     f"{100 * (final_result['size_bytes'] - b_size) / b_size:+.2f}% | |")
    return "\n".join(lines) + "\n"


class _BatchRunner:
    """Runs a list of labelled points as one Ray Tune experiment (grid over the points), skipping known ones."""

    def __init__(self, ctx, opts, resources, store_dir: Path):
        self.ctx, self.opts, self.resources, self.store_dir = ctx, opts, resources, store_dir

    def known(self) -> dict[str, dict[str, Any]]:
        out = {}
        for row in store.rows(self.store_dir, [self.ctx.study]):
            if row["status"] == "complete" and row["eval_hash"] == self.ctx.eval_hash and row["params"]:
                out[_point_key(json.loads(row["params"]))] = row
        return out

    def run(self, moves, phase: str) -> dict[str, dict[str, Any]]:
        from ray import tune

        from .search import _make_callbacks
        from .trial import ray_trainable

        known = self.known()
        todo = {}
        for move, point in moves:
            if _point_key(point) not in known:
                todo.setdefault(_point_key(point), (move, point))
        if todo:
            labels = {k: m.label for k, (m, _) in todo.items()}
            trainable = tune.with_resources(tune.with_parameters(ray_trainable, ctx=self.ctx), self.resources)
            name = f"{self.ctx.study}-{phase}-{int(time.time())}"
            tune.Tuner(
                trainable,
                param_space={"__point": tune.grid_search([p for _, p in todo.values()])},
                tune_config=tune.TuneConfig(reuse_actors=False),
                run_config=tune.RunConfig(
                    name=name, storage_path=self.opts.storage_path or str(self.store_dir / "_tune"),
                    callbacks=_make_callbacks(self.ctx, self.opts, "ablation", labels),
                    failure_config=tune.FailureConfig(max_failures=self.opts.max_failures), verbose=0),
            ).fit()
            known = self.known()
        return {k: known[k] for k in (_point_key(p) for _, p in moves) if k in known}
