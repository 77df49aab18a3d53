"""Content digests, and when a remembered digest of a file may be trusted.

Hashing a 50 GB source on every build would cost minutes, so digests of whole files (reference models) and of
every tensor of a source are remembered per *file state*: (real path, size, modification time, change time,
inode, device). The change time (ctime) is the part a user cannot set: rewriting a file in place and restoring its
modification time (``cp -p``, ``touch -r``, an archive extraction over the old file) still moves it, so such a file
is hashed again. What this does not catch: a file changed by someone who can set the system clock back, or a
filesystem that does not keep ctime; ``--no-cache`` (or deleting the cache) hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_CHUNK = 1 << 24


Paths = str | os.PathLike | Sequence[str | os.PathLike]  # one file, or the parts of a split model in order


def _files(paths: Paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def file_state(paths: Paths) -> list:
    """What a remembered digest of a file (or of the parts of a split model) is keyed by (see the docstring)."""
    out = []
    for path in _files(paths):
        st = os.stat(path)
        out.append([os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev])
    return out[0] if isinstance(paths, (str, os.PathLike)) else out


def file_state_key(paths: Paths) -> str:
    return hashlib.sha256(json.dumps(file_state(paths)).encode()).hexdigest()


def file_digest(paths: Paths, memo_dir: Path | None = None) -> str:
    """sha256 of a file's bytes (of all parts, in order, for a split model), remembered in `memo_dir` per state."""
    memo = Path(memo_dir) / f"{file_state_key(paths)}.sha256" if memo_dir else None
    if memo is not None and memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for path in _files(paths):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        from .atomic import write_text

        memo.parent.mkdir(parents=True, exist_ok=True)
        write_text(memo, digest)
    return digest


def vector_digest(v: np.ndarray | None) -> str | None:
    """sha256 of a float32 vector's bytes (None stays None)."""
    if v is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(v, dtype=np.float32).tobytes()).hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = ["file_digest", "file_state", "file_state_key", "text_digest", "vector_digest"]
