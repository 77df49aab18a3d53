"""What a sandboxed run may use (limits), the ids and constants every part shares, and the plan the probe chose.

Data only: nothing here starts a process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "CLONE_NEWIPC", "CLONE_NEWNET", "CLONE_NEWNS", "CLONE_NEWUSER", "JUDGE_UID_BASE", "JUDGE_UID_SLOTS",
    "SANDBOX_UID_BASE", "SANDBOX_UID_SLOTS", "SandboxLimits",
]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. The wall-clock timeout is a separate argument of the check functions."""

    memory_bytes: int = 1 << 30           # RLIMIT_AS of the program
    max_processes: int = 32               # RLIMIT_NPROC for the sandbox uid (threads count too)
    file_size_bytes: int = 16 << 20       # RLIMIT_FSIZE: largest file the program may write
    open_files: int = 256                 # RLIMIT_NOFILE
    output_bytes: int = 64 << 10          # stdout and stderr kept per stream (head and tail)
    workdir_bytes: int = 64 << 20         # size of the private tmpfs working directory (mount namespace only)
    tmpfs_bytes: int = 16 << 20           # size of each private /tmp, /var/tmp, /dev/shm, /run/lock
    answer_bytes: int = 4 << 20           # judged runs: largest single answer of the program to the judge
    answers_total_bytes: int = 16 << 20   # judged runs: all its answers together
    judge_memory_bytes: int = 1 << 30     # judged runs: RLIMIT_AS of the judge (the dataset's test code)
    call_timeout_s: float | None = None   # judged runs: limit per call of the entry point (None: the run's timeout)


# Program uids: one per concurrent sandbox (SANDBOX_UID_BASE + slot). Judge uids: one per process that holds a
# judge server, right after them. Ids that exist in no passwd or group file and own no process (checked).
SANDBOX_UID_BASE = int(os.environ.get("CEREBELLUM_RAY_SANDBOX_UID_BASE", "1900000000"))
SANDBOX_UID_SLOTS = 64
JUDGE_UID_BASE = SANDBOX_UID_BASE + SANDBOX_UID_SLOTS
JUDGE_UID_SLOTS = 64

LANG = "C.UTF-8"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def program_uids() -> range:
    return range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS)


def judge_uids() -> range:
    return range(JUDGE_UID_BASE, JUDGE_UID_BASE + JUDGE_UID_SLOTS)


@dataclass(frozen=True)
class Plan:
    """How to start one sandbox: the choices behind an Isolation (made by the probe)."""

    python: str
    uid_drop: bool
    unshare: int
    mounts: bool
    no_new_privs: bool = True
    refusal: str = ""  # non-empty: no safe way to run programs here; every run is an "error" saying why
