"""The Optuna strategy: Optuna proposes points, Ray Tune runs them as trials, a driver-side callback stores them;
and the strategies that score fixed maps (llama.cpp presets, a map file).

    space file + model ──► StudyRun.prepare ──► TrialContext (reference computed once, shipped through the object store)
                                             │
    StudySearcher (OptunaSearch) ──suggest──► Tuner ──► ray_trainable (trial.py) on CPU or a GPU fraction
        ▲  duplicates answered from known results,            │ reports after every chunk
        │  infeasible (size) points told as infeasible        ▼
        └──────── on_trial_complete: COMPLETE | PRUNED ◄── stopper (dominated / ASHA) ── StoreCallback ─► store/

Objective values are the metric registry's (core.metrics): a trial reports every metric under its name, and a
stored row gives back the same vector (`metrics.objective_values`), so known results and warm starts match rows of
every objective (size, speed, mc, ...).

Resume: the Tune experiment lives in <store>/_tune/<study> and the Optuna study in <store>/_optuna/<study>.journal;
`--resume` restores both, so finished trials are neither lost nor run again.
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

import json
import logging
import sys
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ..core import metrics
from ..core.compat import former_names
from ..formats.catalog import load_catalog
from ..formats.space import SearchSpace
from .run import SearchOptions, SearchResult, StudyRun, measured_rows, point_key
from .trial import TrialContext

log = logging.getLogger("cerebellum_ray.search")
PENALTY = 1e6  # objective value told to Optuna for a point that violates a constraint (never built)


# ---- the Optuna searcher -------------------------------------------------------------------------------------------


def _make_searcher_class():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
        """OptunaSearch that (1) never runs a point that breaks a size constraint (told to Optuna as infeasible),
        (2) answers a duplicate map from results already known instead of running it again, (3) tells trials
        stopped early as PRUNED, never COMPLETE with partial values."""

        def __init__(self, ctx: TrialContext, known: Mapping[str, list[float]], predict=None, **kwargs):
            space = ctx.space
            self.ctx = ctx
            self.predict = predict  # point -> columns stored with its row (the guided strategy's predictions)
            self.extra: dict[str, dict] = {}
            self.known: dict[str, list[float]] = dict(known)
            self.point_hash: dict[str, str] = {}
            self.skipped = {"duplicate": 0, "infeasible": 0}
            distributions = {d.param: optuna.distributions.IntDistribution(0, len(d.types) - 1)
                             for d in space.dimensions}
            super().__init__(space=distributions, metric=list(space.objectives), mode=list(space.directions),
                             **kwargs)

        def suggest(self, trial_id: str):
            catalog = load_catalog(self.ctx.source)
            for _ in range(200):
                ot_trial = self._ot_study.ask(fixed_distributions=self._space)
                point = dict(ot_trial.params)
                pmap = self.ctx.space.map_for(catalog, point, has_imatrix=self.ctx.imatrix_path is not None)
                size = _map_size(catalog, pmap)
                over = _constraint_excess(self.ctx.space, size, catalog)
                if over > 0:
                    ot_trial.set_constraint("size", over)
                    self._ot_study.tell(ot_trial, [PENALTY if d == "min" else -PENALTY
                                                   for d in self.ctx.space.directions])
                    self.skipped["infeasible"] += 1
                    continue
                ot_trial.set_constraint("size", over)
                if pmap.digest in self.known:
                    self._ot_study.tell(ot_trial, self.known[pmap.digest])
                    self.skipped["duplicate"] += 1
                    continue
                self._ot_trials[trial_id] = ot_trial
                self.point_hash[trial_id] = pmap.digest
                if self.predict is not None:
                    self.extra[point_key(point)] = self.predict(point)
                return {**point, "optuna_trial": ot_trial.number}
            log.warning("200 proposals in a row were duplicates or infeasible: the space looks exhausted")
            return None

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            pass  # Optuna takes no intermediate values in multi-objective studies

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            state = optuna.trial.TrialState
            # after a resume the pickled trial may already be finished in the (persistent) study
            current = self._ot_study._storage.get_trial(ot_trial._trial_id).state
            if current.is_finished():
                self._completed_trials.add(trial_id)
                return
            if error:
                self._ot_study.tell(ot_trial, state=state.FAIL)
            elif result and result.get("final"):
                values = [float(result[o]) for o in self.ctx.space.objectives]
                self._ot_study.tell(ot_trial, values)
                self.known[self.point_hash.get(trial_id, "")] = values
            else:
                self._ot_study.tell(ot_trial, state=state.PRUNED)
            self._completed_trials.add(trial_id)

    return StudySearcher


def _map_size(catalog, pmap) -> int:
    from ..formats.precision_map import tensor_bytes

    return tensor_bytes(catalog, pmap)


def _constraint_excess(space: SearchSpace, tensor_bytes_: int, catalog) -> float:
    """How far a map is over the space's limits (<= 0: feasible). The size check uses tensor bytes; the header
    adds well under 1 MB on real models."""
    excess = -1.0
    if space.max_size is not None:
        excess = max(excess, (tensor_bytes_ - space.max_size) / space.max_size)
    if space.max_bpw is not None:
        bpw = 8.0 * tensor_bytes_ / catalog.n_elements
        excess = max(excess, (bpw - space.max_bpw) / space.max_bpw)
    return excess


def warm_start_points(store_dir: str, studies, ctx: TrialContext) -> list[tuple[dict[str, int], list[float]]]:
    """(point, objective values) of the complete trials of `studies` measured under this evaluation whose map is
    a point of this space (read from the stored map; an ablation step relative to a preset whose types vary within
    a dimension is not, and is left out)."""
    params = {d.param for d in ctx.space.dimensions}
    catalog = None
    out = []
    for row in measured_rows(store_dir, list(studies), ctx.eval_hash):
        if row.get("map"):
            catalog = catalog or load_catalog(ctx.source)
            point = ctx.space.point_of_map(catalog, dict(row["map"]))
        else:
            point = json.loads(row["params"]) if row["params"] else None
        if point is None or set(point) != params:
            continue
        values = metrics.objective_values(row, ctx.space.objectives)
        if values is not None:
            out.append(({k: int(v) for k, v in point.items()}, values))
    return out


def add_finished_trials(study, space: SearchSpace, points: list[tuple[Mapping[str, int], list[float]]]) -> int:
    """Warm-start: add already measured points (e.g. from ablation) as finished multi-objective trials."""
    import optuna

    dists = {d.param: optuna.distributions.IntDistribution(0, len(d.types) - 1) for d in space.dimensions}
    for point, values in points:
        study.add_trial(optuna.trial.create_trial(params=dict(point), distributions=dists, values=list(values)))
    return len(points)


# ---- early stopping -----------------------------------------------------------------------------------------------


def _make_dominance_stopper(space: SearchSpace, finished=(), min_chunks: int = 2):
    """The default early stopping (see DominanceStopper); `finished` seeds it with (size in GB, quality) of results
    already known under this evaluation (this study's stored rows, warm-start rows)."""
    from ray.tune.stopper import Stopper

    quality = space.quality

    class DominanceStopper(Stopper):
        """Stop a trial whose running quality is hopeless: a finished trial at most as large is better by more
        than 3 standard errors of the running estimate (checked after `min_chunks` chunks)."""

        def __init__(self):
            self.finished: list[tuple[float, float]] = list(finished)  # (size, quality)

        def __call__(self, trial_id: str, result: dict) -> bool:
            if quality is None:
                return False
            if result.get("final"):
                self.finished.append((result["size"], result[quality]))
                return False
            if result.get("chunks_done", 0) < min_chunks:
                return False
            q, se = result[quality], result.get(f"{quality}_se") or 0.0
            return any(size <= result["size"] and fq < q - 3 * se for size, fq in self.finished)

        def stop_all(self) -> bool:
            return False

    return DominanceStopper()


def _known_size_quality(space: SearchSpace, values) -> list[tuple[float, float]]:
    """(size in GB, KLD or PPL) of known objective vectors, for seeding the dominance stopper."""
    quality = space.quality
    if quality is None or "size" not in space.objectives:
        return []
    i_size, i_quality = space.objectives.index("size"), space.objectives.index(quality)
    return [(v[i_size], v[i_quality]) for v in values]


def known_results(store_dir: str, study: str, ctx: TrialContext) -> dict[str, list[float]]:
    """Objective values of every complete row of the study with the same evaluation, by map hash (duplicate
    proposals are answered from them). A row without every objective (stored before one was measured) cannot
    answer and is counted in a warning."""
    out, lacking = {}, 0
    for row in measured_rows(store_dir, [study], ctx.eval_hash):
        values = metrics.objective_values(row, ctx.space.objectives)
        if values is None:
            lacking += 1
        elif row["map_hash"]:
            out[row["map_hash"]] = values
    if lacking:
        log.warning("%d complete rows of study %s lack one of the objectives %s: they are not known results",
                    lacking, study, ", ".join(ctx.space.objectives))
    return out


def run_optuna(opts: SearchOptions, strategy: str = "optuna", predict=None) -> SearchResult:
    """Prepare the study and run (or resume) it with Optuna: see optuna_search."""
    return optuna_search(StudyRun.prepare(opts), strategy, predict)


def optuna_search(run: StudyRun, strategy: str = "optuna", predict=None) -> SearchResult:
    """Run (or resume) an Optuna study on Ray Tune; every finished trial lands in the store as a row of `strategy`.
    `predict`: point -> further columns of its row, computed when the point is proposed (the guided strategy's tail
    stores the surrogate's prediction this way)."""
    space, opts = run.space, run.opts
    n_trials = run.n_trials
    seed = space.seed if opts.seed is None else opts.seed
    searcher = _make_searcher_class()(run.ctx, known_results(str(run.store_dir), run.study, run.ctx),
                                      predict=predict, sampler=_sampler(space, n_trials, seed),
                                      storage=_journal(run), study_name=run.study, seed=seed)
    restoring = opts.resume and run.can_restore()
    if opts.warm_start and not restoring:
        _warm_start(run, searcher)
    callbacks = run.callbacks(strategy, extra=searcher.extra)
    if restoring:
        tuner = run.restored_tuner(callbacks)
    else:
        scheduler, stopper = _early_stopping(run, searcher.known.values())
        tuner = run.search_tuner(searcher, callbacks, n_trials, scheduler=scheduler, stop=stopper)
    run.fit(tuner)
    return run.result(n_trials, searcher.skipped, experiment=run.experiment_path())


def _journal(run: StudyRun):
    """The study's Optuna storage: a journal file beside the store's rows (<store>/_optuna/<study>.journal)."""
    import optuna

    journal = run.store_dir / "_optuna" / f"{run.study}.journal"
    journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def _sampler(space: SearchSpace, n_trials: int, seed: int):
    import optuna

    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, n_trials // 3)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, n_trials // 4))


def _warm_start(run: StudyRun, searcher) -> None:
    """Seed a new Optuna study with the measured points of the --warm-start studies (also known results)."""
    seeds = warm_start_points(str(run.store_dir), run.opts.warm_start, run.ctx)
    add_finished_trials(searcher._ot_study, run.space, seeds)
    for point, values in seeds:
        searcher.known[run.map_of(point).digest] = values
    print(f"warm start: {len(seeds)} finished trials from {', '.join(run.opts.warm_start)}", file=sys.stderr)


def _early_stopping(run: StudyRun, known_values):
    """(scheduler, stopper) for --scheduler: ASHA on the running quality, the dominance stopper seeded with the
    known results, or neither."""
    space = run.space
    if run.opts.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        quality = space.quality or "kld"
        n_chunks = space.evaluation.chunks or 8
        return ASHAScheduler(metric=quality, mode=metrics.metric(quality).direction, time_attr="chunks_done",
                             max_t=n_chunks, grace_period=min(2, n_chunks), reduction_factor=3), None
    if run.opts.scheduler == "dominance":
        return None, _make_dominance_stopper(space, _known_size_quality(space, known_values))
    return None, None


# ---- the strategies that score fixed maps -------------------------------------------------------------------------


DEFAULT_PRESETS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def preset_specs(presets) -> list[dict[str, Any]]:
    return [{"label": p.upper(), "base": p.upper(), "rules": []} for p in presets]


def map_file_spec(path: str) -> dict[str, Any]:
    from ..formats.precision_map import load_spec

    spec = load_spec(path)
    if spec.like:
        raise ValueError(f"{path}: a fixed map for the search must use `base:`, not `like:`")
    return {"label": Path(path).stem, "base": spec.base, "fallback": spec.fallback,
            "rules": [[r.pattern, r.type] for r in spec.rules]}


def run_presets(run: StudyRun) -> SearchResult:
    """Score llama.cpp presets (--presets, default DEFAULT_PRESETS) as reference rows."""
    return run.run_maps(preset_specs(run.opts.presets or DEFAULT_PRESETS), "preset")


def check_fixed(opts: SearchOptions) -> None:
    if not opts.map_file:
        raise ValueError("--strategy fixed needs --map FILE (a precision map to evaluate)")


def run_fixed(run: StudyRun) -> SearchResult:
    """Score one precision map file (--map) as a reference row."""
    check_fixed(run.opts)
    return run.run_maps([map_file_spec(run.opts.map_file)], "fixed")


def run_maps(opts: SearchOptions, specs: list[dict[str, Any]], strategy: str) -> SearchResult:
    """StudyRun.prepare(opts).run_maps(specs, strategy) (older callers)."""
    return StudyRun.prepare(opts).run_maps(specs, strategy)


__all__ = ["DEFAULT_PRESETS", "PENALTY", "add_finished_trials", "check_fixed", "known_results", "map_file_spec",
           "optuna_search", "preset_specs", "run_fixed", "run_optuna", "run_presets", "warm_start_points"]

# Names this module had before the strategy registry and the study run: pickled Tune experiments (callbacks,
# searchers) and older imports name them here.
__getattr__ = former_names(__name__, {
    **{name: f"cerebellum_ray.study.run:{name}" for name in (
        "_RayMetrics", "_error_message", "_make_progress_callback", "_materialize", "_versions", "eval_text",
        "init_ray", "make_callbacks", "prepare", "trial_resources", "with_base")},
    "_make_callbacks": "cerebellum_ray.study.run:make_callbacks",
    "_restore_callbacks": "cerebellum_ray.study.run:restore_callbacks",
    "MAP_KEY": "cerebellum_ray.study.trial:MAP_KEY",
    "ray_trainable": "cerebellum_ray.study.trial:ray_trainable",
    "run_search": "cerebellum_ray.study.strategies:run_search",
    "store": "cerebellum_ray.core.store",
})
