"""Reference distributions for KL divergence, computed once and cached on disk.

Per scored token the cache keeps the reference model's top-K token ids and log-probs, the log of the remaining
probability mass and the log-prob of the actual next token: K*8 + 8 bytes per token, never full logits (a 262k
vocabulary would need 0.5 MB per token). A cache is identified by the reference model's digest, the digest of the
scored token sequence (text + tokenizer), the context size, the chunk count and K; using it for anything else is
refused with a message that says which of these differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .logprobs import TopK

FORMAT_VERSION = 1


class ReferenceMismatch(ValueError):
    """A reference cache that does not belong to this evaluation."""


@dataclass(frozen=True)
class ReferenceKey:
    model_digest: str
    tokens_digest: str  # sha256 of the int32 token ids of the whole evaluation text
    n_ctx: int
    n_chunks: int
    top_k: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Reference:
    key: ReferenceKey
    topk: TopK
    model_path: str
    ppl: float

    def check(self, key: ReferenceKey, allow_other_model: bool = True) -> None:
        """Refuse a cache made for other tokens, context, chunks or K (and, if asked, another model)."""
        mine, theirs = asdict(self.key), asdict(key)
        labels = {
            "tokens_digest": "the evaluation tokens differ (another text or another tokenizer)",
            "n_ctx": "the context size differs",
            "n_chunks": "the chunk count differs",
            "top_k": "K differs",
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


def file_digest(path: str | os.PathLike, memo_dir: Path | None = None) -> str:
    """sha256 of a file's bytes, remembered per (real path, size, mtime, inode) in `memo_dir`."""
    st = os.stat(path)
    stat_key = hashlib.sha256(
        json.dumps([os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino]).encode()
    ).hexdigest()
    memo = memo_dir / f"{stat_key}.sha256" if memo_dir else None
    if memo is not None and memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo.parent)
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, memo)
    return digest


def default_reference_dir() -> Path:
    base = os.environ.get("CEREBELLUM_REFERENCE_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cerebellum-ray" / "references"


def save_reference(ref: Reference, path: str | os.PathLike) -> Path:
    """Write the cache directory atomically (a temporary directory renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        meta = {"format": FORMAT_VERSION, "key": asdict(ref.key), "model_path": ref.model_path, "ppl": ref.ppl}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        np.save(tmp / "ids.npy", ref.topk.ids)
        np.save(tmp / "logprobs.npy", ref.topk.logprobs)
        np.save(tmp / "log_rest.npy", ref.topk.log_rest)
        np.save(tmp / "target_logprob.npy", ref.topk.target_logprob)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_reference(path: str | os.PathLike) -> Reference:
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReferenceMismatch(f"{path} is not a reference cache ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ReferenceMismatch(f"{path}: reference cache format {meta.get('format')} (expected {FORMAT_VERSION})")
    topk = TopK(
        ids=np.load(path / "ids.npy", mmap_mode="r"),
        logprobs=np.load(path / "logprobs.npy", mmap_mode="r"),
        log_rest=np.load(path / "log_rest.npy", mmap_mode="r"),
        target_logprob=np.load(path / "target_logprob.npy", mmap_mode="r"),
    )
    return Reference(ReferenceKey(**meta["key"]), topk, meta["model_path"], float(meta["ppl"]))
