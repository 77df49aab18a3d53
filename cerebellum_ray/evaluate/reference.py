"""Reference distributions for KL divergence, computed once and cached on disk.

Per scored token the cache keeps the reference model's top-K token ids and log-probs, the log of the remaining
probability mass, the log-prob of the actual next token, and S token ids sampled from the rest of the vocabulary in
proportion to their probability with their log-probs: 8K + 8S + 8 bytes per token (2,056 at the defaults K = 128,
S = 128), never full logits (a 262k vocabulary needs 0.5 MB per token, as llama-perplexity's own base file does). A
cache is identified by the reference model's digest, the digest of the scored token sequence (text + tokenizer), the
context size, the chunk count, K and S; using it for anything else is refused with a message that says which of these
differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_directory
from ..core.errors import CerebellumError
from .logprobs import TopK

FORMAT_VERSION = 2  # 2: tail samples; 1 (top-K and rest only) still loads (a lower-bound KLD)


class ReferenceMismatch(CerebellumError):
    """A reference cache that does not belong to this evaluation."""


@dataclass(frozen=True)
class ReferenceKey:
    model_digest: str
    tokens_digest: str  # sha256 of the int32 token ids of the whole evaluation text
    n_ctx: int
    n_chunks: int
    top_k: int
    tail_samples: int = 0

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Reference:
    key: ReferenceKey
    topk: TopK
    model_path: str
    ppl: float
    tokens: np.ndarray | None = None  # the evaluation's tokens, when the reference defines them (a llama.cpp file)
    n_vocab: int | None = None

    def check(self, key: ReferenceKey, allow_other_model: bool = True) -> None:
        """Refuse a cache made for other tokens, context, chunks or K (and, if asked, another model)."""
        mine, theirs = asdict(self.key), asdict(key)
        labels = {
            "tokens_digest": "the evaluation tokens differ (another text or another tokenizer)",
            "n_ctx": "the context size differs",
            "n_chunks": "the chunk count differs",
            "top_k": "K differs",
            "tail_samples": "the number of tail samples differs",
            "model_digest": "it was computed with another reference model",
        }
        for field, why in labels.items():
            if field == "model_digest" and allow_other_model:
                continue
            if mine[field] != theirs[field]:
                raise ReferenceMismatch(
                    f"reference cache for {self.model_path} cannot score this run: {why} "
                    f"(cache {field}={mine[field]}, run {field}={theirs[field]}); "
                    "recompute it with --reference REF.gguf"
                )


def tokens_digest(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int32).tobytes()).hexdigest()


def default_reference_dir() -> Path:
    base = os.environ.get("CEREBELLUM_REFERENCE_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cerebellum-ray" / "references"


def save_reference(ref: Reference, path: str | os.PathLike) -> Path:
    """Write the cache directory atomically (a temporary directory renamed into place)."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        meta = {"format": FORMAT_VERSION, "key": asdict(ref.key), "model_path": ref.model_path, "ppl": ref.ppl,
                "n_vocab": ref.n_vocab}
        if ref.tokens is not None:
            np.save(tmp / "tokens.npy", np.asarray(ref.tokens, dtype=np.int32))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        np.save(tmp / "ids.npy", ref.topk.ids)
        np.save(tmp / "logprobs.npy", ref.topk.logprobs)
        np.save(tmp / "log_rest.npy", ref.topk.log_rest)
        np.save(tmp / "target_logprob.npy", ref.topk.target_logprob)
        if ref.topk.tail_ids is not None:
            np.save(tmp / "tail_ids.npy", ref.topk.tail_ids)
            np.save(tmp / "tail_logprobs.npy", ref.topk.tail_logprobs)
    return path


def load_reference(path: str | os.PathLike) -> Reference:
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReferenceMismatch(f"{path} is not a reference cache ({exc})") from None
    if meta.get("format") not in (1, FORMAT_VERSION):
        raise ReferenceMismatch(f"{path}: reference cache format {meta.get('format')} (expected {FORMAT_VERSION})")

    def optional(name):
        return np.load(path / name, mmap_mode="r") if (path / name).exists() else None

    topk = TopK(
        ids=np.load(path / "ids.npy", mmap_mode="r"),
        logprobs=np.load(path / "logprobs.npy", mmap_mode="r"),
        log_rest=np.load(path / "log_rest.npy", mmap_mode="r"),
        target_logprob=np.load(path / "target_logprob.npy", mmap_mode="r"),
        tail_ids=optional("tail_ids.npy"),
        tail_logprobs=optional("tail_logprobs.npy"),
    )
    return Reference(ReferenceKey(**meta["key"]), topk, meta["model_path"], float(meta["ppl"]),
                     tokens=optional("tokens.npy"), n_vocab=meta.get("n_vocab"))


# ---- llama-perplexity's own base file ------------------------------------------------------------------------------

LLAMA_LOGITS_MAGIC = b"_logits_"
LLAMA_LOG_PROB_FLOOR = -16.0  # llama-perplexity leaves base tokens at or below this log-probability out of its KLD


def llama_logits_record_words(n_vocab: int) -> int:
    """uint16 words per scored token in a --kl-divergence-base file: scale and minimum (two float32), one word per
    vocabulary entry, padded to an even count."""
    return 2 * ((n_vocab + 1) // 2) + 4


def reference_from_llama_logits(path: str | os.PathLike, top_k: int, tail_samples: int, digest: str) -> Reference:
    """A Reference read from `llama-perplexity --kl-divergence-base FILE` (its tokens, context and chunks included).

    The file stores, per scored token, the base model's log-probabilities quantized to 16 bits (scale * q + min).
    They are used as llama-perplexity uses them: tokens at or below log-probability -16 are left out and the rest is
    not renormalized; the KLD estimate over them (top K exactly, the rest by sampling) then estimates llama-perplexity's
    own number. Streams one chunk at a time (the file holds ~0.5 MB per token for a 262k vocabulary).
    """
    from .logprobs import concat_topk, sample_tail_from_logprobs

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(20)
        if len(head) < 20 or head[:8] != LLAMA_LOGITS_MAGIC:
            raise ReferenceMismatch(f"{path}: not a llama-perplexity --kl-divergence-base file (no "
                                    f"{LLAMA_LOGITS_MAGIC!r} header)")
        n_ctx, n_vocab, n_chunk = np.frombuffer(head[8:20], dtype="<i4").tolist()
        if n_ctx < 4 or n_vocab < 2 or n_chunk < 1:
            raise ReferenceMismatch(f"{path}: header says n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunk} chunks")
        tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype="<i4").astype(np.int32)
        if tokens.size != n_ctx * n_chunk:
            raise ReferenceMismatch(f"{path}: truncated: {tokens.size} of {n_ctx * n_chunk} tokens")
        first = n_ctx // 2
        per_chunk = n_ctx - 1 - first
        words = llama_logits_record_words(n_vocab)
        parts = []
        for c in range(n_chunk):
            raw = np.frombuffer(f.read(2 * words * per_chunk), dtype="<u2")
            if raw.size != words * per_chunk:
                raise ReferenceMismatch(f"{path}: truncated in chunk {c} of {n_chunk}")
            records = raw.reshape(per_chunk, words)
            header = records[:, :4].copy().view("<f4")  # scale, min_log_prob
            logp = header[:, :1] * records[:, 4 : 4 + n_vocab].astype(np.float32) + header[:, 1:2]
            targets = tokens[c * n_ctx + first + 1 : (c + 1) * n_ctx].astype(np.int64)
            parts.append(sample_tail_from_logprobs(logp, top_k, targets, tail_samples, LLAMA_LOG_PROB_FLOOR))
    topk = concat_topk(parts)
    key = ReferenceKey(digest, tokens_digest(tokens), n_ctx, n_chunk, topk.k, topk.tail_samples)
    ppl = float(np.exp(-np.mean(topk.target_logprob.astype(np.float64))))
    return Reference(key, topk, str(path), ppl, tokens=tokens, n_vocab=n_vocab)


__all__ = [
    "FORMAT_VERSION", "LLAMA_LOGITS_MAGIC", "LLAMA_LOG_PROB_FLOOR", "Reference", "ReferenceKey", "ReferenceMismatch",
    "default_reference_dir", "llama_logits_record_words", "load_reference", "reference_from_llama_logits",
    "save_reference", "tokens_digest"
]
