"""Content-addressed per-tensor cache on local disk, shared by every builder on a node.

Key: sha256 of (source tensor digest, shape, source type, target type, importance-vector digest, quantizer
version). A trial that changes k tensors of a cached map quantizes only those k. Storage is ``diskcache`` (SQLite
index + one file per entry): entries appear atomically, a key exists at most once, several processes may read and
write at the same time, and the total size is bounded with least-recently-used eviction.

The cache also remembers each source file's per-tensor digests, keyed by (real path, size, mtime, inode), so that a
second build from the same source does not hash it again.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import QUANTIZER_VERSION

DEFAULT_SIZE_LIMIT = 20 * 1024**3


def default_cache_dir() -> Path:
    env = os.environ.get("CEREBELLUM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cerebellum-ray" / "tensors"


def entry_key(src_digest: str, shape: tuple[int, ...], src_type: str, dst_type: str, imatrix_digest: str | None) -> str:
    text = "|".join(
        [src_digest, "x".join(map(str, shape)), src_type, dst_type, imatrix_digest or "-", QUANTIZER_VERSION]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def vector_digest(v: np.ndarray | None) -> str | None:
    if v is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(v, dtype=np.float32).tobytes()).hexdigest()


class TensorCache:
    """Quantized tensors by content key; `get` returns an open binary file or None."""

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        import diskcache

        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(
            str(self.directory),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,  # evict in put(), after the new entry is in, never while a build is reading
            timeout=60,
        )
        self.size_limit = size_limit

    def get(self, key: str) -> BinaryIO | None:
        value = self._cache.get(("q", key), default=None, read=True)
        if value is None:
            return None
        return value if hasattr(value, "read") else io.BytesIO(value)

    def put(self, key: str, data: np.ndarray) -> None:
        self._cache.set(("q", key), io.BufferedReader(io.BytesIO(memoryview(data).cast("B"))), read=True)
        self.evict()

    def evict(self) -> int:
        """Drop least-recently-used entries until the cache is within its size limit; returns entries removed."""
        return self._cache.cull()

    def source_digests(self, stat_key: tuple) -> dict[str, str] | None:
        return self._cache.get(("src", stat_key), default=None)

    def remember_source_digests(self, stat_key: tuple, digests: dict[str, str]) -> None:
        self._cache.set(("src", stat_key), digests)

    @property
    def volume(self) -> int:
        return self._cache.volume()

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()


def copy_stream(src: BinaryIO, dst: BinaryIO) -> int:
    n = 0
    while True:
        chunk = src.read(1 << 22)
        if not chunk:
            return n
        dst.write(chunk)
        n += len(chunk)


__all__ = ["TensorCache", "entry_key", "vector_digest", "default_cache_dir", "copy_stream"]
