"""One trial: build the map's GGUF (tensor cache), load it with llama.cpp, score it, reporting after every chunk.

`evaluate_point` is plain Python (tests call it directly); `ray_trainable` adapts it to Ray Tune. Everything a
trial needs besides its point travels once per study as a frozen `TrialContext` (Ray ships it through the object
store with `tune.with_parameters`, so worker nodes need no shared filesystem for the reference).
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

import functools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from ..core import metrics
from ..core.compat import former_names
from ..quant.build import build_file
from ..formats.catalog import ModelCatalog, load_catalog
from ..evaluate.llama_runner import LlamaRunner, RunnerConfig
from ..formats.precision_map import PrecisionMap
from ..evaluate.reference import Reference
from ..evaluate.score import EvalSpec, ScoreRecord, score, score_stream
from ..formats.space import SearchSpace
from ..quant.tensor_cache import TensorCache


# Keys of a Ray Tune trial config that are not search parameters: a fixed map (a preset, a map file) or a possibly
# partial point (an ablation step). Their values are part of stored Tune experiments: never rename them.
MAP_KEY = "__map"
POINT_KEY = "__point"


@dataclass(frozen=True)
class TrialContext:
    study: str
    source: str  # the source GGUF, at this path on every node
    space: SearchSpace
    eval_text: str
    eval_hash: str
    reference: Reference | None
    imatrix_path: str | None = None
    cache_dir: str | None = None  # per-node tensor cache (None: the default location)
    cache_size: int = 20 * 1024**3
    work_dir: str | None = None  # where trials write their GGUFs; None: a node-local default (default_work_dir)
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    keep_files: bool = False
    store_dir: str | None = None  # when workers can see it: a restarted trial already stored is not run again
    mc_items: tuple = ()  # the multiple-choice items of evaluation.mc, read by the driver (workers need no files)
    code_text: str | None = None  # the code corpus, when the space scores code (kld_code, ppl_code)
    code_reference: Reference | None = None
    chat: tuple | None = None  # conversations (evaluation.chat_text): the text evaluation is chat-formatted


@functools.lru_cache(maxsize=4)
def _catalog(path: str) -> ModelCatalog:
    return load_catalog(path)


@functools.lru_cache(maxsize=4)
def _imatrix(path: str | None):
    if not path:
        return None
    from ..formats.imatrix import load_imatrix

    return load_imatrix(path)


def _text_columns(rec: ScoreRecord, size: int, bpw: float, final: bool) -> dict[str, Any]:
    """The store columns a scoring record of the text gives (after any chunk)."""
    m = {
        "size_bytes": size, "bpw": bpw, "ppl": rec.ppl, "ppl_se": rec.ppl_se,
        "chunks_done": rec.chunks_done, "n_chunks": rec.n_chunks, "final": final,
        "pp_tokens_per_s": rec.tokens_per_second,
    }
    if rec.kld is not None:
        m.update(kld=rec.kld, kld_se=rec.kld_se, kld_median=rec.kld_median, kld_p90=rec.kld_p90, kld_p99=rec.kld_p99,
                 kld_p999=rec.kld_p999, kld_max=rec.kld_max, same_top=rec.same_top, same_top_se=rec.same_top_se,
                 rms_dp=rec.rms_dp, rms_dp_se=rec.rms_dp_se)
    return m


def _named(columns: Mapping[str, Any]) -> dict[str, Any]:
    """A report: the store columns, and every metric they hold under its name (size in GB, speed, mc, ...), which is
    what Tune's searcher, schedulers and stoppers read."""
    return {**columns, **metrics.named_values(columns)}


def default_work_dir() -> Path:
    """Node-local scratch space for trial GGUFs ($CEREBELLUM_WORK_DIR, else the temp dir): never the store, which
    may be on a network filesystem or absent on worker nodes."""
    import tempfile

    return Path(os.environ.get("CEREBELLUM_WORK_DIR") or Path(tempfile.gettempdir()) / "cerebellum-ray" / "trials")


def _node_name() -> str:
    """host name, plus the Ray node id when running inside Ray (several raylets can share one host)."""
    name = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            name += ":" + ray.get_runtime_context().get_node_id()[:12]
    except Exception:
        pass
    return name


def evaluate_point(ctx: TrialContext, point: Mapping[str, int], report: Callable[[dict], None]) -> dict[str, Any]:
    """Build, load and score one point of the space (see evaluate_map)."""
    imatrix = _imatrix(ctx.imatrix_path)
    pmap = ctx.space.map_for(_catalog(ctx.source), point, has_imatrix=imatrix is not None)
    return evaluate_map(ctx, pmap, report)


def map_from_spec(ctx: TrialContext, spec: Mapping[str, Any]) -> PrecisionMap:
    """A map given outside the space's dimensions (a llama.cpp preset, a map file) as {"base", "rules", ...}."""
    from ..formats.precision_map import MapSpec, Rule, resolve

    rules = tuple(Rule(p, t) for p, t in spec.get("rules", ()))
    mspec = MapSpec(rules=rules, base=spec.get("base"), fallback=bool(spec.get("fallback", False)))
    return resolve(_catalog(ctx.source), mspec, has_imatrix=ctx.imatrix_path is not None)


def evaluate_map(ctx: TrialContext, pmap: PrecisionMap, report: Callable[[dict], None]) -> dict[str, Any]:
    """Build, load and score one map, calling `report` after every chunk; returns the final metrics."""
    imatrix = _imatrix(ctx.imatrix_path)
    work = Path(ctx.work_dir) if ctx.work_dir else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{ctx.study}-{pmap.digest[:16]}-{os.getpid()}.gguf"
    cache = TensorCache(ctx.cache_dir, size_limit=ctx.cache_size)
    t0 = time.perf_counter()
    report_ = build_file(ctx.source, pmap, out, imatrix=imatrix, cache=cache, n_threads=ctx.n_threads, sync=False,
                         page_aligned=True)
    t1 = time.perf_counter()
    ev = ctx.space.evaluation
    spec = EvalSpec(ctx.eval_text, n_ctx=ev.ctx, n_chunks=ev.chunks, top_k=ev.top_k,
                    tail_samples=getattr(ev, "tail_samples", 0), chat=getattr(ctx, "chat", None))
    # every objective is in every report (Tune checks); those scored after the text (HumanEval, MC) are None until
    # the final report
    pending = {o: None for o in ctx.space.objectives if metrics.metric(o).late}
    base = {**pending, "map_hash": pmap.digest, "build_s": t1 - t0, "node": _node_name(),
            "gpu_ids": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "cached": report_.count("cached"),
            "quantized": report_.count("quantized"),
            # what the scored file was built from: export rebuilds exactly this (and refuses other inputs)
            "source_digest": report_.provenance.source_digest, "imatrix_digest": report_.provenance.imatrix_digest}
    try:
        runner = LlamaRunner(out, RunnerConfig(n_ctx=ev.ctx, n_gpu_layers=ctx.n_gpu_layers,
                                               n_threads=ctx.n_threads))
        t2 = time.perf_counter()
        base["load_s"] = t2 - t1
        base["device"] = runner.device
        final: dict[str, Any] = {}
        try:
            for rec in score_stream(out, spec, ctx.reference, runner=runner):
                final = _named({**base, **_text_columns(rec, report_.export_size, report_.bits_per_weight,
                                                        final=False), "score_s": time.perf_counter() - t2})
                if not rec.done:
                    report(final)
            final.update(_code_metrics(ctx, out, runner))
        finally:
            runner.close()
        final.update(_task_metrics(ctx, out))
        final["score_s"] = time.perf_counter() - t2
        final["final"] = True
        final = _named(final)
        report(final)
        return final
    finally:
        if not ctx.keep_files:
            out.unlink(missing_ok=True)


def _code_metrics(ctx: TrialContext, model: Path, runner: LlamaRunner) -> dict[str, Any]:
    """KLD and perplexity on the code corpus (the same context and chunk count as the text), when the space asks."""
    code_text = getattr(ctx, "code_text", None)
    if not code_text:
        return {}
    ev = ctx.space.evaluation
    spec = EvalSpec(code_text, n_ctx=ev.ctx, n_chunks=ev.chunks, top_k=ev.top_k,
                    tail_samples=getattr(ev, "tail_samples", 0))  # as the study's code reference was computed
    rec = score(model, spec, getattr(ctx, "code_reference", None), runner=runner)
    out = {"ppl_code": rec.ppl, "ppl_code_se": rec.ppl_se}
    if rec.kld is not None:
        out.update(kld_code=rec.kld, kld_code_se=rec.kld_se, same_top_code=rec.same_top)
    return out


def _task_metrics(ctx: TrialContext, model: Path) -> dict[str, Any]:
    ev = ctx.space.evaluation
    if not ev.humaneval_limit and not ev.mc:
        return {}
    from ..evaluate.tasks import load_choice_items, score_choices, score_humaneval

    out: dict[str, Any] = {}
    with LlamaRunner(model, RunnerConfig(n_ctx=1024, n_seq=8, n_gpu_layers=ctx.n_gpu_layers,
                                         n_threads=ctx.n_threads)) as runner:
        if ev.humaneval_limit:
            he = score_humaneval(runner, model, limit=ev.humaneval_limit)
            out.update(humaneval=he.pass_at_1, humaneval_se=he.pass_at_1_se, humaneval_n=he.n_problems,
                       humaneval_loops=he.loop_share,
                       gen_tokens_per_s=he.generated_tokens / max(he.generate_seconds, 1e-9))
        if ev.mc:
            items = getattr(ctx, "mc_items", ()) or [it for f in ev.mc for it in load_choice_items(f)]
            mc = score_choices(runner, items)
            out.update(mc_acc=mc.acc, mc_acc_se=mc.acc_se)
    return out


def ray_trainable(config: dict, ctx: TrialContext) -> None:
    """Ray Tune function trainable: the config is the point (parameter -> candidate index), or holds it under
    POINT_KEY (ablation batches), or is a fixed map under MAP_KEY."""
    from ray import tune

    stored = _stored_result(ctx, tune.get_context().get_trial_id())
    if stored is not None:
        tune.report(stored)  # finished before the driver died: report it again instead of running it twice
        return
    if MAP_KEY in config:
        evaluate_map(ctx, map_from_spec(ctx, config[MAP_KEY]), tune.report)
        return
    if POINT_KEY in config:  # an ablation step: a point, possibly partial (the other tensors keep the preset's types)
        point = {p: int(v) for p, v in config[POINT_KEY].items()}
    else:
        point = {d.param: int(config[d.param]) for d in ctx.space.dimensions}
    evaluate_point(ctx, point, tune.report)


def _stored_result(ctx: TrialContext, trial_id: str) -> dict[str, Any] | None:
    if not ctx.store_dir or not os.path.isdir(ctx.store_dir):
        return None
    from ..core import store

    row = store.read_row(ctx.store_dir, ctx.study, trial_id)
    if row is None or row["status"] != "complete":
        return None
    numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    result = {**_named(numbers), "final": True, "from_store": True, "node": row["node"], "gpu_ids": row["gpu_ids"],
              "map_hash": row["map_hash"], "source_digest": row.get("source_digest"),
              "imatrix_digest": row.get("imatrix_digest")}
    return {k: v for k, v in result.items() if v is not None}


__all__ = ["MAP_KEY", "POINT_KEY", "TrialContext", "default_work_dir", "evaluate_map", "evaluate_point",
           "map_from_spec", "ray_trainable"]

__getattr__ = former_names(__name__, {
    "LATE_OBJECTIVES": "cerebellum_ray.core.metrics:LATE_NAMES",
    "objective_values": "cerebellum_ray.core.metrics:objective_values",
    "_metrics": "cerebellum_ray.study.trial:_text_columns",
    "build": "cerebellum_ray.quant.build:build",
})
