"""Content-addressed per-tensor cache on local disk, shared by every builder on a node.

Key: sha256 of (source tensor digest, shape, source type, target type, importance-vector digest, quantizer
version). A trial that changes k tensors of a cached map quantizes only those k.

Layout: ``<dir>/q/<key[:2]>/<key>`` holds one quantized tensor: a 4096-byte header (magic, format version, payload
size, xxh3-128 checksum of the payload) and then the tensor's raw bytes, starting at a page boundary so that they
can be copied (or reflinked) into an output by the kernel. ``<dir>/src/<state>.json`` holds a source file's
per-tensor digests, keyed by the file's state (``digests.file_state``: path, size, mtime, ctime, inode, device), so
a second build from the same, unchanged source does not hash it again.

What the cache trusts: nothing it has not checked. Every entry is verified when it is read (size and checksum); a
truncated or corrupted entry is dropped with a warning (`CacheWarning`) and the tensor is quantized again.

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
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import xxhash

from .. import QUANTIZER_VERSION
from ..core.atomic import atomic_output, write_text
from ..core.digests import file_state_key

DEFAULT_SIZE_LIMIT = 20 * 1024**3
DIGEST_ALGORITHM = "xxh3-128"  # of source tensors (content addressing, not security): ~10x sha256's speed
ENTRY_HEADER = 4096  # payload offset: a page boundary (reflinks and copy_file_range like aligned ranges)
_MAGIC = b"CRTCACHE"
_FORMAT = 1
_HEADER = struct.Struct("<8sIIQ16s")  # magic, format, reserved, payload bytes, xxh3-128 digest
_READ_STEP = 1 << 24


class CacheWarning(UserWarning):
    """A cache entry failed its check and was dropped (the tensor is quantized again)."""


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


def _checksum(chunks) -> bytes:
    h = xxhash.xxh3_128()
    for c in chunks:
        h.update(c)
    return h.digest()


@dataclass
class CacheHit:
    """A verified entry, open: `n_bytes` of tensor data start at `offset` of `file`."""

    file: BinaryIO
    offset: int
    n_bytes: int

    def __enter__(self) -> CacheHit:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


class TensorCache:
    """Quantized tensors by content key; `get` returns a verified `CacheHit` or None."""

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.size_limit = int(size_limit)
        self._entries = self.directory / "q"
        self._sources = self.directory / "src"
        for d in (self._entries, self._sources):
            d.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = self.dropped = 0

    def _path(self, key: str) -> Path:
        return self._entries / key[:2] / key

    def get(self, key: str, n_bytes: int, what: str = "") -> CacheHit | None:
        """The entry of `key` if it holds exactly `n_bytes` whose checksum matches; a bad entry is dropped."""
        path = self._path(key)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            self.misses += 1
            return None
        problem = _verify(f, n_bytes)
        if problem:
            f.close()
            self._drop(path, f"{problem}", what)
            self.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # most recently used
        f.seek(ENTRY_HEADER)
        self.hits += 1
        return CacheHit(f, ENTRY_HEADER, n_bytes)

    def _drop(self, path: Path, problem: str, what: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.dropped += 1
        warnings.warn(f"tensor cache entry {path} ({what or 'unnamed'}) is damaged ({problem}): dropped, the tensor "
                      "is quantized again", CacheWarning, stacklevel=3)

    def put(self, key: str, data: np.ndarray) -> None:
        """Store an entry (a no-op if another builder stored it first), then evict down to the size bound."""
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        payload = memoryview(np.ascontiguousarray(data)).cast("B")
        header = _HEADER.pack(_MAGIC, _FORMAT, 0, payload.nbytes, _checksum([payload]))
        with atomic_output(path, sync=False, keep_existing=True) as f:  # no fsync: entries are verified when read
            f.write(header + b"\0" * (ENTRY_HEADER - len(header)))
            f.write(payload)
        self.evict()

    def entries(self) -> list[tuple[int, int, Path]]:
        """(mtime in ns, size, path) of every entry, least recently used first (temporary files excluded)."""
        out = []
        for path in self._entries.glob("*/*"):
            if path.name.startswith("."):
                continue
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

    def _source_path(self, source) -> Path:
        return self._sources / f"{file_state_key(source)}-{DIGEST_ALGORITHM}.json"

    def source_digests(self, source) -> dict[str, str] | None:
        """The remembered per-tensor digests of `source` (a file, or the parts of a split model) in its current state,
        or None."""
        try:
            data = json.loads(self._source_path(source).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()) else None

    def remember_source_digests(self, source, digests: dict[str, str]) -> None:
        write_text(self._source_path(source), json.dumps(digests))

    @property
    def volume(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def close(self) -> None:
        """Nothing to release; kept so callers can treat the cache as a resource."""


def _verify(f: BinaryIO, n_bytes: int) -> str:
    """'' when the open entry holds a valid header and exactly n_bytes matching its checksum, else what is wrong."""
    raw = f.read(ENTRY_HEADER)
    if len(raw) < _HEADER.size:
        return f"truncated header ({len(raw)} bytes)"
    magic, fmt, _, payload, digest = _HEADER.unpack_from(raw)
    if magic != _MAGIC or fmt != _FORMAT:
        return "not a cache entry of this version"
    if payload != n_bytes:
        return f"holds {payload} bytes, the tensor needs {n_bytes}"
    size = os.fstat(f.fileno()).st_size
    if size != ENTRY_HEADER + payload:
        return f"file has {size - ENTRY_HEADER} payload bytes, its header says {payload}"
    if _checksum(iter(lambda: f.read(_READ_STEP), b"")) != digest:
        return "checksum mismatch"
    return ""


__all__ = [
    "CacheHit", "CacheWarning", "DEFAULT_SIZE_LIMIT", "DIGEST_ALGORITHM", "ENTRY_HEADER", "TensorCache",
    "default_cache_dir", "entry_key"
]
