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

import llama_cpp  # noqa: F401  (before numpy)

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from . import __version__, store
from .catalog import load_catalog
from .space import SearchSpace, load_space
from .trial import TrialContext, ray_trainable

log = logging.getLogger("cerebellum_ray.search")
PENALTY = 1e6  # objective value told to Optuna for a point that violates a constraint (never built)


@dataclass(frozen=True)
class SearchOptions:
    space_file: str
    source: str
    study: str
    store_dir: str
    strategy: str = "optuna"
    reference: str | None = None  # reference model; default: the source itself
    imatrix: str | None = None
    trials: int | None = None  # default: the space's search.trials
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    scheduler: str = "dominance"  # dominance | asha | none
    max_failures: int = 2
    resume: bool = False
    address: str | None = None
    storage_path: str | None = None  # Ray Tune experiment storage (shared FS or s3:// on a cluster)
    cache_dir: str | None = None
    seed: int | None = None
    verbose: bool = True
    num_cpus: int | None = None  # for a local Ray started by us
    num_gpus: float | None = None
    presets: tuple[str, ...] = ()  # strategy "presets": llama.cpp presets to score as reference points
    warm_start: tuple[str, ...] = ()  # studies (e.g. an ablation) whose results seed a new Optuna study
    map_file: str | None = None  # strategy "fixed": a precision map file to score
    base: str | None = None  # a llama.cpp preset replacing the space's base (e.g. an ablation from Q3_K_M)


# ---- preparation ---------------------------------------------------------------------------------------------------


def eval_text(space: SearchSpace) -> str:
    if space.evaluation.text:
        path = Path(space.evaluation.text)
        if not path.is_absolute():
            path = Path(space.source_file).parent / path
        return path.read_text()
    from .cli import default_text

    return default_text()


def prepare(opts: SearchOptions, work_dir: Path | None = None) -> TrialContext:
    """Validate the space against the model and compute the reference once (nothing runs if anything is wrong)."""
    from .reference import default_reference_dir, file_digest, load_reference, save_reference
    from .score import EvalSpec, compute_reference

    catalog = load_catalog(opts.source)
    space = load_space(opts.space_file, catalog)
    if opts.base:
        space = with_base(space, catalog, opts.base)
    text = eval_text(space)
    ev = space.evaluation
    spec = EvalSpec(text, n_ctx=ev.ctx, n_chunks=ev.chunks, top_k=ev.top_k)
    # KLD is always recorded (the reference pass runs once per study and is cached across studies)
    ref_model = opts.reference or opts.source
    digest = file_digest(ref_model, default_reference_dir() / "digests")
    key = hashlib.sha256(json.dumps([digest, hashlib.sha256(text.encode()).hexdigest(), ev.ctx, ev.chunks,
                                     ev.top_k]).encode()).hexdigest()
    cached = default_reference_dir() / f"search-{key}"
    if (cached / "meta.json").exists():
        reference = load_reference(cached)
    else:
        reference = compute_reference(ref_model, spec, model_digest=digest)
        save_reference(reference, cached)
    reference = _materialize(reference)
    eval_hash = hashlib.sha256(json.dumps([hashlib.sha256(text.encode()).hexdigest(), ev.ctx, ev.chunks, ev.top_k,
                                           ev.humaneval_limit, list(ev.mc),
                                           reference.key.digest]).encode()).hexdigest()
    return TrialContext(
        study=opts.study, source=str(Path(opts.source).resolve()), space=space, eval_text=text, eval_hash=eval_hash,
        reference=reference, imatrix_path=str(Path(opts.imatrix).resolve()) if opts.imatrix else None,
        cache_dir=opts.cache_dir, work_dir=str(work_dir) if work_dir else None,
        # one llama.cpp/quantizer thread per CPU granted: ggml's threads spin while waiting, so oversubscribed
        # trials slow each other down by an order of magnitude
        n_threads=max(1, int(opts.cpus_per_trial)),
        store_dir=str(Path(opts.store_dir).resolve()),
    )


def with_base(space: SearchSpace, catalog, preset: str) -> SearchSpace:
    """The space with `preset` as its base map (checked against the model now, before anything runs)."""
    from dataclasses import replace

    from .precision_map import MapSpec, resolve

    base = MapSpec(base=preset, fallback=space.base.fallback)
    resolve(catalog, base)  # an unknown preset, or one whose types the model's rows cannot take, fails here
    return replace(space, base=base)


def _materialize(ref):
    """Copy memory-mapped arrays so the reference pickles into Ray's object store."""
    import numpy as np

    from .logprobs import TopK
    from .reference import Reference

    t = ref.topk
    return Reference(ref.key, TopK(*(np.array(a) for a in (t.ids, t.logprobs, t.log_rest, t.target_logprob))),
                     ref.model_path, ref.ppl)


# ---- the Optuna searcher -------------------------------------------------------------------------------------------


def _make_searcher_class():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
        """OptunaSearch that (1) never runs a point that breaks a size constraint (told to Optuna as infeasible),
        (2) answers a duplicate map from results already known instead of running it again, (3) tells trials
        stopped early as PRUNED, never COMPLETE with partial values."""

        def __init__(self, ctx: TrialContext, known: Mapping[str, list[float]], **kwargs):
            space = ctx.space
            self.ctx = ctx
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
                pmap = self.ctx.space.map_for(catalog, point)
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
    from .precision_map import tensor_bytes

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


def _make_dominance_stopper(space: SearchSpace, min_chunks: int = 2):
    from ray.tune.stopper import Stopper

    quality = next((o for o in space.objectives if o in ("kld", "ppl")), None)

    class DominanceStopper(Stopper):
        """Stop a trial whose running quality is hopeless: a finished trial at most as large is better by more
        than 3 standard errors of the running estimate (checked after `min_chunks` chunks)."""

        def __init__(self):
            self.finished: list[tuple[float, float]] = []  # (size, quality)

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


# ---- driver-side callbacks ----------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"cerebellum-ray": __version__}
    for pkg in ("llama-cpp-python", "ray", "optuna", "gguf", "numpy", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _make_callbacks(ctx: TrialContext, opts: SearchOptions, strategy: str, labels: Mapping[str, str] | None = None):
    from ray import tune

    catalog = load_catalog(ctx.source)
    base_map = None  # the space's base map, resolved on first use
    versions = _versions()

    class StoreCallback(tune.Callback):
        """Append one row per finished trial to the store (the driver is the only writer)."""

        def __init__(self):
            self.started: dict[str, float] = {}
            self.metrics = _RayMetrics()

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.time()

        def _what(self, trial):
            """(params, label, map) of a trial: a point of the space, or a fixed map (presets, map files)."""
            if "__map" in trial.config:
                from .trial import map_from_spec

                spec = trial.config["__map"]
                return spec, spec.get("label"), map_from_spec(ctx, spec)
            source = trial.config["__point"] if "__point" in trial.config else trial.config
            point = {d.param: int(source[d.param]) for d in ctx.space.dimensions if d.param in source}
            pmap = ctx.space.map_for(catalog, point)
            return point, (labels or {}).get(json.dumps(point, sort_keys=True)), pmap

        def _row(self, trial, status: str, error: str | None = None) -> dict[str, Any]:
            params, label, pmap = self._what(trial)
            row: dict[str, Any] = {
                "study": ctx.study, "trial_id": trial.trial_id, "strategy": strategy, "status": status,
                "error": error, "params": params, "label": label, "eval_hash": ctx.eval_hash, "versions": versions,
                "started_at": self.started.get(trial.trial_id, time.time()), "finished_at": time.time(),
                "optuna_trial": trial.config.get("optuna_trial"), "gpus": opts.gpus_per_trial,
            }
            if pmap is not None:
                row.update(map=dict(pmap.types), map_hash=pmap.digest, n_changed=len(pmap.changed_from(_base_map())))
            result = trial.last_result or {}
            row.update({c: result[c] for c in store.SCHEMA.names if c in result and c not in row})
            return row

        def on_trial_complete(self, iteration, trials, trial, **info):
            if (trial.last_result or {}).get("from_store"):
                return  # stored before the driver died; the row is already there
            status = "complete" if (trial.last_result or {}).get("final") else "pruned"
            row = self._row(trial, status)
            store.append(opts.store_dir, row)
            self.metrics.record(row)

        def on_trial_error(self, iteration, trials, trial, **info):
            err = str(getattr(trial, "error_file", "") or "")
            message = _error_message(trial) or err
            store.append(opts.store_dir, self._row(trial, "failed", message))

    def _base_map():
        nonlocal base_map
        if base_map is None:
            from .precision_map import resolve

            base_map = resolve(catalog, ctx.space.base)
        return base_map

    callbacks = [StoreCallback()]
    if opts.verbose:
        callbacks.append(_make_progress_callback(ctx))
    return callbacks


def _error_message(trial) -> str:
    try:
        path = Path(trial.local_path) / "error.txt"
        text = path.read_text().strip().splitlines()
        return text[-1][:2000] if text else ""
    except Exception:
        return ""


class _RayMetrics:
    """Custom metrics in Ray's metrics system (Prometheus on each node's metrics port, prefixed ray_)."""

    def __init__(self):
        try:
            from ray.util.metrics import Counter, Gauge, Histogram

            self.finished = Counter("cerebellum_trials_finished", description="trials finished",
                                    tag_keys=("study", "status"))
            self.best_kld = Gauge("cerebellum_best_kld", description="best mean KLD so far", tag_keys=("study",))
            bounds = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]
            self.build_s = Histogram("cerebellum_build_seconds", boundaries=bounds, tag_keys=("study",))
            self.score_s = Histogram("cerebellum_score_seconds", boundaries=bounds, tag_keys=("study",))
            self.best = math.inf
        except Exception:  # pragma: no cover - metrics are best effort
            self.finished = None

    def record(self, row: Mapping[str, Any]) -> None:
        if self.finished is None:
            return
        tags = {"study": row["study"]}
        self.finished.inc(1, tags={**tags, "status": row["status"]})
        for name, hist in (("build_s", self.build_s), ("score_s", self.score_s)):
            if row.get(name) is not None:
                hist.observe(float(row[name]), tags=tags)
        if row["status"] == "complete" and row.get("kld") is not None and row["kld"] < self.best:
            self.best = row["kld"]
            self.best_kld.set(self.best, tags=tags)


def _make_progress_callback(ctx: TrialContext):
    from ray import tune

    class Progress(tune.Callback):
        """A live terminal view: one line per finished trial, a status line every 15 s."""

        def __init__(self):
            self.last = 0.0
            self.done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            now = time.time()
            if now - self.last > 15:
                self.last = now
                running = sum(t.status == "RUNNING" for t in trials)
                print(f"  [{time.strftime('%H:%M:%S')}] running {running}, finished {self.done}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            status = "complete" if r.get("final") else "pruned after {} chunks".format(r.get("chunks_done"))
            kld = f"kld {r['kld']:.4f}" if "kld" in r else ""
            print(f"  trial {trial.trial_id}: {status}, {r.get('bpw', float('nan')):.3f} bpw, {kld}, "
                  f"ppl {r.get('ppl', float('nan')):.3f}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            print(f"  trial {trial.trial_id}: failed ({_error_message(trial)})", flush=True)

    return Progress()


# ---- running ------------------------------------------------------------------------------------------------------


def init_ray(opts: SearchOptions) -> dict[str, float]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # save Tune's experiment state every 2 s, so that a killed driver loses (and re-runs) as little as possible
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if not ray.is_initialized():
        if opts.address:
            ray.init(address=opts.address, log_to_driver=False)
        else:
            # address="local": always a fresh local Ray, even if another one runs here (use --address auto for that)
            ray.init(address="local", num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, include_dashboard=None,
                     log_to_driver=False,
                     runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    return ray.cluster_resources()


def trial_resources(opts: SearchOptions, cluster: Mapping[str, float]) -> dict[str, float]:
    gpus = opts.gpus_per_trial
    if gpus and cluster.get("GPU", 0) <= 0:
        print(f"warning: --gpus-per-trial {gpus} but the cluster has no GPU: running CPU trials instead",
              file=sys.stderr)
        gpus = 0.0
    return {"cpu": opts.cpus_per_trial, "gpu": gpus}


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


@dataclass
class SearchResult:
    study: str
    store_dir: str
    experiment_path: str
    n_trials: int
    skipped: dict[str, int] = field(default_factory=dict)


def run_optuna(opts: SearchOptions) -> SearchResult:
    """Run (or resume) an Optuna study on Ray Tune; every finished trial lands in the store."""
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
    searcher = Searcher(ctx, known_results(str(store_dir), opts.study, ctx), sampler=sampler, storage=storage,
                        study_name=opts.study, seed=seed)
    if opts.warm_start and not opts.resume:
        seeds = warm_start_points(str(store_dir), opts.warm_start, ctx)
        add_finished_trials(searcher._ot_study, space, seeds)
        for point, values in seeds:
            searcher.known[space.map_for(load_catalog(ctx.source), point).digest] = values
        print(f"warm start: {len(seeds)} finished trials from {', '.join(opts.warm_start)}", file=sys.stderr)
    from ray.tune.search import ConcurrencyLimiter

    concurrency = opts.max_concurrent or max(1, int(cluster.get("CPU", 1) // max(opts.cpus_per_trial, 0.01)))
    if resources["gpu"]:
        concurrency = min(concurrency, max(1, int(cluster.get("GPU", 0) / resources["gpu"])))
    quality = next((o for o in space.objectives if o in ("kld", "ppl")), "kld")
    scheduler, stopper = None, None
    if opts.scheduler == "asha":
        n_chunks = space.evaluation.chunks or 8
        scheduler = ASHAScheduler(metric=quality, mode="min", time_attr="chunks_done", max_t=n_chunks,
                                  grace_period=min(2, n_chunks), reduction_factor=3)
    elif opts.scheduler == "dominance":
        stopper = _make_dominance_stopper(space)
    storage_path = opts.storage_path or str(store_dir / "_tune")
    experiment = storage_path.rstrip("/") + "/" + opts.study  # also right for s3://bucket/path
    trainable = tune.with_resources(tune.with_parameters(ray_trainable, ctx=ctx), resources)
    callbacks = _make_callbacks(ctx, opts, "optuna")
    if opts.resume and tune.Tuner.can_restore(experiment):
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
            trainable, param_space={"__map": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(reuse_actors=False),
            run_config=tune.RunConfig(name=f"{opts.study}-{strategy}-{int(time.time())}",
                                      storage_path=opts.storage_path or str(store_dir / "_tune"),
                                      callbacks=_make_callbacks(ctx, opts, strategy),
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures), verbose=0),
        ).fit()
    return SearchResult(opts.study, str(store_dir), str(store_dir / "_tune"), len(specs), {"already stored": len(
        specs) - len(todo)})


DEFAULT_PRESETS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def preset_specs(presets) -> list[dict[str, Any]]:
    return [{"label": p.upper(), "base": p.upper(), "rules": []} for p in presets]


def map_file_spec(path: str) -> dict[str, Any]:
    from .precision_map import load_spec

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
    return run_optuna(opts)
