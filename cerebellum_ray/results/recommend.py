"""`solve`: the best map a study's rows predict for a size budget, with no new trial; `--verify` measures it.

    store rows of the study (+ --warm-start studies) ──► guided.fit_study (prior + surrogate)
    budget (--max-bpw | --max-gb | --vram-gb with --context) ──► tensor bytes ──► solver.Solver (exact)
    ──► the map, its exact file size, the predicted KLD with its standard error, and the row that measured exactly
        this map under the study's evaluation (if any); --verify: one trial of it, stored as strategy "solve".
    ──► the answer: the better of the prediction (or its verification) and the best row measured under the same
        budget, with the difference and its standard error: solve never recommends a map worse than one it has.

The map is the least predicted mean KLD on the study's text, or with `metric="kld_code"` on its code corpus (a
study scored with evaluation.code); the other KLD and the PPL are predicted beside it by their own fits.

The study's space, source and imatrix come from <store>/_studies/<study>.json (written by every search), or from
--space/--source for a study stored before those records existed; a --source or --imatrix whose digest differs from
the study's is refused (results.inputs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core import store
from ..core.compat import former_names
from ..core.errors import CerebellumError

MEASURED_COLUMNS = ("kld", "kld_se", "ppl", "ppl_se", "kld_code", "kld_code_se", "humaneval", "mc_acc", "same_top")
SOLVE_METRICS = ("kld", "kld_code")  # what a map can be solved for


class SolveError(CerebellumError):
    """A budget or study that `solve` cannot answer; the message names the budget, the study and the fix."""


@dataclass(frozen=True)
class Budget:
    file_bytes: int | None  # a limit on the whole file (--max-gb, --vram-gb)
    bpw: float | None  # a limit on bits per weight of the tensor data (--max-bpw)
    text: str  # as the user gave it, for messages


@dataclass(frozen=True)
class SolveResult:
    study: str
    budget: str
    point: Mapping[str, int]
    choices: Mapping[str, str]  # param -> type
    map: Mapping[str, str]  # every tensor -> type (loadable by `build --map`)
    size_bytes: int  # the file build/export writes (one file, 32-byte alignment)
    tensor_bytes: int
    bpw: float
    predicted: Mapping[str, float]  # kld, kld_se (and kld_code, kld_code_se, ppl, ppl_se where the rows have them)
    measured: Mapping[str, float | None] | None  # the stored row of exactly this map, or None
    measured_trial: str | None
    fit: Mapping[str, Any]  # rows, leave-one-out Spearman and relative RMSE, interactions
    seconds: float
    verified: Mapping[str, Any] | None = field(default=None)
    metric: str = "kld"  # what the map minimizes under the budget
    best_measured: Mapping[str, Any] | None = field(default=None)  # the best stored row under the budget

    @property
    def answer(self) -> dict[str, Any]:
        """What solve recommends: the solved map (as predicted, or as --verify measured it) or the best row already
        measured under the budget, whichever has the lower metric (a measured row wins a tie), with the other and
        the difference +/- its standard error (the two SEs combined: an upper bound, both are scored on the same
        tokens)."""
        return choose_answer(self)

    def as_dict(self) -> dict[str, Any]:
        best = None if self.best_measured is None else {k: v for k, v in self.best_measured.items() if k != "map"}
        return {"study": self.study, "budget": self.budget, "metric": self.metric, "map": dict(self.map),
                "bpw": self.bpw,
                "size_bytes": self.size_bytes, "tensor_bytes": self.tensor_bytes, "point": dict(self.point),
                "choices": dict(self.choices), "predicted": dict(self.predicted),
                "measured": None if self.measured is None else dict(self.measured),
                "measured_trial": self.measured_trial, "fit": dict(self.fit), "seconds": round(self.seconds, 3),
                "verified": None if self.verified is None else dict(self.verified),
                "best_measured": best, "answer": self.answer}


def choose_answer(result: SolveResult) -> dict[str, Any]:
    """See SolveResult.answer."""
    m = result.metric
    if result.verified is not None and result.verified.get(m) is not None:
        solved = {"from": "verified", "trial_id": result.verified["trial_id"], "value": result.verified[m],
                  "se": result.verified.get(f"{m}_se")}
    elif result.measured is not None and result.measured.get(m) is not None:
        solved = {"from": "measured", "trial_id": result.measured_trial, "value": result.measured[m],
                  "se": result.measured.get(f"{m}_se")}
    else:
        solved = {"from": "solved", "trial_id": None, "value": result.predicted[m], "se": result.predicted[f"{m}_se"]}
    solved.update(map=dict(result.map), size_bytes=result.size_bytes, bpw=result.bpw, label=None)
    best = result.best_measured
    if best is None or best["trial_id"] == solved["trial_id"]:
        return {**solved, "metric": m, "versus": None}
    other = {"from": "measured", "trial_id": best["trial_id"], "value": best[m], "se": best.get(f"{m}_se"),
             "map": dict(best["map"]), "size_bytes": best["size_bytes"], "bpw": best["bpw"], "label": best.get("label")}
    winner, loser = (other, solved) if other["value"] <= solved["value"] else (solved, other)
    difference = loser["value"] - winner["value"]
    versus = {"from": loser["from"], "trial_id": loser["trial_id"], "value": loser["value"], "se": loser["se"],
              "size_bytes": loser["size_bytes"], "bpw": loser["bpw"], "label": loser["label"],
              "better_by": difference, "better_by_se": math.hypot(winner["se"] or 0.0, loser["se"] or 0.0)}
    return {**winner, "metric": m, "versus": versus}


def make_budget(max_bpw: float | None = None, max_gb: float | None = None, vram_gb: float | None = None,
                context: int | None = None, catalog=None) -> Budget:
    """Exactly one budget: bits per weight, a file size in GB (10**9 bytes), or what fits `vram_gb` of VRAM with
    the F16 KV cache of `context` tokens and a 5 % allowance (the space's `constraints.vram` rule)."""
    given = [x for x in (max_bpw, max_gb, vram_gb) if x is not None]
    if len(given) != 1:
        raise SolveError("give one budget: --max-bpw X, --max-gb X, or --vram-gb X --context N")
    if (vram_gb is None) != (context is None):
        raise SolveError("--vram-gb and --context go together (the KV cache of the context needs room too)")
    if given[0] <= 0:
        raise SolveError(f"the budget must be positive, got {given[0]}")
    if max_bpw is not None:
        return Budget(None, float(max_bpw), f"{max_bpw} bits per weight")
    if max_gb is not None:
        return Budget(int(max_gb * 1e9), None, f"{max_gb} GB")
    from ..formats.space import SpaceError, vram_budget

    try:
        file_bytes = vram_budget({"gb": vram_gb, "context": context}, catalog, None)
    except SpaceError as exc:
        raise SolveError(str(exc)) from None
    if file_bytes <= 0:
        raise SolveError(f"{vram_gb} GB of VRAM leave nothing for the model after the KV cache of {context} tokens")
    return Budget(file_bytes, None, f"{vram_gb} GB of VRAM with a {context}-token context")


def _study_record(store_dir, study: str, space_file: str | None, source: str | None, imatrix: str | None = None):
    """The study's record, its source and imatrix found and checked by digest (results.inputs: another --source or
    --imatrix must have the digest the study's trials were built with); --space and --source replace its space and
    source (and stand in for a record that an older study lacks)."""
    from ..study.run import StudyRecord
    from .inputs import measured_inputs

    if space_file and source:
        try:
            record = replace(StudyRecord.load(store_dir, study), space_file=space_file, source=source)
        except CerebellumError:
            record = StudyRecord(study=study, space_file=space_file, source=source)
    else:
        record = StudyRecord.load(store_dir, study)
        if space_file:
            record = replace(record, space_file=space_file)
    inputs = measured_inputs(store_dir, study, source=source, imatrix=imatrix, cache_dir=record.cache_dir)
    return replace(record, source=inputs.source, imatrix=inputs.imatrix_path)


def _fit_summary(model) -> dict[str, Any]:
    s = model.surrogate
    return {"rows": model.n_rows, "rows_skipped": model.n_skipped,
            "loo_spearman": round(s.quality.loo_spearman, 4), "loo_rel_rmse": round(s.quality.loo_rel_rmse, 4),
            "interactions": [list(p) for p in s.interactions]}


def solve_study(store_dir: str, study: str, budget: Budget, *, space_file: str | None = None,
                source: str | None = None, warm_start: Sequence[str] = (), metric: str = "kld",
                imatrix: str | None = None) -> SolveResult:
    """The surrogate's best map of the study's space under `budget`, by predicted `metric` (see the module
    docstring)."""
    if metric not in SOLVE_METRICS:
        raise SolveError(f"--metric {metric}: solve minimizes {' or '.join(SOLVE_METRICS)}")
    from ..quant.build import predicted_file_size
    from ..study.guided import fit_study, require_kld_objective, study_prior
    from ..formats.precision_map import tensor_bytes
    from ..predict.solver import Solver, SolverError

    started = time.perf_counter()
    record = _study_record(store_dir, study, space_file, source, imatrix)
    catalog, space = record.open_space()
    require_kld_objective(space)
    has_imatrix = bool(record.imatrix)
    prior = study_prior(space, catalog, record.source, record.imatrix, record.cache_dir)
    rows = store.rows(store_dir, [study, *warm_start])
    if not any(r["study"] == study for r in rows):
        raise SolveError(f"{store_dir}: study {study!r} has no rows")
    eval_hash = record.eval_hash or _most_common(r["eval_hash"] for r in rows if r["study"] == study)
    model = fit_study(prior, rows, eval_hash, metric)
    if model.surrogate is None:
        code = " (kld_code needs a study scored on code: evaluation.code, or kld_code among its objectives)"
        raise SolveError(f"study {study!r}: {model.n_rows} of its rows are maps of this space with a {metric}; a "
                         "surrogate needs at least 3: run more trials (search --strategy guided)"
                         + (code if metric == "kld_code" else ""))
    problem = model.surrogate.problem()
    solver = Solver(problem)
    imatrix = None
    if has_imatrix:
        from ..formats.imatrix import load_imatrix

        imatrix = load_imatrix(record.imatrix)

    def solved(limit: int):
        try:
            sol = solver.solve(limit)
        except SolverError as exc:
            raise SolveError(f"budget {budget.text}: {exc}") from None
        pmap = space.map_for(catalog, sol.point, has_imatrix=has_imatrix)
        return sol, pmap, predicted_file_size(record.source, pmap, imatrix)

    if budget.bpw is not None:
        sol, pmap, size = solved(prior.table.bytes_for_bpw(budget.bpw))
    else:  # a file budget: tensor bytes = file bytes - header and padding (known once a map is chosen)
        limit = budget.file_bytes - (predicted_file_size(record.source, space.map_for(
            catalog, {}, has_imatrix=has_imatrix), imatrix) - prior.table.size_of({}))
        for _ in range(4):
            sol, pmap, size = solved(limit)
            if size <= budget.file_bytes:
                break
            limit -= size - budget.file_bytes
        else:
            raise SolveError(f"budget {budget.text}: no map's file fits ({size} bytes for the best under it)")
    n_bytes = tensor_bytes(catalog, pmap)
    if n_bytes != sol.size_bytes:
        raise AssertionError(f"solver size {sol.size_bytes} != the map's tensor bytes {n_bytes}")
    mean, se = model.surrogate.predict([sol.point])
    predicted = {metric: float(mean[0]), f"{metric}_se": float(se[0])}
    for other in ("kld", "kld_code", "nll"):
        if other != metric:
            predicted.update(_predicted_other(prior, rows, eval_hash, sol.point, other))
    measured_row = _measured(rows, study, pmap.digest, eval_hash)
    return SolveResult(
        study=study, budget=budget.text, point=dict(sol.point), choices=dict(sol.choices), map=dict(pmap.types),
        size_bytes=size, tensor_bytes=n_bytes, bpw=8.0 * n_bytes / catalog.n_elements,
        predicted=predicted,
        measured=None if measured_row is None else {c: measured_row.get(c) for c in MEASURED_COLUMNS},
        measured_trial=None if measured_row is None else measured_row["trial_id"],
        fit=_fit_summary(model), seconds=time.perf_counter() - started, metric=metric,
        best_measured=best_measured(rows, eval_hash, budget, metric))


def best_measured(rows, eval_hash: str | None, budget: Budget, metric: str = "kld") -> dict[str, Any] | None:
    """The stored row with the lowest `metric` whose map fits `budget` (bits per weight, or the file's size), among
    complete rows of the evaluation `eval_hash` (presets and every strategy alike); None when none fits."""
    fitting = [r for r in rows if r["status"] == "complete" and r.get("map") and r.get(metric) is not None
               and (eval_hash is None or r["eval_hash"] == eval_hash) and _fits(r, budget)]
    if not fitting:
        return None
    row = min(fitting, key=lambda r: (r[metric], r["size_bytes"]))
    keep = ("study", "trial_id", "label", "strategy", "bpw", "size_bytes", *MEASURED_COLUMNS, "kld_code_se", "map")
    return {k: row.get(k) for k in dict.fromkeys(keep)}


def _fits(row: Mapping[str, Any], budget: Budget) -> bool:
    if budget.bpw is not None:
        return row.get("bpw") is not None and row["bpw"] <= budget.bpw
    return row.get("size_bytes") is not None and row["size_bytes"] <= budget.file_bytes


def _predicted_other(prior, rows, eval_hash: str | None, point, metric: str) -> dict[str, float]:
    """A metric the map was not chosen by (the other KLD, or PPL from a fit on ln PPL: mean NLL per token is
    additive in the same first-order sense as KLD), from its own fit of the same model class; {} when fewer than
    3 rows carry it."""
    from ..predict.surrogate import MIN_ROWS, fit_surrogate, observations_from_rows

    obs, _ = observations_from_rows(prior.table, rows, eval_hash=eval_hash, metric=metric)
    if len(obs) < MIN_ROWS:
        return {}
    mean, se = fit_surrogate(prior.table, obs, prior).predict([point])
    if metric != "nll":
        return {metric: float(mean[0]), f"{metric}_se": float(se[0])}
    ppl = math.exp(float(mean[0]))
    return {"ppl": ppl, "ppl_se": ppl * float(se[0])}


def _most_common(values) -> str | None:
    from collections import Counter

    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def _measured(rows, study: str, digest: str, eval_hash: str | None) -> dict[str, Any] | None:
    hits = [r for r in rows if r["status"] == "complete" and r["map_hash"] == digest
            and (eval_hash is None or r["eval_hash"] == eval_hash) and r.get("kld") is not None]
    hits.sort(key=lambda r: (r["study"] != study, str(r["finished_at"])))
    return hits[0] if hits else None


def verify_solution(store_dir: str, result: SolveResult, *, space_file: str | None = None,
                    source: str | None = None, num_cpus: int | None = None, cpus_per_trial: float = 1.0,
                    gpus_per_trial: float = 0.0, imatrix: str | None = None) -> dict[str, Any]:
    """Measure the solved map as one trial of the study (strategy "solve", phase "verify", its prediction stored
    with it), built from the study's source and imatrix (checked by digest); returns the new row."""
    from ..study.run import StudyRun, point_key

    record = _study_record(store_dir, result.study, space_file, source, imatrix)
    opts = record.options(store_dir, strategy="solve", num_cpus=num_cpus, cpus_per_trial=cpus_per_trial,
                          gpus_per_trial=gpus_per_trial, verbose=False)
    before = {r["trial_id"] for r in store.rows(store_dir, [result.study])}
    run = StudyRun.prepare(opts)
    if record.eval_hash and run.ctx.eval_hash != record.eval_hash:
        raise SolveError(f"study {result.study!r}: its evaluation changed since it ran (the space file or the text "
                         "was edited): a verified row would not be comparable")
    key = point_key(result.point)
    predicted = ({"predicted_kld": result.predicted["kld"], "predicted_kld_se": result.predicted["kld_se"]}
                 if "kld" in result.predicted else {})  # the text KLD's prediction (store column predicted_kld)
    run.run_points([result.point], "solve", "verify",
                   labels={key: f"solve {result.budget}" + (f" by {result.metric}" if result.metric != "kld" else "")},
                   extra={key: {"phase": "verify", **predicted}})
    new = [r for r in store.rows(store_dir, [result.study]) if r["trial_id"] not in before]
    if len(new) != 1:
        raise SolveError(f"the verifying trial left {len(new)} rows; see the Ray Tune logs under "
                         f"{Path(store_dir) / '_tune'}")
    return new[0]


def within(result_predicted: Mapping[str, float], measured: float, n_se: float = 2.0, metric: str = "kld") -> bool:
    """Whether a measured value of `metric` lies within n_se predicted standard errors of its prediction."""
    return abs(measured - result_predicted[metric]) <= n_se * result_predicted[f"{metric}_se"]


__all__ = ["Budget", "SOLVE_METRICS", "SolveError", "SolveResult", "best_measured", "choose_answer", "make_budget",
           "solve_study", "verify_solution", "within"]

__getattr__ = former_names(__name__, {"_study_inputs": "cerebellum_ray.results.recommend:_study_record"})
