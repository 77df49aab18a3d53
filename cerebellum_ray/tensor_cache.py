"""Content-addressed per-tensor cache on local disk, shared by every builder on a node.

Key: sha256 of (source tensor digest, shape, source type, target type, importance-vector digest, quantizer
version). A trial that changes k tensors of a cached map quantizes only those k.

Layout: ``<dir>/q/<key[:2]>/<key>`` holds one quantized tensor's raw bytes; ``<dir>/src/<digest>.json`` holds a
source file's per-tensor digests, keyed by (real path, size, mtime, inode), so a second build from the same source
does not hash it again.

Concurrency without a server: an entry is written to a temporary file, fsynced, then hard-linked to its final name;
``link`` fails if the name exists, so a key is written once and never seen half-written, whatever other builders on
the node do. A hit touches the entry's mtime (least-recently-used order). Eviction, under an exclusive ``flock``,
deletes the oldest entries until the total is within the bound; a reader that already opened an entry keeps reading
it after the unlink (POSIX semantics).

(diskcache was tried first: its cull deletes ten entries per step whatever their size, which empties a cache of
large tensors at once.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
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
        self.directory = Path(directory) if directory else default_cache_dir()
        self.size_limit = int(size_limit)
        self._entries = self.directory / "q"
        self._sources = self.directory / "src"
        self._tmp = self.directory / "tmp"
        for d in (self._entries, self._sources, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        return self._entries / key[:2] / key

    def get(self, key: str) -> BinaryIO | None:
        path = self._path(key)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            self.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # most recently used
        self.hits += 1
        return f

    def put(self, key: str, data: np.ndarray) -> None:
        """Store an entry (a no-op if another builder stored it first), then evict down to the size bound."""
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(memoryview(data).cast("B"))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        self.evict()

    def entries(self) -> list[tuple[int, int, Path]]:
        """(mtime in ns, size, path) of every entry, least recently used first."""
        out = []
        for path in self._entries.glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size, path))
        return sorted(out)

    def evict(self) -> int:
        """Delete least-recently-used entries until the cache is within its size bound; returns entries removed."""
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            removed = 0
            for _, size, path in entries:
                if total <= self.size_limit:
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                total -= size
                removed += 1
            return removed

    def _source_path(self, stat_key: tuple) -> Path:
        return self._sources / (hashlib.sha256(json.dumps(list(stat_key)).encode()).hexdigest() + ".json")

    def source_digests(self, stat_key: tuple) -> dict[str, str] | None:
        try:
            return json.loads(self._source_path(stat_key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def remember_source_digests(self, stat_key: tuple, digests: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(digests, f)
        os.replace(tmp, self._source_path(stat_key))

    @property
    def volume(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def close(self) -> None:
        """Nothing to release; kept so callers can treat the cache as a resource."""


def copy_stream(src: BinaryIO, dst: BinaryIO) -> int:
    n = 0
    while True:
        chunk = src.read(1 << 22)
        if not chunk:
            return n
        dst.write(chunk)
        n += len(chunk)
