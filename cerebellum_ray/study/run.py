"""What every search strategy shares: the study's preparation, Ray, trial resources and the driver-side callbacks.

    prepare()  space validated against the model, imatrix checked, reference computed once -> TrialContext
    init_ray() a local Ray (or the cluster at --address) -> its resources -> trial_resources()
    make_callbacks()  StoreCallback (the store's only writer: one row per finished trial) + live progress lines

The Optuna driver (search.py) and the ablation procedure (ablation.py) both build on this module; neither imports
the other's internals.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from .. import __version__
from ..core import store
from ..formats.catalog import load_catalog
from ..formats.space import SearchSpace, SpaceError, load_space
from .trial import MAP_KEY, POINT_KEY, TrialContext

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
    from ..evaluate.corpus import default_text

    return default_text()


def prepare(opts: SearchOptions, work_dir: Path | None = None) -> TrialContext:
    """Validate the space against the model and compute the reference once (nothing runs if anything is wrong)."""
    from ..formats.gguf_io import model_digest
    from ..evaluate.reference import default_reference_dir

    catalog = load_catalog(opts.source)
    space = load_space(opts.space_file, catalog)
    if opts.base:
        space = with_base(space, catalog, opts.base)
    if opts.trials is not None and opts.trials < 1:
        raise SpaceError(f"--trials must be at least 1, got {opts.trials}")
    if not opts.imatrix and space.imatrix is not None:  # --imatrix overrides the space's
        opts = replace(opts, imatrix=str(space_imatrix(space, opts)))
    if opts.imatrix:
        from ..quant.build import check_imatrix_fits
        from ..formats.imatrix import load_imatrix

        check_imatrix_fits(catalog, load_imatrix(opts.imatrix), opts.imatrix)
    text = eval_text(space)
    ev = space.evaluation
    from ..evaluate.tasks import load_choice_items

    mc_items = tuple(item for path in ev.mc for item in load_choice_items(path))  # read here, shipped to workers
    # KLD is always recorded (the reference pass runs once per study and is cached across studies)
    ref_model = opts.reference or opts.source
    digest = model_digest(ref_model, default_reference_dir() / "digests")
    chat = None
    if getattr(ev, "chat_text", None):
        from ..evaluate.chat import load_conversations

        chat = load_conversations(ev.chat_text)
    if ev.reference_logits:
        space, reference = _llama_file_reference(space)
        ev = space.evaluation
    else:
        reference = _study_reference(ref_model, digest, text, ev, chat)
    code_text = code_reference = None
    if getattr(ev, "code", False):
        from ..evaluate.corpus import default_code_text

        code_text = Path(ev.code_text).read_text(encoding="utf-8") if ev.code_text else default_code_text()
        code_reference = _study_reference(ref_model, digest, code_text, ev)
    eval_hash = hashlib.sha256(json.dumps([hashlib.sha256(text.encode()).hexdigest(), ev.ctx, ev.chunks, ev.top_k,
                                           ev.humaneval_limit, _mc_key(mc_items), reference.key.digest]
                                          + ([code_reference.key.digest] if code_reference else [])
                                          + (["chat"] if chat else [])
                                          ).encode()).hexdigest()
    record_study(opts, eval_hash)
    return TrialContext(
        study=opts.study, source=str(Path(opts.source).resolve()), space=space, eval_text=text, eval_hash=eval_hash,
        reference=reference, imatrix_path=str(Path(opts.imatrix).resolve()) if opts.imatrix else None,
        cache_dir=opts.cache_dir, work_dir=str(work_dir) if work_dir else None,
        # one llama.cpp/quantizer thread per CPU granted: ggml's threads spin while waiting, so oversubscribed
        # trials slow each other down by an order of magnitude
        n_threads=max(1, int(opts.cpus_per_trial)),
        store_dir=str(Path(opts.store_dir).resolve()),
        mc_items=mc_items, code_text=code_text, code_reference=code_reference, chat=chat,
    )


STUDIES_DIR = "_studies"


def study_record_path(store_dir: str | os.PathLike, study: str) -> Path:
    return Path(store_dir) / STUDIES_DIR / f"{store.safe_name(study)}.json"


def record_study(opts: SearchOptions, eval_hash: str) -> None:
    """What a study ran on, beside its rows (<store>/_studies/<study>.json): the space file, source, imatrix, base
    and evaluation digest, so that `solve` and `verify` need only --store and --study. Each run rewrites it."""
    from ..core.atomic import write_text

    path = study_record_path(opts.store_dir, opts.study)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"study": opts.study, "space_file": str(Path(opts.space_file).resolve()),
              "source": str(Path(opts.source).resolve()),
              "imatrix": str(Path(opts.imatrix).resolve()) if opts.imatrix else None,
              "reference": str(Path(opts.reference).resolve()) if opts.reference else None,
              "base": opts.base, "eval_hash": eval_hash, "cache_dir": opts.cache_dir, "strategy": opts.strategy}
    write_text(path, json.dumps(record, indent=1) + "\n")


def read_study(store_dir: str | os.PathLike, study: str) -> dict[str, Any]:
    """The record `record_study` wrote; StudyNotFound (naming the store's studies) when there is none."""
    path = study_record_path(store_dir, study)
    if not path.exists():
        known = sorted(json.loads(p.read_text()).get("study", p.stem) for p in (Path(store_dir) / STUDIES_DIR).glob(
            "*.json"))
        raise SpaceError(f"{store_dir}: no record of study {study!r} (its search writes {path}); studies recorded "
                         f"here: {', '.join(known) or 'none'}; give --space and --source for an older study")
    return json.loads(path.read_text())


def space_imatrix(space: SearchSpace, opts: SearchOptions) -> Path:
    """The importance matrix a space names: its file, or one made from its text (once per model and text, in the
    tensor cache's directory)."""
    spec = space.imatrix
    if spec.path:
        return Path(spec.path)
    from ..evaluate.imatrix_collect import CollectSettings, made_imatrix

    return made_imatrix(opts.source, opts.cache_dir, text=spec.text, chat_text=spec.chat_text,
                        settings=CollectSettings(n_ctx=spec.ctx, n_chunks=spec.chunks))


def _llama_file_reference(space: SearchSpace):
    """The space with the evaluation a llama-perplexity --kl-divergence-base file defines (its context and chunks;
    a space that sets others is refused) and that file's reference."""
    from ..evaluate.score import llama_reference

    ev = space.evaluation
    ref = llama_reference(ev.reference_logits, ev.top_k, ev.tail_samples)
    given = space.raw.get("evaluation") or {}
    for key, value in (("ctx", ref.key.n_ctx), ("chunks", ref.key.n_chunks)):
        if key in given and given[key] not in (None, value):
            raise SpaceError(f"{space.source_file}: evaluation.{key} is {given[key]}, but {ev.reference_logits} was "
                             f"made with {key} {value}: set {key}: {value} or leave it out")
    space = replace(space, evaluation=replace(ev, ctx=ref.key.n_ctx, chunks=ref.key.n_chunks))
    return space, _materialize(ref)


def _study_reference(ref_model: str, digest: str, text: str, ev, chat=None):
    """The reference distributions of `text` under the space's evaluation, computed once and cached across
    studies (keyed by the model's digest, the text's, context, chunks, K and S), materialized for Ray."""
    from ..evaluate.reference import default_reference_dir, load_reference, save_reference
    from ..evaluate.score import EvalSpec, compute_reference

    spec = EvalSpec(text, n_ctx=ev.ctx, n_chunks=ev.chunks, top_k=ev.top_k, tail_samples=ev.tail_samples, chat=chat)
    what = hashlib.sha256(text.encode()).hexdigest() if chat is None else hashlib.sha256(
        json.dumps([[(m.role, m.content) for m in c.messages] for c in chat]).encode()).hexdigest()
    key = hashlib.sha256(json.dumps([digest, what, ev.ctx, ev.chunks, ev.top_k, ev.tail_samples]
                                    + (["chat"] if chat else [])).encode()).hexdigest()
    cached = default_reference_dir() / f"search-{key}"
    if (cached / "meta.json").exists():
        reference = load_reference(cached)
    else:
        reference = compute_reference(ref_model, spec, model_digest=digest)
        save_reference(reference, cached)
    return _materialize(reference)


def _mc_key(items) -> list[str]:
    """What the evaluation hash records of the multiple-choice items: nothing when there are none (so studies
    without them keep their hash), else a digest of their content (not of file paths)."""
    if not items:
        return []
    blob = json.dumps([[i.id, i.prompt, list(i.choices), i.answer] for i in items]).encode()
    return [hashlib.sha256(blob).hexdigest()]


def with_base(space: SearchSpace, catalog, preset: str) -> SearchSpace:
    """The space with `preset` as its base map (checked against the model now, before anything runs)."""
    from dataclasses import replace

    from ..formats.precision_map import MapSpec, resolve

    base = MapSpec(base=preset, fallback=space.base.fallback)
    resolve(catalog, base)  # an unknown preset, or one whose types the model's rows cannot take, fails here
    return replace(space, base=base)


def _materialize(ref):
    """Copy memory-mapped arrays so the reference pickles into Ray's object store."""
    import numpy as np

    from ..evaluate.logprobs import TopK
    from ..evaluate.reference import Reference

    t = ref.topk
    copy = TopK(*(None if a is None else np.array(a) for a in (t.ids, t.logprobs, t.log_rest, t.target_logprob,
                                                                t.tail_ids, t.tail_logprobs)))
    tokens = None if ref.tokens is None else np.array(ref.tokens)
    return Reference(ref.key, copy, ref.model_path, ref.ppl, tokens=tokens, n_vocab=ref.n_vocab)


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


def point_key(point: Mapping[str, int]) -> str:
    """How a (partial) point is named in `labels` and `extra`: its JSON with sorted keys."""
    return json.dumps(dict(sorted(point.items())))


def make_callbacks(ctx: TrialContext, opts: SearchOptions, strategy: str, labels: Mapping[str, str] | None = None,
                   extra: Mapping[str, Mapping[str, Any]] | None = None):
    """The driver's callbacks: the store writer (every finished trial one row; `labels` and `extra` {point_key:
    columns} add a label and further columns, e.g. a prediction made before the trial ran) and progress."""
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
            if MAP_KEY in trial.config:
                from .trial import map_from_spec

                spec = trial.config[MAP_KEY]
                return spec, spec.get("label"), map_from_spec(ctx, spec)
            source = trial.config[POINT_KEY] if POINT_KEY in trial.config else trial.config
            point = {d.param: int(source[d.param]) for d in ctx.space.dimensions if d.param in source}
            pmap = ctx.space.map_for(catalog, point, has_imatrix=ctx.imatrix_path is not None)
            return point, (labels or {}).get(point_key(point)), pmap

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
            if extra and isinstance(params, dict) and MAP_KEY not in trial.config:
                row.update(extra.get(point_key(params), {}))
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
            from ..formats.precision_map import resolve

            base_map = resolve(catalog, ctx.space.base, has_imatrix=ctx.imatrix_path is not None)
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



@dataclass
class SearchResult:
    study: str
    store_dir: str
    experiment_path: str
    n_trials: int
    skipped: dict[str, int] = field(default_factory=dict)


def run_points(ctx: TrialContext, opts: SearchOptions, resources, points: Sequence[Mapping[str, int]],
               strategy: str, phase: str, labels: Mapping[str, str] | None = None,
               extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Run (partial) points of the space as one Ray Tune experiment (a grid over them), every finished trial a row
    of `strategy` in the store. Callers skip points already measured (the store is their memory)."""
    from ray import tune

    from .trial import ray_trainable

    if not points:
        return
    store_dir = Path(opts.store_dir).resolve()
    trainable = tune.with_resources(tune.with_parameters(ray_trainable, ctx=ctx), resources)
    tune.Tuner(
        trainable,
        param_space={POINT_KEY: tune.grid_search([dict(p) for p in points])},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"{ctx.study}-{phase}-{int(time.time())}", storage_path=opts.storage_path or str(store_dir / "_tune"),
            callbacks=make_callbacks(ctx, opts, strategy, labels, extra),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures), verbose=0),
    ).fit()
