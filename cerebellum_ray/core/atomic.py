"""Every file the project writes goes through here: outputs appear complete or not at all, and never replace an input.

Rules (README, "Safety"):

* A file is written to a temporary name beside its target (``.NAME~HOST~PID~RANDOM.partial``), flushed to disk,
  then renamed over the target. An exception (and SIGTERM, which the command line turns into one) removes the
  temporary file and leaves the target as it was. A process killed outright (SIGKILL, an abort inside a C library)
  cannot clean up; the next write to the same target removes leftovers of processes of this host that are gone.
* Several files of one command are committed together (`atomic_group`): all are written first, then renamed in one
  short step that puts the previous files back if a rename fails.
* An output is never one of the command's inputs (`refuse_inputs`: paths compared by device and inode, so a
  symlink or hard link to an input is the input), never a directory, never created in a missing directory, and
  never a file of a result store (`refuse_store_files`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import CerebellumError

PARTIAL_SUFFIX = ".partial"
_SEP = "~"  # separates name, host, pid and random part in temporary names (not in host names or pids)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_STORE_INTERNALS = ("_tune", "_optuna")


class OutputError(CerebellumError):
    """An output that must not or cannot be written (nothing was written)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _directory(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_destination(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output that cannot be written: a missing or read-only directory, a directory."""
    path = Path(path)
    directory = _directory(path)
    if not directory.is_dir():
        raise OutputError(f"cannot write {path}: directory {directory} does not exist (create it first)")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"cannot write {path}: directory {directory} is not writable")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; name a file")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths exist and are one file (same device and inode: symlinks and hard links included)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_inputs(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse to write `out` when it is one of the command's inputs ({what: path}, None entries ignored)."""
    for what, path in inputs.items():
        if path is not None and same_file(out, path):
            how = "" if os.path.realpath(out) == os.path.realpath(path) else " (through a link)"
            raise OutputError(
                f"refusing to write {out}: it is the {what} {path}{how}, which the output would destroy; "
                "write the output to a new file"
            )


def refuse_store_files(out: str | os.PathLike, store_dir: str | os.PathLike | None) -> None:
    """Refuse an output that would replace a file of the result store (a trial row, Tune or Optuna state)."""
    if store_dir is None or not os.path.isdir(store_dir):
        return
    store = Path(os.path.realpath(store_dir))
    target = Path(os.path.realpath(out))
    try:
        inside = target.relative_to(store)
    except ValueError:
        return
    if target.suffix == ".parquet" or (inside.parts and inside.parts[0] in _STORE_INTERNALS):
        raise OutputError(
            f"refusing to write {out}: it is a file of the result store {store_dir}; write outside the store's "
            "rows and its _tune/_optuna folders"
        )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files for `path` left by processes of this host that no longer exist; returns them."""
    path = Path(path)
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}{_SEP}{re.escape(_host())}{_SEP}(\d+){_SEP}[^{_SEP}]*{re.escape(PARTIAL_SUFFIX)}$"
    )
    removed = []
    try:
        names = os.listdir(_directory(path))
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m and not _process_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(_directory(path) / name)
                removed.append(_directory(path) / name)
    return removed


def _new_temp(path: Path) -> Path:
    directory = _directory(path)
    prefix = f".{path.name}{_SEP}{_host()}{_SEP}{os.getpid()}{_SEP}"
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=PARTIAL_SUFFIX, dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: cannot create a file in {directory} ({exc.strerror})") from None
    os.close(fd)
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_mode(tmp: Path, target: Path) -> None:
    """Keep a replaced file's permission bits; a new file gets what open() would give (mkstemp makes 0600)."""
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _name_write_error(exc: OSError, path: Path) -> OSError:
    """A disk-full (or quota, or file-size) error that names the file being written."""
    if exc.errno in _WRITE_ERRNOS and exc.filename is None:
        return OSError(exc.errno, f"{exc.strerror} while writing {path}", str(path))
    return exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, inputs: Mapping[str, str | os.PathLike | None] | None = None,
                keep_existing: bool = False) -> Iterator[Path]:
    """Yield a new, empty temporary file beside `path`; it becomes `path` when the block succeeds.

    The caller may write and close it, and check it (e.g. load it in llama.cpp) before it replaces anything. On any
    error it is removed and `path` is left as it was. `inputs` ({what: path}) are refused as targets.
    `keep_existing`: publish only if `path` does not exist yet (first writer wins, as the tensor cache needs).
    """
    path = check_destination(path)
    refuse_inputs(path, inputs or {})
    remove_stale_partials(path)
    tmp = _new_temp(path)
    try:
        try:
            yield tmp
        except OSError as exc:
            raise _name_write_error(exc, path) from None
        _give_mode(tmp, path)
        if keep_existing:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
        _sync_directory(_directory(path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, sync: bool = True, **kwargs) -> Iterator[BinaryIO]:
    """An open binary file that becomes `path` only if the block succeeds (see atomic_path). `sync`: flush it to
    disk before the rename (off for scratch files deleted after use, such as a trial's GGUF, and for entries that
    are verified when read, such as the tensor cache's)."""
    with atomic_path(path, **kwargs) as tmp:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes, **kwargs) -> Path:
    with atomic_output(path, **kwargs) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return write_bytes(path, text.encode("utf-8"), **kwargs)


@contextlib.contextmanager
def atomic_group(paths: Sequence[str | os.PathLike], *,
                 inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Iterator[list[Path]]:
    """Temporary files for several outputs that are committed together when the block succeeds.

    All targets are checked first (and refused if they are inputs or repeat each other). The commit renames each
    temporary file over its target after keeping a hard link to the previous file; if any rename fails, the targets
    already renamed get their previous files back (or are removed if they had none), so either every target is new
    or every target is as before.
    """
    targets = [check_destination(p) for p in paths]
    for t in targets:
        refuse_inputs(t, inputs or {})
    for i, t in enumerate(targets):
        for other in targets[:i]:
            if os.path.realpath(t) == os.path.realpath(other):
                raise OutputError(f"two outputs of one command are the same file: {t}")
    for t in targets:
        remove_stale_partials(t)
    temps: list[Path] = []
    try:
        for t in targets:
            temps.append(_new_temp(t))
        try:
            yield list(temps)
        except OSError as exc:
            raise _name_write_error(exc, targets[len(temps) - 1]) from None
        _commit(targets, temps)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _commit(targets: list[Path], temps: list[Path]) -> None:
    backups: list[Path | None] = []
    try:
        for t in targets:
            backups.append(_keep_previous(t))
        done: list[int] = []
        try:
            for i, (t, tmp) in enumerate(zip(targets, temps)):
                _give_mode(tmp, t)
                os.replace(tmp, t)
                done.append(i)
        except BaseException:
            for i in reversed(done):
                with contextlib.suppress(OSError):
                    if backups[i] is not None:
                        os.replace(backups[i], targets[i])
                    else:
                        os.unlink(targets[i])
            raise
        for d in {_directory(t) for t in targets}:
            _sync_directory(d)
    finally:
        for b in backups:
            if b is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(b)


def _keep_previous(target: Path) -> Path | None:
    """A hard link to the file `target` names now (None when there is none), for putting it back."""
    if not target.exists():
        return None
    backup = _new_temp(target)
    os.unlink(backup)
    try:
        os.link(target, backup)
    except OSError:  # a filesystem without hard links
        shutil.copy2(target, backup)
    return backup


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A new temporary directory beside `path` that replaces `path` (a directory, or nothing) when the block
    succeeds; on failure it is removed and `path` is left as it was."""
    path = Path(path)
    parent = _directory(path)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_SEP}{_host()}{_SEP}{os.getpid()}{_SEP}", dir=parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}{_SEP}old{_SEP}", dir=parent))
            os.rmdir(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = [
    "OutputError", "PARTIAL_SUFFIX", "atomic_directory", "atomic_group", "atomic_output", "atomic_path",
    "check_destination", "refuse_inputs", "refuse_store_files", "remove_stale_partials", "same_file", "write_bytes",
    "write_text",
]
