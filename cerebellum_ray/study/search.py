"""The search driver: Optuna proposes points, Ray Tune runs them as trials, a driver-side callback stores them.

    space file + model ──► prepare() ──► TrialContext (reference computed once, shipped through the object store)
                                             │
    StudySearcher (OptunaSearch) ──suggest──► Tuner ──► ray_trainable (trial.py) on CPU or a GPU fraction
        ▲  duplicates answered from known results,            │ reports after every chunk
        │  infeasible (size) points told as infeasible        ▼
        └──────── on_trial_complete: COMPLETE | PRUNED ◄── stopper (dominated / ASHA) ── StoreCallback ─► store/

Resume: the Tune experiment lives in <store>/_tune/<study> and the Optuna study in <store>/_optuna/<study>.journal;
`--resume` restores both, so finished trials are neither lost nor run again.
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ..core import store
from ..formats.catalog import load_catalog
from .run import (  # noqa: F401  (SearchOptions, SearchResult, prepare, ... are this module's API too)
    SearchOptions, SearchResult, init_ray, make_callbacks, point_key, prepare, trial_resources, with_base,
)
# Tune experiments stored before search_runtime.py existed hold callbacks pickled with references to these names in
# this module (e.g. cerebellum_ray.search._RayMetrics): they stay importable from here so that `--resume` of such an
# experiment works (checked: an experiment started with the older code resumed with this one; tests/test_search.py).
from .run import (  # noqa: E402, F401
    _error_message, _make_progress_callback, _materialize, _RayMetrics, _versions, eval_text,
)
from .run import make_callbacks as _make_callbacks  # noqa: E402, F401
from ..formats.space import SearchSpace
from .trial import MAP_KEY, TrialContext, ray_trainable

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
    for row in store.rows(store_dir, list(studies)):
        if row["status"] != "complete" or row["eval_hash"] != ctx.eval_hash:
            continue
        if row.get("map"):
            catalog = catalog or load_catalog(ctx.source)
            point = ctx.space.point_of_map(catalog, dict(row["map"]))
        else:
            point = json.loads(row["params"]) if row["params"] else None
        if point is None or set(point) != params:
            continue
        metrics = {**row, "size": row["size_bytes"] / 1e9, "mc": row.get("mc_acc")}
        if all(metrics.get(o) is not None for o in ctx.space.objectives):
            out.append(({k: int(v) for k, v in point.items()}, [float(metrics[o]) for o in ctx.space.objectives]))
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
    """Objective values of every complete row with the same evaluation, by map hash (for duplicate proposals)."""
    out = {}
    for row in store.rows(store_dir, [study]):
        if row["status"] == "complete" and row["eval_hash"] == ctx.eval_hash and row["map_hash"]:
            metrics = {**row, "size": (row["size_bytes"] or 0) / 1e9, "mc": row.get("mc_acc")}
            try:
                out[row["map_hash"]] = [float(metrics[o]) for o in ctx.space.objectives]
            except (TypeError, KeyError):
                continue
    return out



def run_optuna(opts: SearchOptions, strategy: str = "optuna", predict=None) -> SearchResult:
    """Run (or resume) an Optuna study on Ray Tune; every finished trial lands in the store as a row of `strategy`.
    `predict`: point -> further columns of its row, computed when the point is proposed (the guided strategy's tail
    stores the surrogate's prediction this way)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    store_dir = Path(opts.store_dir).resolve()
    ctx = prepare(opts)
    cluster = init_ray(opts)
    resources = trial_resources(opts, cluster)
    space = ctx.space
    n_trials = opts.trials or space.trials
    journal = store_dir / "_optuna" / f"{opts.study}.journal"
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    seed = space.seed if opts.seed is None else opts.seed
    sampler = (optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, n_trials // 3)))
               if space.sampler == "nsga2" else optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(
                   4, n_trials // 4)))
    Searcher = _make_searcher_class()
    searcher = Searcher(ctx, known_results(str(store_dir), opts.study, ctx), predict=predict, sampler=sampler,
                        storage=storage, study_name=opts.study, seed=seed)
    storage_path = opts.storage_path or str(store_dir / "_tune")
    experiment = storage_path.rstrip("/") + "/" + opts.study  # also right for s3://bucket/path
    restoring = opts.resume and tune.Tuner.can_restore(experiment)
    if opts.warm_start and not restoring:
        seeds = warm_start_points(str(store_dir), opts.warm_start, ctx)
        add_finished_trials(searcher._ot_study, space, seeds)
        for point, values in seeds:
            searcher.known[space.map_for(load_catalog(ctx.source), point,
                                         has_imatrix=ctx.imatrix_path is not None).digest] = values
        print(f"warm start: {len(seeds)} finished trials from {', '.join(opts.warm_start)}", file=sys.stderr)
    from ray.tune.search import ConcurrencyLimiter

    concurrency = opts.max_concurrent or max(1, int(cluster.get("CPU", 1) // max(opts.cpus_per_trial, 0.01)))
    if resources["gpu"]:
        concurrency = min(concurrency, max(1, int(cluster.get("GPU", 0) / resources["gpu"])))
    quality = space.quality or "kld"
    scheduler, stopper = None, None
    if opts.scheduler == "asha":
        n_chunks = space.evaluation.chunks or 8
        scheduler = ASHAScheduler(metric=quality, mode="min", time_attr="chunks_done", max_t=n_chunks,
                                  grace_period=min(2, n_chunks), reduction_factor=3)
    elif opts.scheduler == "dominance":
        stopper = _make_dominance_stopper(space, _known_size_quality(space, searcher.known.values()))
    trainable = tune.with_resources(tune.with_parameters(ray_trainable, ctx=ctx), resources)
    callbacks = make_callbacks(ctx, opts, strategy, extra=searcher.extra)
    if restoring:
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, param_space=None)
        _restore_callbacks(tuner, callbacks)
    else:
        if tune.Tuner.can_restore(experiment) and not opts.resume:
            raise ValueError(f"study {opts.study!r} already has an experiment in {experiment}: pass --resume to "
                             "continue it, or choose another --study name")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                        num_samples=n_trials, scheduler=scheduler, reuse_actors=False),
            run_config=tune.RunConfig(name=opts.study, storage_path=storage_path, callbacks=callbacks, stop=stopper,
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures), verbose=0),
        )
    tuner.fit()
    return SearchResult(opts.study, str(store_dir), experiment, n_trials, dict(searcher.skipped))


def _restore_callbacks(tuner, callbacks) -> None:
    """Callbacks are not part of a Tune checkpoint: put ours back into the restored run config."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None:
        return
    run_config = internal._run_config
    run_config.callbacks = callbacks


def run_maps(opts: SearchOptions, specs: list[dict[str, Any]], strategy: str) -> SearchResult:
    """Score fixed maps (llama.cpp presets, a map file) under the space's evaluation, as reference rows."""
    from ray import tune

    store_dir = Path(opts.store_dir).resolve()
    ctx = prepare(opts)
    cluster = init_ray(opts)
    resources = trial_resources(opts, cluster)
    done = {r["label"] for r in store.rows(store_dir, [opts.study])
            if r["status"] == "complete" and r["eval_hash"] == ctx.eval_hash and r["strategy"] == strategy}
    todo = [s for s in specs if s["label"] not in done]
    if todo:
        trainable = tune.with_resources(tune.with_parameters(ray_trainable, ctx=ctx), resources)
        tune.Tuner(
            trainable, param_space={MAP_KEY: tune.grid_search(todo)},
            tune_config=tune.TuneConfig(reuse_actors=False),
            run_config=tune.RunConfig(name=f"{opts.study}-{strategy}-{int(time.time())}",
                                      storage_path=opts.storage_path or str(store_dir / "_tune"),
                                      callbacks=make_callbacks(ctx, opts, strategy),
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures), verbose=0),
        ).fit()
    return SearchResult(opts.study, str(store_dir), str(store_dir / "_tune"), len(specs), {"already stored": len(
        specs) - len(todo)})


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


def run_search(opts: SearchOptions) -> SearchResult:
    if opts.strategy == "presets":
        return run_maps(opts, preset_specs(opts.presets or DEFAULT_PRESETS), "preset")
    if opts.strategy == "fixed":
        if not opts.map_file:
            raise ValueError("--strategy fixed needs --map FILE (a precision map to evaluate)")
        return run_maps(opts, [map_file_spec(opts.map_file)], "fixed")
    if opts.strategy == "ablation":
        from .ablation import run_ablation

        return run_ablation(opts)
    if opts.strategy == "guided":
        from .guided import run_guided

        return run_guided(opts, run_optuna)  # its NSGA-II tail (passed in: guided.py does not import this module)
    return run_optuna(opts)
