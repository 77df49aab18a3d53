"""What every search strategy shares: the study's preparation, its record, Ray, trial resources, the driver-side
callbacks, and `StudyRun`, the one place where a study's Ray Tune run is set up and driven.

    prepare()  space validated against the model, imatrix checked, reference computed once -> TrialContext;
               the study's record (StudyRecord) written beside its rows
    StudyRun   the prepared study: Ray (started on first use: init_ray), trial resources and concurrency, the
               trainable, run configs, Tuners for a grid of points or maps and for a searcher, the study's rows
    make_callbacks()  StoreCallback (the store's only writer: one row per finished trial) + live progress lines

Every strategy (study/strategies.py) is a function of a StudyRun; none imports another's internals except the
guided strategy, whose tail is the Optuna driver.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from .. import __version__
from ..core import store
from ..formats.catalog import ModelCatalog, load_catalog
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
    imatrix_digest = "none"
    if opts.imatrix:
        from ..quant.build import check_imatrix_fits
        from ..formats.imatrix import load_imatrix

        imatrix = load_imatrix(opts.imatrix)
        check_imatrix_fits(catalog, imatrix, opts.imatrix)
        imatrix_digest = imatrix.digest
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
    StudyRecord.of(opts, eval_hash, source_digest=_source_digest(opts), imatrix_digest=imatrix_digest).save(
        opts.store_dir)
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


@dataclass(frozen=True)
class StudyRecord:
    """What a study ran on, beside its rows (<store>/_studies/<study>.json), so that `solve`, `verify` and the
    guided strategy's interaction report need only --store and --study. Every run of the study rewrites it.

    Paths are absolute. The file is the JSON object of these fields; records written by earlier versions (a field
    missing, or one this version does not know) load too."""

    study: str
    space_file: str
    source: str
    imatrix: str | None = None
    reference: str | None = None  # the KLD reference model; None: the source itself
    base: str | None = None  # a preset replacing the space's base (--base)
    eval_hash: str | None = None  # the digest of the evaluation every row of the study was scored under
    cache_dir: str | None = None
    strategy: str | None = None
    # the exact inputs its trials' builds used (build.source_digest; the imatrix's vector digest, "none" without):
    # export, verify and solve refuse another source or imatrix by these
    source_digest: str | None = None
    imatrix_digest: str | None = None

    @classmethod
    def of(cls, opts: SearchOptions, eval_hash: str, source_digest: str | None = None,
           imatrix_digest: str | None = None) -> StudyRecord:
        def absolute(path: str | None) -> str | None:
            return str(Path(path).resolve()) if path else None

        return cls(study=opts.study, space_file=absolute(opts.space_file), source=absolute(opts.source),
                   imatrix=absolute(opts.imatrix), reference=absolute(opts.reference), base=opts.base,
                   eval_hash=eval_hash, cache_dir=opts.cache_dir, strategy=opts.strategy,
                   source_digest=source_digest, imatrix_digest=imatrix_digest)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "study record") -> StudyRecord:
        """A record from its JSON object; keys this version does not know are ignored, missing optional ones are
        None; StudyRecordError when the study, space file or source is missing."""
        if not isinstance(data, Mapping):
            raise StudyRecordError(f"{where}: a study record is a JSON object, not {type(data).__name__}")
        missing = [k for k in ("study", "space_file", "source") if not data.get(k)]
        if missing:
            raise StudyRecordError(f"{where}: the study record has no {missing[0]!r}; run the study's search again "
                                   "to rewrite it, or give --space and --source")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, store_dir: str | os.PathLike, study: str) -> StudyRecord:
        """The record of `study` in the store; StudyRecordError (naming the store's studies) when there is none."""
        path = study_record_path(store_dir, study)
        if not path.exists():
            known = sorted(recorded_studies(store_dir))
            raise StudyRecordError(f"{store_dir}: no record of study {study!r} (its search writes {path}); studies "
                                   f"recorded here: {', '.join(known) or 'none'}; give --space and --source for an "
                                   "older study")
        return cls.from_dict(_read_json(path), str(path))

    def save(self, store_dir: str | os.PathLike) -> Path:
        from ..core.atomic import write_text

        path = study_record_path(store_dir, self.study)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(self.as_dict(), indent=1) + "\n")
        return path

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def open_space(self) -> tuple[ModelCatalog, SearchSpace]:
        """The source's catalog and the study's space on it (with the record's base, when it replaced the
        space's)."""
        catalog = load_catalog(self.source)
        space = load_space(self.space_file, catalog)
        if self.base:
            space = with_base(space, catalog, self.base)
        return catalog, space

    def options(self, store_dir: str | os.PathLike, **overrides: Any) -> SearchOptions:
        """Search options that run more trials of this study as it ran (the same space, source, imatrix, reference,
        base and cache), with `overrides`."""
        return SearchOptions(**{
            "space_file": self.space_file, "source": self.source, "study": self.study, "store_dir": str(store_dir),
            "imatrix": self.imatrix, "reference": self.reference, "base": self.base, "cache_dir": self.cache_dir,
            **overrides})


class StudyRecordError(SpaceError):
    """No usable record of a study in a store; the message names the store, the study and the way out."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyRecordError(f"{path}: not a readable study record ({exc}); run the study's search again to "
                               "rewrite it") from None


def recorded_studies(store_dir: str | os.PathLike) -> list[str]:
    """The studies with a record in the store."""
    out = []
    for path in (Path(store_dir) / STUDIES_DIR).glob("*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        out.append(str(data.get("study", path.stem)) if isinstance(data, Mapping) else path.stem)
    return out


def _source_digest(opts: SearchOptions) -> str:
    """The source's digest as its builds record it (build.source_digest; the tensor digests are remembered in the
    study's tensor cache, where the trials find them)."""
    from ..quant.build import source_digest
    from ..quant.tensor_cache import TensorCache

    return source_digest(opts.source, TensorCache(opts.cache_dir))


def record_study(opts: SearchOptions, eval_hash: str, source_digest: str | None = None,
                 imatrix_digest: str | None = None) -> None:
    """Write the study's record (StudyRecord.of(...).save: older callers)."""
    StudyRecord.of(opts, eval_hash, source_digest, imatrix_digest).save(opts.store_dir)


def read_study(store_dir: str | os.PathLike, study: str) -> dict[str, Any]:
    """The study's record as a dict (StudyRecord.load(...).as_dict(): older callers)."""
    return StudyRecord.load(store_dir, study).as_dict()


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


def measured_rows(store_dir: str | os.PathLike, studies: Sequence[str], eval_hash: str,
                  strategy: str | None = None) -> list[dict[str, Any]]:
    """The complete rows of `studies` (of `strategy`, when given) scored under the evaluation `eval_hash`: what
    a study may reuse instead of measuring again."""
    return [r for r in store.rows(store_dir, list(studies)) if r["status"] == "complete"
            and r["eval_hash"] == eval_hash and (strategy is None or r["strategy"] == strategy)]


class StudyRun:
    """A prepared study and its run on Ray Tune: the one place where a strategy's trials are set up and driven.

    `StudyRun.prepare(opts)` validates everything and computes the reference (nothing runs if anything is wrong);
    Ray starts when something first needs it (`cluster`). A strategy then runs lists of points or maps
    (`run_points`, `run_maps`: one Tune experiment each) or a searcher (`search_tuner` / `restored_tuner`, then
    `fit`), and reads what the study measured from the store (`measured`). Each step is a small method, so that
    what a run needs around its trials (a lock, a time budget, resource limits, quieter logs) goes in one place.
    """

    def __init__(self, opts: SearchOptions, ctx: TrialContext, resources: Mapping[str, float] | None = None):
        self.opts = opts
        self.ctx = ctx
        self._resources = dict(resources) if resources is not None else None
        self._cluster: dict[str, float] | None = None
        self._catalog: ModelCatalog | None = None

    @classmethod
    def prepare(cls, opts: SearchOptions, work_dir: Path | None = None) -> StudyRun:
        return cls(opts, prepare(opts, work_dir))

    def derive(self, **changes: Any) -> StudyRun:
        """The same prepared study run with other options (e.g. the guided strategy's tail: more trials, warm
        starts, resume); the preparation and Ray are shared, not redone."""
        other = StudyRun(replace(self.opts, **changes), self.ctx, self._resources)
        other._cluster, other._catalog = self._cluster, self._catalog
        return other

    # ---- the study -------------------------------------------------------------------------------------------

    @property
    def study(self) -> str:
        return self.opts.study

    @property
    def space(self) -> SearchSpace:
        return self.ctx.space

    @property
    def store_dir(self) -> Path:
        return Path(self.opts.store_dir).resolve()

    @property
    def n_trials(self) -> int:
        """The trial budget: --trials, else the space's search.trials."""
        return self.opts.trials or self.space.trials

    @property
    def has_imatrix(self) -> bool:
        return self.ctx.imatrix_path is not None

    @property
    def catalog(self) -> ModelCatalog:
        if self._catalog is None:
            self._catalog = load_catalog(self.ctx.source)
        return self._catalog

    def map_of(self, point: Mapping[str, int]):
        """The precision map of a (partial) point of the space, as trials build it."""
        return self.space.map_for(self.catalog, point, has_imatrix=self.has_imatrix)

    def measured(self, studies: Sequence[str] | None = None, strategy: str | None = None) -> list[dict[str, Any]]:
        """Complete rows of this study (or of `studies`) under this evaluation (see measured_rows)."""
        return measured_rows(self.store_dir, studies or [self.study], self.ctx.eval_hash, strategy)

    def result(self, n_trials: int, skipped: Mapping[str, int] | None = None,
               experiment: str | None = None) -> SearchResult:
        return SearchResult(self.study, str(self.store_dir), experiment or self.storage_path, n_trials,
                            dict(skipped or {}))

    # ---- Ray and resources -----------------------------------------------------------------------------------

    @property
    def cluster(self) -> dict[str, float]:
        """The cluster's resources; Ray (local, or --address) is started the first time they are asked for."""
        if self._cluster is None:
            self._cluster = init_ray(self.opts)
        return self._cluster

    @property
    def resources(self) -> dict[str, float]:
        """What one trial holds: {"cpu": ..., "gpu": ...} (trial_resources)."""
        if self._resources is None:
            self._resources = trial_resources(self.opts, self.cluster)
        return self._resources

    @property
    def concurrency(self) -> int:
        """Trials at once: --max-concurrent, else as many as the cluster's CPUs (and GPUs) hold."""
        if self.opts.max_concurrent:
            return self.opts.max_concurrent
        n = max(1, int(self.cluster.get("CPU", 1) // max(self.opts.cpus_per_trial, 0.01)))
        if self.resources["gpu"]:
            n = min(n, max(1, int(self.cluster.get("GPU", 0) / self.resources["gpu"])))
        return n

    # ---- Tune ------------------------------------------------------------------------------------------------

    @property
    def storage_path(self) -> str:
        """Where Tune keeps the study's experiments: --storage-path (shared or s3://), else <store>/_tune."""
        return self.opts.storage_path or str(self.store_dir / "_tune")

    def experiment_path(self, name: str | None = None) -> str:
        return self.storage_path.rstrip("/") + "/" + (name or self.study)  # also right for s3://bucket/path

    def trainable(self):
        """The trial function with the study's context (shipped once through Ray's object store) and resources."""
        from ray import tune

        from .trial import ray_trainable

        return tune.with_resources(tune.with_parameters(ray_trainable, ctx=self.ctx), self.resources)

    def callbacks(self, strategy: str, labels: Mapping[str, str] | None = None,
                  extra: Mapping[str, Mapping[str, Any]] | None = None) -> list:
        return make_callbacks(self.ctx, self.opts, strategy, labels, extra)

    def run_config(self, name: str, callbacks: Sequence, stop=None):
        from ray import tune

        return tune.RunConfig(name=name, storage_path=self.storage_path, callbacks=list(callbacks), stop=stop,
                              failure_config=tune.FailureConfig(max_failures=self.opts.max_failures), verbose=0)

    def fit(self, tuner) -> Any:
        return tuner.fit()

    def run_grid(self, key: str, configs: Sequence[Mapping[str, Any]], name: str, callbacks: Sequence) -> None:
        """One Tune experiment `name` with a trial per config (under `key`: POINT_KEY or MAP_KEY)."""
        from ray import tune

        self.fit(tune.Tuner(self.trainable(), param_space={key: tune.grid_search([dict(c) for c in configs])},
                            tune_config=tune.TuneConfig(reuse_actors=False),
                            run_config=self.run_config(name, callbacks)))

    def run_points(self, points: Sequence[Mapping[str, int]], strategy: str, phase: str,
                   labels: Mapping[str, str] | None = None,
                   extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Run (partial) points of the space as one experiment, every finished trial a row of `strategy` in the
        store (`labels` and `extra`: {point_key: label / further columns}). Callers skip points already measured
        (the store is their memory)."""
        if points:
            self.run_grid(POINT_KEY, points, f"{self.study}-{phase}-{int(time.time())}",
                          self.callbacks(strategy, labels, extra))

    def run_maps(self, specs: Sequence[Mapping[str, Any]], strategy: str) -> SearchResult:
        """Score fixed maps ({"label", "base", "rules", ...}: llama.cpp presets, a map file) under the space's
        evaluation as rows of `strategy`; maps whose label this study already measured are not run again."""
        done = {r["label"] for r in self.measured(strategy=strategy)}
        todo = [s for s in specs if s["label"] not in done]
        if todo:
            self.run_grid(MAP_KEY, todo, f"{self.study}-{strategy}-{int(time.time())}", self.callbacks(strategy))
        return self.result(len(specs), {"already stored": len(specs) - len(todo)})

    def can_restore(self) -> bool:
        from ray import tune

        return tune.Tuner.can_restore(self.experiment_path())

    def search_tuner(self, searcher, callbacks: Sequence, num_samples: int, scheduler=None, stop=None):
        """A new experiment named after the study: `num_samples` trials proposed by `searcher`, at most
        `concurrency` at once. Refused when the study already has one (resume it instead)."""
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter

        if self.can_restore():
            raise ValueError(f"study {self.study!r} already has an experiment in {self.experiment_path()}: pass "
                             "--resume to continue it, or choose another --study name")
        return tune.Tuner(
            self.trainable(),
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=self.concurrency),
                                        num_samples=num_samples, scheduler=scheduler, reuse_actors=False),
            run_config=self.run_config(self.study, callbacks, stop=stop))

    def restored_tuner(self, callbacks: Sequence):
        """The study's experiment as Tune saved it (its searcher, scheduler and stopper included), unfinished trials
        resumed, with today's callbacks (they are not part of a Tune checkpoint)."""
        from ray import tune

        tuner = tune.Tuner.restore(self.experiment_path(), trainable=self.trainable(), resume_unfinished=True,
                                   resume_errored=False, restart_errored=False, param_space=None)
        restore_callbacks(tuner, callbacks)
        return tuner


def restore_callbacks(tuner, callbacks: Sequence) -> None:
    """Callbacks are not part of a Tune checkpoint: put ours back into a restored tuner's run config."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is not None:
        internal._run_config.callbacks = list(callbacks)


def run_points(ctx: TrialContext, opts: SearchOptions, resources, points: Sequence[Mapping[str, int]],
               strategy: str, phase: str, labels: Mapping[str, str] | None = None,
               extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """StudyRun(opts, ctx, resources).run_points(...) (older callers)."""
    StudyRun(opts, ctx, resources).run_points(points, strategy, phase, labels, extra)


__all__ = [
    "SearchOptions", "SearchResult", "StudyRecord", "StudyRecordError", "StudyRun", "eval_text", "init_ray",
    "make_callbacks", "measured_rows", "point_key", "prepare", "recorded_studies", "space_imatrix",
    "study_record_path", "trial_resources", "with_base",
]
