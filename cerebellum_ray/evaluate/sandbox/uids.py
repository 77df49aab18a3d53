"""Dedicated unprivileged uids (root only): exclusive slots across threads and processes, and the uid-wide kill.

Each concurrent program runs as its own uid (``SANDBOX_UID_BASE + slot``) and each judge server as another
(``JUDGE_UID_BASE + slot``): ids that exist in no passwd or group file, taken under an flock per uid, so that two
runs (threads or processes) never share one. A uid of its own makes RLIMIT_NPROC effective, forbids signalling or
reading other processes, and lets every leftover process be killed atomically (``kill(-1, SIGKILL)`` sent *as that
uid*, which also reaches processes that left the process group with ``setsid()``). ``nobody`` is deliberately not
used: it is shared with system daemons, so the uid-wide kill would hit them and RLIMIT_NPROC would be shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .config import SAFE_PATH, judge_uids, program_uids

__all__ = ["UidLease", "judge_uid_processes", "kill_uid", "sandbox_uid_processes", "take_uid",
           "unclaimed_sandbox_processes"]


def processes_by_uid(uids: set[int], zombies: bool = False) -> dict[int, list[int]]:
    """{uid: pids} of the processes whose real, effective or saved uid is in `uids` (one scan of /proc); zombies
    only if asked."""
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "Uid:")))
        except (OSError, ValueError):
            continue  # exited meanwhile
        dead = fields.get("State", "Z").split()[0] in ("Z", "X")
        if zombies or not dead:
            for uid in uids.intersection(map(int, fields.get("Uid", "").split()[:3])):
                found.setdefault(uid, []).append(int(entry))
    return found


def pids_of_uids(uids: set[int], zombies: bool = False) -> list[int]:
    """Processes whose real, effective or saved uid is in `uids` (a scan of /proc); zombies only if asked."""
    return sorted({pid for pids in processes_by_uid(uids, zombies).values() for pid in pids})


def pids_of_uid(uid: int, zombies: bool = False) -> list[int]:
    return pids_of_uids({uid}, zombies)


def sandbox_uid_processes(zombies: bool = False) -> list[int]:
    """Processes of any program uid. Between runs no live one exists; zombies (already dead, waiting for init
    to reap them) may linger for a moment after a program that forked."""
    return pids_of_uids(set(program_uids()), zombies)


def unclaimed_sandbox_processes(zombies: bool = False) -> list[int]:
    """Leftovers: processes of a program uid whose slot no live run holds (its lock is free). Unlike
    sandbox_uid_processes, not confused by the runs other processes on this machine have under way."""
    directory = lock_dir()
    left = []
    for uid, pids in processes_by_uid(set(program_uids()), zombies).items():
        fd = try_lock(directory, uid)
        if fd >= 0:  # nobody runs as this uid now: whatever lives is left over
            os.close(fd)
            left += pids
    return sorted(left)


def judge_uid_processes(zombies: bool = False) -> list[int]:
    """Processes of any judge uid: the judge servers of live processes (one each) and their judges."""
    return pids_of_uids(set(judge_uids()), zombies)


def uid_is_free(uid: int) -> bool:
    """No passwd or group entry uses this id."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return False
        except KeyError:
            pass
    return True


def lock_dir() -> Path:
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    path = base / f"cerebellum-ray-sandbox-{os.geteuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"unsafe lock directory {path}")
    return path


def try_lock(directory: Path, uid: int) -> int:
    """An fd holding the exclusive lock of `uid`, or -1 when it is taken or the id belongs to someone."""
    if not uid_is_free(uid):
        return -1
    fd = os.open(directory / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return -1
    return fd


class UidLease:
    """Exclusive use of one uid until release() (or the death of this process, which drops the flock)."""

    def __init__(self, uid: int, fd: int):
        self.uid, self._fd = uid, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def take_uid(python: str, uids: Iterable[int] | None = None, wait_s: float = 120.0) -> UidLease:
    """The first free uid of `uids` (default: the program uids) with no live process, leftovers of a run that
    crashed killed first; a uid whose zombies still count against RLIMIT_NPROC is passed over."""
    candidates = list(program_uids() if uids is None else uids)
    directory = lock_dir()
    deadline = time.monotonic() + wait_s
    while True:
        for uid in candidates:
            fd = try_lock(directory, uid)
            if fd < 0:
                continue
            if pids_of_uid(uid):
                kill_uid(uid, python)
            if pids_of_uid(uid, zombies=True):
                os.close(fd)
                continue
            return UidLease(uid, fd)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free sandbox uid in {candidates[0]}..{candidates[-1]} after {wait_s:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def uid_slot(python: str, wait_s: float = 120.0, uids: Iterable[int] | None = None) -> Iterator[int]:
    """Exclusive use of one uid for a `with` block; yields the uid."""
    lease = take_uid(python, uids, wait_s)
    try:
        yield lease.uid
    finally:
        lease.release()


def kill_uid_commands(uid: int, python: str) -> list[list[str]]:
    """Commands that send SIGKILL to every process of `uid` as that uid: util-linux setpriv + kill where
    present (a few ms), else (and as a second try) a Python one-liner."""
    code = (f"import os\nos.setgroups([])\nos.setresgid({uid}, {uid}, {uid})\nos.setresuid({uid}, {uid}, {uid})\n"
            "try:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass\n")
    commands = [[python, "-I", "-S", "-c", code]]
    setpriv, kill = shutil.which("setpriv", path=SAFE_PATH), shutil.which("kill", path=SAFE_PATH)
    if setpriv and kill:
        commands.insert(0, [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", kill, "-9", "-1"])
    return commands


def kill_uid(uid: int, python: str, attempts: int = 5) -> bool:
    """SIGKILL every process of `uid`: `kill(-1, SIGKILL)` sent by a helper running as that uid, which the
    kernel applies to all of that uid's processes in one pass (forks cannot outrun it). True when none is left.
    The helper drops to the uid itself (Popen(user=...) would rule out vfork and fork this whole process)."""
    commands = kill_uid_commands(uid, python)
    for attempt in range(attempts):
        try:
            subprocess.run(commands[min(attempt, len(commands) - 1)], cwd="/", env={"PATH": SAFE_PATH},
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            pass
        if not pids_of_uid(uid):
            return True
        time.sleep(0.001 * (attempt + 1))
    return False
