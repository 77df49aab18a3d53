"""Verify: the expensive metrics (HumanEval on up to all 164 problems, multiple choice) for the few maps that matter —
the members of a study's front, or named trials — stored with those rows, each compared with the reference model on
the same problems.

    store rows ──► front members ──► build each map (tensor cache) ──► HumanEval / MC ──► paired statistics vs the
                                                                                       reference model ──► same rows

The paired comparison makes "this map regresses code" a statement with a confidence: the difference in pass@1 with
its paired standard error, and the exact McNemar p-value over the problems where exactly one of the two passed (as
the model card's router-layer-10 story needs: better perplexity, worse HumanEval).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError


class VerifyError(CerebellumError):
    """Nothing to verify, or a stored map that does not fit the source."""


@dataclass(frozen=True)
class Paired:
    """One model against the reference on the same problems (outcomes: task id -> passed)."""

    n: int
    pass_rate: float
    reference_pass_rate: float
    delta: float  # pass_rate - reference_pass_rate
    delta_se: float  # standard error of the mean paired difference
    only_model: int  # problems the model passed and the reference failed (McNemar's b)
    only_reference: int  # ... and the other way round (McNemar's c)
    mcnemar_p: float  # exact two-sided McNemar p-value (binomial test on the discordant pairs)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired(model: Mapping[str, bool], reference: Mapping[str, bool]) -> Paired:
    """Compare pass/fail outcomes on the problems both were scored on."""
    tasks = [t for t in model if t in reference]
    if not tasks:
        raise VerifyError("the model and the reference share no scored problem")
    d = [int(model[t]) - int(reference[t]) for t in tasks]
    n = len(tasks)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else 0.0
    b = sum(1 for t in tasks if model[t] and not reference[t])
    c = sum(1 for t in tasks if reference[t] and not model[t])
    return Paired(n, sum(model[t] for t in tasks) / n, sum(reference[t] for t in tasks) / n, mean, se, b, c,
                  mcnemar_exact(b, c))


@dataclass(frozen=True)
class VerifyOptions:
    store_dir: str
    study: str
    source: str | None = None  # None: the study's (another file must have its digest)
    front: bool = True  # the members of the study's front on `front_on`
    front_on: tuple[str, ...] = ("size", "kld")  # stored metrics the front is taken on (pareto's objective names)
    trials: tuple[str, ...] = ()  # or these trial ids (or labels)
    metrics: tuple[str, ...] = ("humaneval",)
    limit: int | None = None  # HumanEval problems (None: all 164)
    reference: str | None = None  # the model compared with (default: the source)
    imatrix: str | None = None  # None: the study's (another file must have its digest)
    mc: tuple[str, ...] = ()
    cache_dir: str | None = None
    n_gpu_layers: int | None = None
    max_new_tokens: int = 384


def members(opts: VerifyOptions) -> list[dict[str, Any]]:
    """The stored rows to verify: named trials, or the study's front on `opts.front_on` (default size and KLD)."""
    from ..core import store
    from ..predict.fronts import compute_fronts

    rows = [r for r in store.rows(opts.store_dir, [opts.study]) if r["status"] == "complete" and r["map"]]
    if not rows:
        raise VerifyError(f"study {opts.study!r} has no complete trials in {opts.store_dir}")
    if opts.trials:
        picked = [r for r in rows if r["trial_id"] in opts.trials or r["label"] in opts.trials]
        missing = set(opts.trials) - {r["trial_id"] for r in picked} - {r["label"] for r in picked}
        if missing:
            raise VerifyError(f"no complete trial {sorted(missing)[0]!r} in study {opts.study}")
        return picked
    search = [r for r in rows if r["strategy"] not in store.REFERENCE_STRATEGIES] or rows
    try:
        return list(compute_fronts(search, list(opts.front_on), group_by="study")[0].points)
    except ValueError as err:  # an unknown metric, or no row carrying every one of them
        raise VerifyError(f"--front-on {','.join(opts.front_on)}: {err} (study {opts.study}; a metric must be "
                          "stored by the study's trials, e.g. kld_code needs evaluation.code or kld_code among the "
                          "space's objectives)") from None


def reference_outcomes(model: str, limit: int | None, max_new_tokens: int, n_gpu_layers: int | None,
                       cache_dir: Path) -> tuple[dict[str, bool], Any]:
    """HumanEval outcomes of the reference model, computed once and remembered (keyed by the model's digest and the
    problems and settings), with the score."""
    from ..core.atomic import write_text
    from ..formats.gguf_io import model_digest

    digest = model_digest(model, cache_dir / "digests")
    memo = cache_dir / f"humaneval-{digest[:24]}-n{limit or 164}-t{max_new_tokens}.json"
    if memo.exists():
        data = json.loads(memo.read_text())
        return {t: bool(p) for t, p in data["outcomes"]}, data["score"]
    score = _humaneval(model, limit, max_new_tokens, n_gpu_layers)
    summary = {k: v for k, v in asdict(score).items() if k not in ("completions", "outcomes")}
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_text(memo, json.dumps({"outcomes": list(score.outcomes), "score": summary}))
    return dict(score.outcomes), summary


def _humaneval(model: str | os.PathLike, limit: int | None, max_new_tokens: int, n_gpu_layers: int | None):
    from ..evaluate.llama_runner import LlamaRunner, RunnerConfig
    from ..evaluate.tasks import score_humaneval

    with LlamaRunner(model, RunnerConfig(n_ctx=1024, n_seq=8, n_gpu_layers=n_gpu_layers)) as runner:
        return score_humaneval(runner, model, limit=limit, max_new_tokens=max_new_tokens)


def _mc(model: str | os.PathLike, files: Sequence[str], n_gpu_layers: int | None):
    from ..evaluate.llama_runner import LlamaRunner, RunnerConfig
    from ..evaluate.tasks import load_choice_items, score_choices

    items = [it for f in files for it in load_choice_items(f)]
    with LlamaRunner(model, RunnerConfig(n_ctx=1024, n_seq=8, n_gpu_layers=n_gpu_layers)) as runner:
        return score_choices(runner, items)


def verify(opts: VerifyOptions, progress=None) -> list[dict[str, Any]]:
    """Score every member with the expensive metrics and store the values with its row; returns the updated rows."""
    from ..core import store
    from ..quant.build import build_file
    from ..formats.catalog import load_catalog
    from ..formats.precision_map import PrecisionMap
    from .inputs import measured_inputs
    from ..evaluate.reference import default_reference_dir
    from ..quant.tensor_cache import TensorCache
    from ..study.trial import default_work_dir

    unknown = set(opts.metrics) - {"humaneval", "mc"}
    if unknown or not opts.metrics:
        raise VerifyError(f"--metrics: verify scores humaneval and mc, not {sorted(unknown) or '(none)'}")
    if "mc" in opts.metrics and not opts.mc:
        raise VerifyError("--metrics mc needs at least one --mc FILE.jsonl")
    rows = members(opts)
    # every member's source and imatrix found and checked by digest before anything runs
    inputs = [measured_inputs(opts.store_dir, opts.study, row, source=opts.source, imatrix=opts.imatrix,
                              cache_dir=opts.cache_dir) for row in rows]
    reference = opts.reference or inputs[0].source
    ref_outcomes = None
    if "humaneval" in opts.metrics:
        ref_outcomes, _ = reference_outcomes(reference, opts.limit, opts.max_new_tokens, opts.n_gpu_layers,
                                             default_reference_dir())
    work = default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    cache = TensorCache(opts.cache_dir)
    updated = []
    for row, found in zip(rows, inputs):
        catalog = load_catalog(found.source)
        if set(row["map"]) != set(catalog.by_name):
            raise VerifyError(f"trial {row['trial_id']}'s map does not fit {found.source}: verify with the source "
                              "the study ran on")
        pmap = PrecisionMap(types={t.name: row["map"][t.name] for t in catalog.tensors},
                            base=f"trial:{row['trial_id']}")
        out = work / f"verify-{pmap.digest[:16]}-{os.getpid()}.gguf"
        try:
            build_file(found.source, pmap, out, imatrix=found.imatrix, cache=cache, sync=False, page_aligned=True)
            values: dict[str, Any] = {}
            if "humaneval" in opts.metrics:
                he = _humaneval(out, opts.limit, opts.max_new_tokens, opts.n_gpu_layers)
                cmp = paired(dict(he.outcomes), ref_outcomes)
                values.update(humaneval=he.pass_at_1, humaneval_se=he.pass_at_1_se, humaneval_n=he.n_problems,
                              humaneval_loops=he.loop_share, humaneval_delta=cmp.delta,
                              humaneval_delta_se=cmp.delta_se, humaneval_mcnemar_p=cmp.mcnemar_p,
                              gen_tokens_per_s=he.generated_tokens / max(he.generate_seconds, 1e-9))
            if "mc" in opts.metrics:
                mc = _mc(out, opts.mc, opts.n_gpu_layers)
                values.update(mc_acc=mc.acc, mc_acc_se=mc.acc_se)
        finally:
            out.unlink(missing_ok=True)
        new = {**row, **values}
        store.append(opts.store_dir, new)
        updated.append(new)
        if progress is not None:
            progress(new)
    return updated


__all__ = ["Paired", "VerifyError", "VerifyOptions", "mcnemar_exact", "members", "paired", "reference_outcomes",
           "verify"]
