"""Scoring a model on text: perplexity (llama-perplexity's protocol) and KL divergence against a reference.

Protocol (tools/perplexity/perplexity.cpp): tokenize the whole text once with BOS; n_chunk = min(chunks,
n_tokens // n_ctx); each chunk is n_ctx tokens with its first token replaced by BOS, evaluated from an empty KV
cache; only the second half is scored: the logits at positions n_ctx/2 .. n_ctx-2 predict the next token. Logits
are requested for exactly those positions. Scoring streams: `score_stream` yields the running record after every
chunk (with standard errors), so a scheduler can stop a hopeless trial early; its last record is the final one.
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from collections.abc import Iterator

import numpy as np

from ..core.errors import CerebellumError
from .llama_runner import LlamaRunner, RunnerConfig
from .logprobs import compare_to_reference, concat_topk, llama_median, llama_percentile, target_logprobs, top_k
from .reference import (
    Reference, ReferenceKey, default_reference_dir, load_reference, save_reference, tokens_digest,
)
from ..core.digests import file_digest
from ..formats.gguf_io import model_digest as _model_digest

DEFAULT_TOP_K = 128  # reference tokens kept exactly per position
DEFAULT_TAIL_SAMPLES = 128  # tokens sampled from the rest of the vocabulary per position (KLD within 1 %: RESULTS)


class ScoreError(CerebellumError):
    pass


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate on: the text, the context size and how many chunks (None: as many as the text holds)."""

    text: str
    n_ctx: int = 512
    n_chunks: int | None = None
    top_k: int = DEFAULT_TOP_K
    tail_samples: int = DEFAULT_TAIL_SAMPLES
    chat: tuple | None = None  # conversations (chat.Conversation): then they are the evaluation, not `text`


@dataclass(frozen=True)
class ScoreRecord:
    """Metrics of one model on one evaluation; KLD fields are None without a reference. `done` marks the final one."""

    model: str
    n_ctx: int
    chunks_done: int
    n_chunks: int
    n_scored: int
    ppl: float
    ppl_se: float
    nll: float
    nll_se: float
    kld: float | None = None
    kld_se: float | None = None
    kld_median: float | None = None
    kld_p90: float | None = None
    kld_p99: float | None = None
    kld_p999: float | None = None
    kld_max: float | None = None
    same_top: float | None = None
    same_top_se: float | None = None
    rms_dp: float | None = None
    rms_dp_se: float | None = None
    reference_ppl: float | None = None
    top_k: int | None = None
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    done: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


def summarize(model: str, spec_n_ctx: int, chunks_done: int, n_chunks: int, nll: np.ndarray,
              cmp: dict | None, reference: Reference | None, seconds: float, n_evaluated: int) -> ScoreRecord:
    """The record for the tokens scored so far (all arrays are per scored token)."""
    nll_mean, nll_se = _mean_se(nll)
    ppl = math.exp(nll_mean)
    rec = ScoreRecord(
        model=model, n_ctx=spec_n_ctx, chunks_done=chunks_done, n_chunks=n_chunks, n_scored=len(nll),
        ppl=ppl, ppl_se=ppl * nll_se, nll=nll_mean, nll_se=nll_se, seconds=seconds,
        tokens_per_second=n_evaluated / seconds if seconds > 0 else 0.0, done=chunks_done == n_chunks,
    )
    if cmp is None:
        return rec
    kld = cmp["kld"]
    kld_mean, kld_se = _mean_se(kld)
    same = float(cmp["same_top"].mean())
    dp2 = cmp["delta_p"] ** 2
    ms, ms_se = _mean_se(dp2)
    rms = math.sqrt(ms)
    n = len(kld)
    # percentiles, median and the same-top error as llama-perplexity defines them (logprobs.llama_percentile)
    return replace(
        rec, kld=kld_mean, kld_se=kld_se, kld_median=llama_median(kld), kld_p90=llama_percentile(kld, 0.90),
        kld_p99=llama_percentile(kld, 0.99), kld_p999=llama_percentile(kld, 0.999), kld_max=float(kld.max()),
        same_top=same, same_top_se=math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0, rms_dp=rms,
        rms_dp_se=ms_se / (2 * rms) if rms > 0 else 0.0, reference_ppl=reference.ppl, top_k=reference.key.top_k,
    )


# ---- the chunk protocol -----------------------------------------------------------------------------------------


def plan_chunks(tokens: np.ndarray, n_ctx: int, n_chunks: int | None) -> int:
    if n_ctx < 4 or n_ctx % 2:
        raise ScoreError(f"context size {n_ctx} must be an even number of at least 4 tokens")
    if len(tokens) < 2 * n_ctx:
        raise ScoreError(
            f"the text tokenizes to only {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at least "
            f"{2 * n_ctx} (two contexts): give a longer text or a smaller --ctx"
        )
    available = len(tokens) // n_ctx
    return available if n_chunks is None else max(1, min(n_chunks, available))


def iter_chunk_logits(runner: LlamaRunner, tokens: np.ndarray, chunk_ids: list[int], n_ctx: int):
    """Evaluate chunks (one sequence each); yield (chunk id, logits at positions n_ctx/2 .. n_ctx-2).

    When a group of chunks fits one decode, each yielded array is a view of llama.cpp's output buffer (no copy of
    262k-wide rows): use it before asking for the next one. Chunks longer than a batch are assembled from copies.
    """
    first = n_ctx // 2
    per_chunk = n_ctx - 1 - first
    runner.clear()
    toks, pos, seq, want = [], [], [], []
    for s, c in enumerate(chunk_ids):
        t = tokens[c * n_ctx : (c + 1) * n_ctx].copy()
        if runner.add_bos:
            t[0] = runner.bos
        toks.append(t)
        pos.append(np.arange(n_ctx, dtype=np.int32))
        seq.append(np.full(n_ctx, s, dtype=np.int32))
        w = np.zeros(n_ctx, dtype=bool)
        w[first : n_ctx - 1] = True
        want.append(w)
    toks, pos, seq, want = (np.concatenate(x) for x in (toks, pos, seq, want))
    step = runner.n_batch
    if len(toks) <= step:
        logits = runner.decode(toks, pos, seq, want)  # rows in sequence order, per_chunk rows each
        for s, c in enumerate(chunk_ids):
            yield c, logits[s * per_chunk : (s + 1) * per_chunk]
        return
    parts: list[list[np.ndarray]] = [[] for _ in chunk_ids]
    for a in range(0, len(toks), step):
        logits = runner.decode(toks[a : a + step], pos[a : a + step], seq[a : a + step], want[a : a + step])
        owners = seq[a : a + step][want[a : a + step]]
        for s in np.unique(owners):
            parts[s].append(np.array(logits[owners == s]))  # copy: the buffer is reused by the next decode
    for s, c in enumerate(chunk_ids):
        yield c, np.concatenate(parts[s])


def chunk_logits(runner: LlamaRunner, tokens: np.ndarray, chunk_ids: list[int], n_ctx: int) -> list[np.ndarray]:
    """iter_chunk_logits as a list of copies (for tests and benchmarks)."""
    return [np.array(lg) for _, lg in iter_chunk_logits(runner, tokens, chunk_ids, n_ctx)]


def iter_chat_logits(runner: LlamaRunner, seqs, ids: list[int]):
    """Evaluate conversations (one sequence each, from position 0); yield (conversation id, logits at the positions
    that predict its assistant tokens, those tokens). The logits are a view of llama.cpp's buffer: use them before
    asking for the next."""
    runner.clear()
    toks, pos, seq, want, targets = [], [], [], [], []
    for s, i in enumerate(ids):
        sq = seqs[i]
        n = len(sq.tokens)
        toks.append(sq.tokens)
        pos.append(np.arange(n, dtype=np.int32))
        seq.append(np.full(n, s, dtype=np.int32))
        w = np.zeros(n, dtype=bool)
        w[:-1] = sq.scored[1:]  # the logits at t predict token t + 1
        want.append(w)
        targets.append(sq.tokens[1:][sq.scored[1:]].astype(np.int64))
    logits = runner.decode(*(np.concatenate(x) for x in (toks, pos, seq, want)))
    start = 0
    for i, t in zip(ids, targets):
        yield i, logits[start : start + len(t)], t
        start += len(t)


@dataclass
class _Units:
    """What an evaluation scores, unit by unit, each from an empty context: chunks of a text (llama-perplexity's
    protocol) or whole conversations (assistant tokens only)."""

    digest: str  # of the evaluated tokens (and, for conversations, of which are scored)
    rows: list[int]  # scored positions per unit
    lengths: list[int]  # tokens evaluated per unit
    logits: object  # callable: unit ids -> iterator of (unit, logits rows, target tokens)

    @property
    def n(self) -> int:
        return len(self.rows)

    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.rows)])


def _text_units(runner: LlamaRunner, spec: EvalSpec, tokens: np.ndarray, n_chunks: int) -> _Units:
    per_chunk = spec.n_ctx - 1 - spec.n_ctx // 2

    def logits(ids):
        for c, lg in iter_chunk_logits(runner, tokens, ids, spec.n_ctx):
            yield c, lg, _targets(tokens, c, spec.n_ctx)

    return _Units(tokens_digest(tokens), [per_chunk] * n_chunks, [spec.n_ctx] * n_chunks, logits)


def _chat_units(runner: LlamaRunner, model_path, spec: EvalSpec) -> _Units:
    import hashlib

    from ..formats.catalog import load_catalog
    from .chat import chat_sequences

    template = load_catalog(model_path).kv.get("tokenizer.chat_template")
    seqs = chat_sequences(runner, template, spec.chat, spec.n_ctx, str(model_path))
    seqs = seqs[: spec.n_chunks] if spec.n_chunks else seqs
    h = hashlib.sha256(b"chat")
    for sq in seqs:
        h.update(np.ascontiguousarray(sq.tokens, dtype=np.int32).tobytes() + np.packbits(sq.scored).tobytes())
    return _Units(h.hexdigest(), [sq.n_scored for sq in seqs], [len(sq.tokens) for sq in seqs],
                  lambda ids: iter_chat_logits(runner, seqs, ids))


def _units(runner: LlamaRunner, model_path, spec: EvalSpec, reference: Reference | None) -> _Units:
    if spec.chat:
        return _chat_units(runner, model_path, spec)
    if reference is not None and reference.tokens is not None:  # a llama-perplexity file: its tokens
        if reference.key.n_ctx != spec.n_ctx or (reference.n_vocab and reference.n_vocab != runner.n_vocab):
            raise ScoreError(f"the reference {reference.model_path} was made with context {reference.key.n_ctx} "
                             f"and {reference.n_vocab} vocabulary entries; this run has context {spec.n_ctx} and "
                             f"a model of {runner.n_vocab}: use --ctx {reference.key.n_ctx} and the same tokenizer")
        return _text_units(runner, spec, np.asarray(reference.tokens), reference.key.n_chunks)
    tokens = runner.tokenize(spec.text, add_bos=True)
    return _text_units(runner, spec, tokens, plan_chunks(tokens, spec.n_ctx, spec.n_chunks))


def _targets(tokens: np.ndarray, chunk: int, n_ctx: int) -> np.ndarray:
    first = n_ctx // 2
    return tokens[chunk * n_ctx + first + 1 : (chunk + 1) * n_ctx].astype(np.int64)


# ---- public API ---------------------------------------------------------------------------------------------------


def score_stream(model_path: str | os.PathLike, spec: EvalSpec, reference: Reference | None = None,
                 config: RunnerConfig | None = None, runner: LlamaRunner | None = None) -> Iterator[ScoreRecord]:
    """Yield the running ScoreRecord after each group of chunks; the last one has done=True."""
    own = runner is None
    if own:
        runner = LlamaRunner(model_path, config or RunnerConfig(n_ctx=spec.n_ctx))
    try:
        units = _units(runner, model_path, spec, reference)
        if reference is not None:
            reference.check(ReferenceKey("", units.digest, spec.n_ctx, units.n, reference.key.top_k,
                                         reference.key.tail_samples))
        offsets = units.offsets()
        n_seq = runner.config.n_seq
        nll_parts, cmp_parts = [], []
        started = time.perf_counter()
        for g in range(0, units.n, n_seq):
            ids = list(range(g, min(units.n, g + n_seq)))
            for u, logits, targets in units.logits(ids):
                if reference is None:
                    nll_parts.append(-target_logprobs(logits, targets))
                    continue
                cmp = compare_to_reference(logits, reference.topk.rows(slice(offsets[u], offsets[u + 1])), targets)
                nll_parts.append(-cmp.target_logprob)
                cmp_parts.append(cmp)
            done = ids[-1] + 1
            merged = None
            if cmp_parts:
                merged = {f: np.concatenate([getattr(p, f) for p in cmp_parts])
                          for f in ("kld", "same_top", "delta_p")}
            yield summarize(str(model_path), spec.n_ctx, done, units.n, np.concatenate(nll_parts), merged,
                            reference, time.perf_counter() - started, sum(units.lengths[:done]))
    finally:
        if own:
            runner.close()


def score(model_path, spec: EvalSpec, reference: Reference | None = None,
          config: RunnerConfig | None = None, runner: LlamaRunner | None = None) -> ScoreRecord:
    """The final record (the last one `score_stream` yields); `runner`: a loaded model to reuse."""
    *_, last = score_stream(model_path, spec, reference, config, runner=runner)
    return last


def compute_reference(model_path: str | os.PathLike, spec: EvalSpec, config: RunnerConfig | None = None,
                      model_digest: str | None = None) -> Reference:
    """Run the reference model once over the evaluation and keep its top-K distributions."""
    with LlamaRunner(model_path, config or RunnerConfig(n_ctx=spec.n_ctx)) as runner:
        units = _units(runner, model_path, spec, None)
        parts, nll = [], []
        for g in range(0, units.n, runner.config.n_seq):
            ids = list(range(g, min(units.n, g + runner.config.n_seq)))
            for _, logits, targets in units.logits(ids):
                tk = top_k(logits, spec.top_k, targets, spec.tail_samples)
                parts.append(tk)
                nll.append(-tk.target_logprob.astype(np.float64))
    topk = concat_topk(parts)
    key = ReferenceKey(model_digest or _model_digest(model_path), units.digest, spec.n_ctx, units.n, topk.k,
                       topk.tail_samples)
    return Reference(key, topk, str(model_path), float(math.exp(np.concatenate(nll).mean())))


def reference_for(reference_model: str | None, cache_path: str | None, spec: EvalSpec,
                  config: RunnerConfig | None = None) -> Reference:
    """Load or compute (and cache) the reference for this evaluation.

    --reference-cache PATH alone: the cache must exist and match. --reference REF alone: cached under the default
    reference directory, keyed by model digest, tokens, context, chunks and K. Both: PATH is used as the cache.
    """
    if reference_model is None:
        if cache_path is None:
            raise ScoreError("KL divergence needs --reference REF.gguf or --reference-cache DIR")
        return load_reference(cache_path)
    memo = default_reference_dir() / "digests"
    digest = _model_digest(reference_model, memo)
    if cache_path is not None and Path(cache_path, "meta.json").exists():
        ref = load_reference(cache_path)
        if ref.key.model_digest != digest:
            raise ScoreError(f"reference cache {cache_path} was made with another model than {reference_model}")
        return ref
    ref = compute_reference(reference_model, spec, config, model_digest=digest)
    save_reference(ref, cache_path or default_reference_dir() / ref.key.digest)
    return ref


def llama_reference(path: str | os.PathLike, top_k: int = DEFAULT_TOP_K,
                    tail_samples: int = DEFAULT_TAIL_SAMPLES) -> Reference:
    """The reference in a `llama-perplexity --kl-divergence-base` file, converted once and cached (by the file's
    digest, K and S) in the default reference directory."""
    from .reference import reference_from_llama_logits

    if not Path(path).is_file():
        raise ScoreError(f"{path}: no such llama-perplexity --kl-divergence-base file")
    digest = file_digest(path, default_reference_dir() / "digests")
    cached = default_reference_dir() / f"llama-{digest[:24]}-k{top_k}-s{tail_samples}"
    if (cached / "meta.json").exists():
        return load_reference(cached)
    ref = reference_from_llama_logits(path, top_k, tail_samples, digest)
    save_reference(ref, cached)
    return ref


__all__ = ["EvalSpec", "ScoreRecord", "ScoreError", "score", "score_stream", "compute_reference", "reference_for",
           "llama_reference"]
