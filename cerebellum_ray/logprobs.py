"""Vectorized log-probability arithmetic on logits blocks: no per-token Python loops.

All functions take a block of logits (rows = scored positions, float32) and work row-blockwise so that a 262k
vocabulary never needs more than a few rows' worth of temporary float32 memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROWS_PER_BLOCK = 64


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
    """The reference distribution kept per scored token: top-K ids and log-probs, plus the rest of the mass."""

    ids: np.ndarray  # (n, K) int32, by decreasing probability
    logprobs: np.ndarray  # (n, K) float32
    log_rest: np.ndarray  # (n,) float32: log(1 - sum of the top-K probabilities), -inf when nothing is left
    target_logprob: np.ndarray  # (n,) float32: log p(actual next token)


def top_k(logits: np.ndarray, k: int, targets: np.ndarray) -> TopK:
    """Top-K of each row's distribution (argpartition, then sorted), computed block by block."""
    n, v = logits.shape
    k = min(k, v)
    ids = np.empty((n, k), dtype=np.int32)
    lps = np.empty((n, k), dtype=np.float32)
    rest = np.empty(n, dtype=np.float32)
    tgt = np.empty(n, dtype=np.float32)
    for a in range(0, n, ROWS_PER_BLOCK):
        block = logits[a : a + ROWS_PER_BLOCK]
        lognorm = log_normalizer(block)
        part = np.argpartition(block, v - k, axis=1)[:, v - k :] if k < v else np.tile(np.arange(v), (len(block), 1))
        vals = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        part = np.take_along_axis(part, order, axis=1)
        lp = np.take_along_axis(block, part, axis=1).astype(np.float64) - lognorm[:, None]
        ids[a : a + len(block)] = part
        lps[a : a + len(block)] = lp
        mass = np.exp(lp).sum(axis=1)
        with np.errstate(divide="ignore"):
            rest[a : a + len(block)] = np.log(np.clip(1.0 - mass, 0.0, None))
        tgt[a : a + len(block)] = target_logprobs(block, targets[a : a + len(block)], lognorm)
    return TopK(ids, lps, rest, tgt)


@dataclass(frozen=True)
class TokenComparison:
    """Per scored token: what the model under test does relative to the reference."""

    kld: np.ndarray  # KL(reference || model), top-K + rest-bucket estimate, float64
    same_top: np.ndarray  # bool: argmax agrees with the reference's
    delta_p: np.ndarray  # p_model(target) - p_reference(target)
    target_logprob: np.ndarray  # log p_model(target), float64


def compare_to_reference(logits: np.ndarray, ref: TopK, targets: np.ndarray) -> TokenComparison:
    """KL(P_ref || Q) over the reference's top-K tokens plus one bucket for the rest of the vocabulary.

    Collapsing the tail into one bucket can only lower the divergence (data processing inequality), so this is a
    lower bound of the full-vocabulary KLD; bench/RESULTS.md measures the gap for several K.
    """
    n = logits.shape[0]
    kld = np.empty(n, dtype=np.float64)
    same = np.empty(n, dtype=bool)
    tlp = np.empty(n, dtype=np.float64)
    for a in range(0, n, ROWS_PER_BLOCK):
        sl = slice(a, min(n, a + ROWS_PER_BLOCK))
        block = logits[sl]
        lognorm = log_normalizer(block)
        ids = ref.ids[sl]
        q = np.take_along_axis(block, ids, axis=1).astype(np.float64) - lognorm[:, None]
        p = ref.logprobs[sl].astype(np.float64)
        kld_top = (np.exp(p) * (p - q)).sum(axis=1)
        p_rest = np.exp(ref.log_rest[sl].astype(np.float64))
        q_rest = np.clip(1.0 - np.exp(q).sum(axis=1), 1e-30, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            rest_term = np.where(p_rest > 0, p_rest * (np.log(np.clip(p_rest, 1e-30, None)) - np.log(q_rest)), 0.0)
        kld[sl] = kld_top + rest_term
        same[sl] = block.argmax(axis=1) == ids[:, 0]
        tlp[sl] = target_logprobs(block, targets[sl], lognorm)
    delta_p = np.exp(tlp) - np.exp(ref.target_logprob.astype(np.float64))
    return TokenComparison(np.maximum(kld, 0.0), same, delta_p, tlp)


def full_kld(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Exact KL(P_ref || Q) over the whole vocabulary (for measuring the top-K estimate's error)."""
    p = ref_logits.astype(np.float64) - log_normalizer(ref_logits)[:, None]
    q = logits.astype(np.float64) - log_normalizer(logits)[:, None]
    return (np.exp(p) * (p - q)).sum(axis=1)
