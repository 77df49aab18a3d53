"""A process sandbox for untrusted Python programs (HumanEval completions): run one, get a status, never raise.

Each program runs in a fresh child interpreter (``python -I``; nothing of this project is imported there). The child
is started through
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
* a fresh temporary working directory, removed afterwards;
* an unforgeable completion marker: the program counts as "passed" only if it returned normally after its last
  statement. The marker is a random nonce the program cannot read (``_RUNNER``: it comes through a pipe closed
  before the program runs, and an audit hook blocks the ways into the runner's memory), so a program that prints
  or writes a marker and exits early is "failed".

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

Failures are data: every run gives a :class:`RunResult`, never an exception.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("passed", "failed", "timeout", "error", "killed")


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program run.

    status: "passed" (ran to its end and exited 0), "failed" (nonzero exit: assertion, exception, MemoryError
    under the memory limit, ...; or exit 0 before the end), "timeout" (wall-clock deadline or CPU-time limit),
    "killed" (ended by another signal, e.g. SIGXFSZ at the file-size limit, SIGSEGV, SIGKILL), "error" (the
    sandbox itself could not run it).
    detail: a one-line reason, then the tail of stderr and stdout (empty when passed).
    """

    status: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


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
PR_SET_NO_NEW_PRIVS = 38
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
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
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
                    status_w: int, nonce_r: int, done_w: int) -> list[str]:
    cfg = {
        "status_fd": status_w, "unshare": plan.unshare, "mounts": plan.mounts, "workdir": workdir,
        "uid": uid, "gid": uid, "no_new_privs": plan.no_new_privs,
        "tmpfs_dirs": [d for d in _WORLD_WRITABLE_DIRS if os.path.isdir(d) and not os.path.islink(d)],
        "workdir_bytes": limits.workdir_bytes, "tmpfs_bytes": limits.tmpfs_bytes,
        "rlimits": _rlimits(timeout, limits, uid is not None),
        "argv": [plan.python, "-I", "-B", "-c", _RUNNER, str(nonce_r), str(done_w)],
    }
    return [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, marshal.dumps(cfg).hex()]


# The interpreter the bootstrap execs runs this trusted runner first (`python -I -B -c _RUNNER NONCE_FD DONE_FD`).
# It reads the run's secret nonce from a pipe and closes it, before any program code runs, so the nonce is in no
# file, argument or environment variable the program could read; it lives only in a local of `_main`. Then it
# makes the process non-dumpable (other processes of the uid, the program's own children included, can no longer
# read its memory through ptrace or /proc/PID/mem) and installs an audit hook (which Python code cannot remove)
# that refuses the ways Python offers into another frame's locals or raw memory: frame and traceback-frame access,
# trace/profile hooks, gc's object walks, ctypes, /proc/*/mem. It runs program.py and writes the nonce to the done
# pipe only if the program returned normally: an early exit, a crash or an exception never count as passed, and a
# program cannot forge the marker. (A program can still win by returning objects that compare equal to anything:
# that is HumanEval's own weakness, not the sandbox's.)
_RUNNER = r"""
import os, sys


def _guard(event, args, _blocked=frozenset((
        "sys._getframe", "sys._getframemodulename", "sys._current_frames", "sys._current_exceptions",
        "sys.settrace", "sys.setprofile", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents")), _frames=frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back")),
        _mem=("/mem", "/pagemap", "/kcore")):
    if event in _blocked or event.startswith("ctypes.") or (event == "object.__getattr__" and args[1] in _frames):
        raise ValueError("sandbox: " + event + " is not available to HumanEval programs")
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0]) if not isinstance(args[0], str) else args[0]
        if path.startswith("/proc/") and path.endswith(_mem) or path in ("/dev/mem", "/dev/kmem"):
            raise PermissionError("sandbox: " + path + " is not available to HumanEval programs")


def _main():
    PR_SET_DUMPABLE = 4
    nonce_fd, done_fd = int(sys.argv[1]), int(sys.argv[2])
    nonce = b""
    while True:
        chunk = os.read(nonce_fd, 64)
        if not chunk:
            break
        nonce += chunk
    os.close(nonce_fd)
    write = os.write
    try:
        import ctypes
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except Exception:
        pass
    with open("program.py", "rb") as f:
        code = compile(f.read(), "program.py", "exec")
    sys.argv = ["program.py"]
    sys.addaudithook(_guard)
    exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
    write(done_fd, nonce)


_main()
"""


def _kill_all(proc: subprocess.Popen, plan: _Plan, uid: int | None) -> bool:
    """SIGKILL the process group and (with a sandbox uid) every process of the uid, then reap the leader.
    False if some process of the uid survived."""
    _kill_group(proc.pid)  # the leader is not reaped yet, so its id cannot have been reused
    survived = uid is not None and not kill_uid(uid, plan.python)
    proc.kill()
    proc.wait()
    return not survived


def _supervise(proc: subprocess.Popen, pipes: _Pipes, plan: _Plan, uid: int | None, timeout: float,
               start: float, nonce: bytes) -> _RunOutcome:
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
                       completed=bytes(pipes.done) == nonce, stdout=pipes.out.text(), stderr=pipes.err.text())


def _run_sandboxed(source: str, plan: _Plan, timeout: float, limits: SandboxLimits,
                   uid: int | None) -> _RunOutcome:
    """Run `source` once under `plan`; everything the program started is dead when this returns."""
    workdir = tempfile.mkdtemp(prefix="crsbx-")
    (status_r, status_w), (done_r, done_w), (nonce_r, nonce_w) = os.pipe(), os.pipe(), os.pipe()
    nonce = os.urandom(16).hex().encode()
    os.write(nonce_w, nonce)  # 32 bytes: always fits the pipe's buffer
    os.close(nonce_w)
    proc = None
    start = time.monotonic()
    try:
        program = Path(workdir, "program.py")
        program.write_text(source, encoding="utf-8", errors="surrogatepass")
        program.chmod(0o644)
        if uid is not None and not plan.mounts:
            os.chown(workdir, uid, uid)
        argv = _bootstrap_argv(plan, workdir, uid, timeout, limits, status_w, nonce_r, done_w)
        env = {"PATH": _SAFE_PATH, "LANG": _LANG, "HOME": workdir}
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(status_w, done_w, nonce_r), start_new_session=True)
        for fd in (status_w, done_w, nonce_r):  # only the child holds them: EOF on our ends when it is gone
            os.close(fd)
        status_w = done_w = nonce_r = -1
        return _supervise(proc, _Pipes(proc, status_r, done_r, limits), plan, uid, timeout, start, nonce)
    except Exception as exc:  # noqa: BLE001  (the host side failed: report it, never raise)
        if proc is not None and proc.returncode is None:
            _kill_all(proc, plan, uid)
        return _RunOutcome(setup_error=f"sandbox: {exc!r}", seconds=time.monotonic() - start)
    finally:
        if proc is not None:
            proc.stdout.close()
            proc.stderr.close()
        for fd in (status_r, status_w, done_r, done_w, nonce_r):
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
    for plan in (_Plan(sys.executable, uid_drop=False, unshare=user_ns | CLONE_NEWNS, mounts=True),
                 _Plan(sys.executable, uid_drop=False, unshare=user_ns, mounts=False),
                 _Plan(sys.executable, uid_drop=False, unshare=0, mounts=False)):
        seen = _probe(plan)
        if seen:
            return plan, seen, notes
    return (_Plan(sys.executable, uid_drop=False, unshare=0, mounts=False,
                  refusal="the sandbox does not start on this machine"), {}, notes)


def _choose_root_plan() -> tuple[_Plan, dict, list[str]]:
    """As root: the first interpreter that runs as a sandbox uid, with as many namespaces as work. Refuses
    (every run an "error") rather than run programs as root."""
    notes: list[str] = []
    for python in _interpreter_candidates():
        host = _host_view(python)
        # A python that cannot read its own installation as the sandbox uid (e.g. one under /root) may still
        # start with another stdlib found elsewhere: insist on the version and prefix root sees.
        for plan in (_Plan(python, uid_drop=True, unshare=CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC, mounts=True),
                     _Plan(python, uid_drop=True, unshare=CLONE_NEWNET | CLONE_NEWIPC, mounts=False),
                     _Plan(python, uid_drop=True, unshare=0, mounts=False)):
            seen = _probe(plan)
            if seen and host and (seen["version"], seen["prefix"]) == (host["version"], host["prefix"]):
                if seen["version"] != sys.version.split()[0]:
                    notes.append(f"programs run with Python {seen['version']} ({python}), not this "
                                 f"interpreter's {sys.version.split()[0]}")
                return plan, seen, notes
        notes.append(f"{python} does not run as an unprivileged uid (its installation is not readable by others)")
    refusal = ("no Python interpreter on this machine runs as an unprivileged uid, and programs are never run as "
               "root: set CEREBELLUM_RAY_SANDBOX_PYTHON to an interpreter that every user can read and execute")
    return _Plan(sys.executable, uid_drop=False, unshare=0, mounts=False, refusal=refusal), {}, notes


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


_SIGNAL_REASONS = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit",
                   signal.SIGKILL: "SIGKILL", signal.SIGSEGV: "segmentation fault"}


def _tail(text: str, n: int) -> str:
    text = text.rstrip()
    return text if len(text) <= n else "..." + text[-n:]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _classify(o: _RunOutcome, timeout: float) -> RunResult:
    def result(status: str, reason: str) -> RunResult:
        detail = reason
        if status != "passed":
            if o.stderr.strip():
                detail += "\n--- stderr (tail) ---\n" + _tail(o.stderr, 2000)
            if o.stdout.strip():
                detail += "\n--- stdout (tail) ---\n" + _tail(o.stdout, 1000)
            if o.leftovers:
                detail += "\n(warning: processes of the sandbox uid survived the kill)"
        return RunResult(status, detail, round(o.seconds, 4))

    if o.setup_error:
        return result("error", f"sandbox setup failed: {o.setup_error}")
    if o.timed_out:
        return result("timeout", f"wall-clock limit of {timeout:g} s exceeded")
    rc = o.returncode if o.returncode is not None else -signal.SIGKILL
    if rc == 0:
        if o.completed:
            return result("passed", "")
        return result("failed", "exit status 0 before the program's end (exit() or similar before the tests finished)")
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


def run_python(source: str, timeout: float = 10.0, limits: SandboxLimits | None = None) -> RunResult:
    """Run Python `source` once in the sandbox (see the module docstring).

    timeout: wall-clock seconds, finite and positive (the CPU-time limit is ceil(timeout) + 1). Never raises for
    anything the program does: crashes, limits and sandbox failures come back as a RunResult.
    """
    start = time.monotonic()
    try:
        if not isinstance(source, str):
            raise TypeError(f"the program must be a str, not {type(source).__name__}")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        plan = _current_plan()
        if plan.refusal:
            return RunResult("error", f"sandbox unavailable: {plan.refusal}", 0.0)
        limits = limits or SandboxLimits()
        if plan.uid_drop:
            with _uid_slot(plan.python) as uid:
                outcome = _run_sandboxed(source, plan, timeout, limits, uid)
        else:
            outcome = _run_sandboxed(source, plan, timeout, limits, None)
        return _classify(outcome, timeout)
    except Exception as exc:  # noqa: BLE001  (failures are data)
        return RunResult("error", f"sandbox error: {exc!r}", round(time.monotonic() - start, 4))


__all__ = [
    "Isolation", "RunResult", "STATUSES", "SandboxLimits", "kill_uid", "run_python", "sandbox_isolation",
    "sandbox_uid_processes",
]
