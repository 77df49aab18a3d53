"""Byte ranges of open files: read into a numpy buffer (`pread`), written whole (`pwrite_all`), copied inside the
kernel (`copy_range`). The builder streams tensors with them, the prior and surgery read tensors with them; a
source is read per range, never mapped whole.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from .errors import CerebellumError

_COPY_FALLBACK = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_STEP = 1 << 24  # bytes per pread/pwrite of a fallback copy


class TruncatedFile(CerebellumError):
    """A file ended before a range that its header (or a cache entry) says it holds."""


def pread(fd: int, offset: int, n: int) -> np.ndarray:
    """`n` bytes of `fd` from `offset` as a uint8 array; TruncatedFile if the file ends first."""
    buf = np.empty(n, dtype=np.uint8)
    view = memoryview(buf)
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise TruncatedFile(f"unexpected end of file at offset {offset + done}")
        done += got
    return buf


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of `data` (any buffer) at `offset` of `fd`."""
    view = memoryview(data)
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, n: int) -> None:
    """Copy n bytes between files inside the kernel (os.copy_file_range: no trip through user space, and a reflink
    on filesystems that share blocks, such as XFS and btrfs, when both ranges are block-aligned); falls back to
    pread/pwrite where the kernel cannot."""
    done = 0
    try:
        while done < n:
            got = os.copy_file_range(src_fd, dst_fd, n - done, src_offset + done, dst_offset + done)
            if got <= 0:
                raise TruncatedFile(f"unexpected end of file at offset {src_offset + done} while copying")
            done += got
        return
    except OSError as exc:
        if exc.errno not in _COPY_FALLBACK:
            raise
    for off in range(done, n, _STEP):
        pwrite_all(dst_fd, pread(src_fd, src_offset + off, min(_STEP, n - off)), dst_offset + off)


__all__ = ["TruncatedFile", "copy_range", "pread", "pwrite_all"]
