"""Vectorized log-probability arithmetic on logits blocks: no per-token Python loops.

All functions take a block of logits (rows = scored positions, float32) and work row-blockwise so that a 262k
vocabulary never needs more than a few rows' worth of temporary float32 memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROWS_PER_BLOCK = 64
_WIDE_ROWS = 8  # rows per float64 pass over the whole vocabulary (8 x 262k x 8 bytes = 17 MB per array)


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) per row, in float64 for the sum (stable: max subtracted first)."""
    out = np.empty(logits.shape[0], dtype=np.float64)
    for a in range(0, logits.shape[0], ROWS_PER_BLOCK):
        block = logits[a : a + ROWS_PER_BLOCK]
        m = block.max(axis=1, keepdims=True)
        out[a : a + ROWS_PER_BLOCK] = np.log(np.exp(block - m, dtype=np.float32).sum(axis=1, dtype=np.float64)) + m[
            :, 0
        ]
    return out


def target_logprobs(logits: np.ndarray, targets: np.ndarray, lognorm: np.ndarray | None = None) -> np.ndarray:
    """log p(target) per row (float64)."""
    if lognorm is None:
        lognorm = log_normalizer(logits)
    rows = np.arange(len(targets))
    return logits[rows, targets].astype(np.float64) - lognorm


@dataclass(frozen=True)
class TopK:
    """The reference distribution kept per scored token: the top-K tokens exactly, and the rest of the vocabulary
    through its total mass and `S` tokens sampled from it in proportion to their probability (systematic sampling)
    with their log-probabilities, which make the KLD estimate unbiased (see compare_to_reference)."""

    ids: np.ndarray  # (n, K) int32, by decreasing probability
    logprobs: np.ndarray  # (n, K) float32
    log_rest: np.ndarray  # (n,) float32: log(1 - sum of the top-K probabilities), -inf when nothing is left
    target_logprob: np.ndarray  # (n,) float32: log p(actual next token)
    tail_ids: np.ndarray | None = None  # (n, S) int32: tokens outside the top K, drawn with probability p / p_rest
    tail_logprobs: np.ndarray | None = None  # (n, S) float32: their log-probabilities

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def tail_samples(self) -> int:
        return 0 if self.tail_ids is None else int(self.tail_ids.shape[1])

    def rows(self, sl: slice) -> TopK:
        """The records of tokens `sl` (views, no copies)."""
        return TopK(self.ids[sl], self.logprobs[sl], self.log_rest[sl], self.target_logprob[sl],
                    None if self.tail_ids is None else self.tail_ids[sl],
                    None if self.tail_logprobs is None else self.tail_logprobs[sl])

    @property
    def bytes_per_token(self) -> int:
        return 8 * self.k + 8 * self.tail_samples + 8


def _systematic_tail(p: np.ndarray, top_ids: np.ndarray, n_samples: int) -> np.ndarray:
    """Per row of probabilities `p` (rows x vocab, float64), `n_samples` token ids outside `top_ids`, drawn by
    systematic sampling in proportion to p: the points (s + 1/2) / S of the tail's cumulative mass (deterministic,
    stratified: every region of the tail holding 1/S of its mass is represented once)."""
    rest = p.copy()
    np.put_along_axis(rest, top_ids, 0.0, axis=1)
    cum = np.cumsum(rest, axis=1)
    total = cum[:, -1:]
    points = (np.arange(n_samples) + 0.5)[None, :] / n_samples * total
    out = np.empty((p.shape[0], n_samples), dtype=np.int32)
    for r in range(p.shape[0]):
        idx = np.searchsorted(cum[r], points[r], side="right")
        out[r] = np.minimum(idx, p.shape[1] - 1)
    return out


def top_k(logits: np.ndarray, k: int, targets: np.ndarray, tail_samples: int = 0) -> TopK:
    """Top-K of each row's distribution (argpartition, then sorted) and `tail_samples` tokens sampled from the rest,
    computed block by block."""
    lognorm = log_normalizer(logits)
    return sample_tail_from_logprobs(logits, k, targets, tail_samples, floor=-np.inf, lognorm=lognorm)


def sample_tail_from_logprobs(scores: np.ndarray, k: int, targets: np.ndarray, tail_samples: int,
                              floor: float, lognorm: np.ndarray | None = None) -> TopK:
    """TopK records of rows of log-probabilities (`scores`, rows x vocab), or of logits when `lognorm` (their
    per-row normalizers) is given. Entries at or below `floor` count as absent and nothing is renormalized: that is
    how llama-perplexity treats its --kl-divergence-base file (16-bit quantized log-probabilities, floor -16);
    logits use floor -inf."""
    n, v = scores.shape
    k = min(k, v)
    s = tail_samples if k < v else 0
    ids = np.empty((n, k), dtype=np.int32)
    lps = np.empty((n, k), dtype=np.float32)
    rest = np.empty(n, dtype=np.float32)
    tgt = np.empty(n, dtype=np.float32)
    tail = np.empty((n, s), dtype=np.int32)
    tail_lp = np.empty((n, s), dtype=np.float32)
    for a in range(0, n, _WIDE_ROWS):  # float64 over the whole vocabulary: a few rows at a time
        rows = slice(a, min(n, a + _WIDE_ROWS))
        block = scores[rows]
        logp = block.astype(np.float64)
        if lognorm is not None:
            logp -= lognorm[rows, None]
        part = np.argpartition(block, v - k, axis=1)[:, v - k :] if k < v else np.tile(np.arange(v), (len(block), 1))
        order = np.argsort(-np.take_along_axis(block, part, axis=1), axis=1, kind="stable")
        part = np.take_along_axis(part, order, axis=1)
        p = np.where(logp > floor, np.exp(logp), 0.0)
        top = np.take_along_axis(logp, part, axis=1)
        ids[rows] = part
        lps[rows] = np.where(top > floor, top, -np.inf)  # absent for the KLD sum below the floor
        with np.errstate(divide="ignore"):
            rest[rows] = np.log(np.clip(p.sum(axis=1) - np.take_along_axis(p, part, axis=1).sum(axis=1), 0.0, None))
        tgt[rows] = np.take_along_axis(logp, targets[rows, None], axis=1)[:, 0]
        if s:
            drawn = _systematic_tail(p, part, s)
            tail[rows] = drawn
            tail_lp[rows] = np.take_along_axis(logp, drawn, axis=1)
    return TopK(ids, lps, rest, tgt, tail if s else None, tail_lp if s else None)


def concat_topk(parts: list[TopK]) -> TopK:
    """One TopK of the records of several (chunks, in order)."""
    def cat(name):
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    return TopK(*(cat(f) for f in ("ids", "logprobs", "log_rest", "target_logprob", "tail_ids", "tail_logprobs")))


@dataclass(frozen=True)
class TokenComparison:
    """Per scored token: what the model under test does relative to the reference."""

    kld: np.ndarray  # KL(reference || model) estimate (see compare_to_reference), float64
    same_top: np.ndarray  # bool: argmax agrees with the reference's
    delta_p: np.ndarray  # p_model(target) - p_reference(target)
    target_logprob: np.ndarray  # log p_model(target), float64


def compare_to_reference(logits: np.ndarray, ref: TopK, targets: np.ndarray) -> TokenComparison:
    """KL(P_ref || Q) per token, estimated from what the reference keeps.

    With tail samples (the default): exact over the top K, plus p_rest times the mean of (log p - log q) over the
    tail samples, which are drawn in proportion to p: an unbiased estimate of the rest of the sum (and exactly 0 when
    Q = P); the systematic draw keeps its variance small. Without them (older caches): one bucket for the rest of the
    vocabulary, a lower bound by the data processing inequality. bench/RESULTS.md measures both against the exact
    full-vocabulary value and llama-perplexity's.
    """
    n = logits.shape[0]
    kld = np.empty(n, dtype=np.float64)
    same = np.empty(n, dtype=bool)
    tlp = np.empty(n, dtype=np.float64)
    sampled = ref.tail_ids is not None and ref.tail_logprobs is not None
    for a in range(0, n, ROWS_PER_BLOCK):
        sl = slice(a, min(n, a + ROWS_PER_BLOCK))
        block = logits[sl]
        lognorm = log_normalizer(block)
        ids = ref.ids[sl]
        q = np.take_along_axis(block, ids, axis=1).astype(np.float64) - lognorm[:, None]
        p = ref.logprobs[sl].astype(np.float64)
        pe = np.exp(p)
        kld_top = np.where(pe > 0, pe * (p - q), 0.0).sum(axis=1)
        p_rest = np.exp(ref.log_rest[sl].astype(np.float64))
        if sampled:
            q_tail = np.take_along_axis(block, ref.tail_ids[sl], axis=1).astype(np.float64) - lognorm[:, None]
            kld[sl] = kld_top + p_rest * (ref.tail_logprobs[sl].astype(np.float64) - q_tail).mean(axis=1)
        else:
            q_rest = np.clip(1.0 - np.exp(q).sum(axis=1), 1e-30, None)
            with np.errstate(divide="ignore", invalid="ignore"):
                rest_term = np.where(p_rest > 0, p_rest * (np.log(np.clip(p_rest, 1e-30, None)) - np.log(q_rest)),
                                     0.0)
            kld[sl] = np.maximum(kld_top + rest_term, 0.0)
        same[sl] = block.argmax(axis=1) == ids[:, 0]
        tlp[sl] = target_logprobs(block, targets[sl], lognorm)
    delta_p = np.exp(tlp) - np.exp(ref.target_logprob.astype(np.float64))
    return TokenComparison(kld, same, delta_p, tlp)


def llama_percentile(values: np.ndarray, fraction: float) -> float:
    """A percentile as llama-perplexity computes it (tools/perplexity/perplexity.cpp): on the sorted values, linear
    interpolation at position fraction * (n - 1), in float32 arithmetic."""
    v = np.sort(np.asarray(values, dtype=np.float32))
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    pos = np.float32(fraction) * np.float32(len(v) - 1)
    ip = int(pos)
    frac = np.float32(pos - np.float32(ip))
    return float((np.float32(1) - frac) * v[ip] + frac * v[min(ip + 1, len(v) - 1)])


def llama_median(values: np.ndarray) -> float:
    """llama-perplexity's median: the mean of the two middle values for an even count, in float32."""
    v = np.sort(np.asarray(values, dtype=np.float32))
    n = len(v)
    return float(np.float32(0.5) * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


def full_kld(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Exact KL(P_ref || Q) over the whole vocabulary (for measuring the top-K estimate's error)."""
    p = ref_logits.astype(np.float64) - log_normalizer(ref_logits)[:, None]
    q = logits.astype(np.float64) - log_normalizer(logits)[:, None]
    return (np.exp(p) * (p - q)).sum(axis=1)


__all__ = [
    "ROWS_PER_BLOCK", "TokenComparison", "TopK", "compare_to_reference", "concat_topk", "full_kld", "llama_median",
    "llama_percentile", "log_normalizer", "sample_tail_from_logprobs", "target_logprobs", "top_k"
]
