"""The one way a sandboxed process is started and supervised: the bootstrap, its output, the deadline, the kill.

Every process that runs in the sandbox (a whole program, a program that answers a judge, the judge server) starts
here: the bootstrap (bootstrap.py's text, run by the caller's interpreter as ``python -I -S -c``) sets up the
isolation and execs the sandboxed interpreter, ``python -I -B -c <launcher>``, which loads the sandbox-side modules
of this package from their source text (nothing of the project is importable or even readable there) and calls one
module's ``main``. The texts are read once per process: every run of a process uses the same code, whatever
happens to the files meanwhile. A run then
collects stdout and stderr (bounded, head and tail kept), waits for its end (the program's exit, or the judge's
verdict pipe), and kills everything it started: the process group, and (with a sandbox uid) every process of the
uid, including those that left the group with ``setsid()``. Nothing the program writes anywhere is parsed here.
"""

from __future__ import annotations

import functools
import marshal
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import LANG, SAFE_PATH, WORLD_WRITABLE_DIRS, Plan, SandboxLimits
from .uids import kill_uid, pids_of_uid

__all__ = ["Outcome", "run_sandboxed", "sandboxed_argv", "start_sandboxed"]

HERE = Path(__file__).resolve().parent
PACKAGE_IN_SANDBOX = "cerebellum_sandbox"  # what the launcher calls the package it loads from source


@functools.cache
def source_text(module: str) -> str:
    """The source of one sandbox-side module of this package."""
    return (HERE / f"{module}.py").read_text(encoding="utf-8")


def loader_source(modules: tuple[str, ...]) -> str:
    """Python source that loads `modules` (in order) from their source text as one package, bound to `pkg`: their
    relative imports work, and no file of the project is read where it runs (the texts travel as literals)."""
    sources = tuple((name, source_text(name)) for name in modules)
    return (
        "import sys, types\n"
        "def _load(package, sources):\n"
        "    pkg = types.ModuleType(package)\n"
        "    pkg.__path__ = []\n"
        "    sys.modules[package] = pkg\n"
        "    for name, text in sources:\n"
        "        module = types.ModuleType(package + '.' + name)\n"
        "        module.__package__, module.__file__ = package, name + '.py'\n"
        "        sys.modules[module.__name__] = module\n"
        "        exec(compile(text, name + '.py', 'exec'), module.__dict__)\n"
        "        setattr(pkg, name, module)\n"
        "    return pkg\n"
        f"pkg = _load({PACKAGE_IN_SANDBOX!r}, {sources!r})\n"
    )


def launcher(modules: tuple[str, ...], entry: str) -> str:
    """``python -c`` text: load `modules`, then call ``<entry>.main(sys.argv[1:])``."""
    return loader_source(modules) + f"pkg.{entry}.main(sys.argv[1:])\n"


def sandboxed_argv(plan: Plan, modules: tuple[str, ...], entry: str, args: list[str], site: bool = True) -> list[str]:
    """The interpreter command the bootstrap execs (site: keep `exit()` and friends, as programs expect)."""
    flags = ["-I", "-B"] if site else ["-I", "-B", "-S"]
    return [plan.python, *flags, "-c", launcher(modules, entry), *args]


def rlimits(timeout: float, limits: SandboxLimits, uid_drop: bool) -> list[tuple[str, int, int]]:
    """A program's limits: CPU ceil(timeout) + 1 s, memory, file size, processes, files, no core dumps."""
    cpu = math.ceil(timeout) + 1
    nproc = limits.max_processes
    if not uid_drop:
        # Without a uid of its own, RLIMIT_NPROC counts every process of the calling user.
        nproc += len(pids_of_uid(os.getuid()))
    return [("CPU", cpu, cpu + 1), ("AS", limits.memory_bytes, limits.memory_bytes),
            ("FSIZE", limits.file_size_bytes, limits.file_size_bytes), ("NPROC", nproc, nproc),
            ("NOFILE", limits.open_files, limits.open_files), ("CORE", 0, 0)]


def bootstrap_argv(plan: Plan, workdir: str, uid: int | None, limits: SandboxLimits, rlimit_list: list,
                   status_w: int, argv: list[str], program: str | None) -> list[str]:
    cfg = {
        "status_fd": status_w, "program": program, "unshare": plan.unshare, "mounts": plan.mounts,
        "workdir": workdir, "uid": uid, "gid": uid, "no_new_privs": plan.no_new_privs,
        "tmpfs_dirs": [d for d in WORLD_WRITABLE_DIRS if os.path.isdir(d) and not os.path.islink(d)],
        "workdir_bytes": limits.workdir_bytes, "tmpfs_bytes": limits.tmpfs_bytes, "rlimits": rlimit_list,
        "argv": argv,
    }
    return [sys.executable, "-I", "-S", "-c", source_text("bootstrap"), marshal.dumps(cfg).hex()]


def make_workdir(uid: int | None, plan: Plan, prefix: str = "crsbx-") -> str:
    workdir = tempfile.mkdtemp(prefix=prefix)
    if uid is not None and not plan.mounts:
        os.chown(workdir, uid, uid)  # no private tmpfs: the program's uid needs its own directory
    return workdir


def start_sandboxed(plan: Plan, workdir: str, uid: int | None, limits: SandboxLimits, rlimit_list: list,
                    argv: list[str], *, program: str | None, pass_fds: tuple[int, ...] = (),
                    capture: bool = True) -> tuple[subprocess.Popen, int]:
    """Start one sandboxed process in its own session; (the process, the read end of its bootstrap's status
    pipe: an error message, or EOF alone once the exec succeeded). `pass_fds` are handed to it (the caller
    closes its own copies); stdout and stderr are pipes when `capture`, else /dev/null."""
    status_r, status_w = os.pipe()
    try:
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        proc = subprocess.Popen(
            bootstrap_argv(plan, workdir, uid, limits, rlimit_list, status_w, argv, program), cwd=workdir,
            env={"PATH": SAFE_PATH, "LANG": LANG, "HOME": workdir}, stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, pass_fds=(status_w, *pass_fds), start_new_session=True)
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)  # only the child holds it now: EOF on our end when it is gone or exec'd
    return proc, status_r


# ---- collecting output --------------------------------------------------------------------------------------------


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


class _Bounded:
    """A small channel's bytes, up to `limit` (the rest dropped)."""

    def __init__(self, limit: int):
        self.data = bytearray()
        self.limit = limit

    def add(self, data: bytes) -> None:
        self.data += data[: max(0, self.limit - len(self.data))]


class _Pipes:
    """The child's stdout and stderr (kept up to a bound), its bootstrap's status pipe (an error message, or
    nothing when the exec succeeded) and, for a judged run, the judge's verdict pipe."""

    def __init__(self, proc: subprocess.Popen, status_r: int, verdict_r: int, limits: SandboxLimits):
        self.out, self.err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
        self.status, self.verdict = _Bounded(4000), _Bounded(1 << 20)
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ, self.out)
        self.sel.register(proc.stderr, selectors.EVENT_READ, self.err)
        self.sel.register(status_r, selectors.EVENT_READ, self.status)
        if verdict_r >= 0:
            self.sel.register(verdict_r, selectors.EVENT_READ, self.verdict)
        self.verdict_r = verdict_r

    def _watching(self, fd: int) -> bool:
        return any(key.fd == fd for key in self.sel.get_map().values())

    def wait_exit(self, pid: int, deadline: float) -> bool:
        """Read until process `pid` exits (True) or the deadline passes (False)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = -1  # no pidfd: poll for the exit instead
        if pidfd >= 0:
            self.sel.register(pidfd, selectors.EVENT_READ, None)
        try:
            while not has_exited(pid):
                if not self._select_until(deadline, 0.01 if pidfd < 0 else None):
                    return False
            return True
        finally:
            if pidfd >= 0:
                self.sel.unregister(pidfd)
                os.close(pidfd)

    def wait_verdict(self, deadline: float) -> bool:
        """Read until the judge closes its verdict pipe (True) or the deadline passes (False)."""
        while self._watching(self.verdict_r):
            if not self._select_until(deadline):
                return False
        return True

    def _select_until(self, deadline: float, poll_s: float | None = None) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for key, _ in self.sel.select(remaining if poll_s is None else min(remaining, poll_s)):
            if key.data is not None:
                self._read(key)
        return True

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
        else:
            key.data.add(data)

    def close(self) -> None:
        self.sel.close()


# ---- the end of a run -----------------------------------------------------------------------------------------------


def has_exited(pid: int) -> bool:
    """True once the child is a zombie; it is not reaped, so its pid (= its process group id) stays reserved."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all(proc: subprocess.Popen, plan: Plan, uid: int | None) -> bool:
    """SIGKILL the process group and (with a sandbox uid) every process of the uid, then reap the leader.
    False if some process of the uid survived."""
    kill_group(proc.pid)  # the leader is not reaped yet, so its id cannot have been reused
    survived = uid is not None and not kill_uid(uid, plan.python)
    proc.kill()
    proc.wait()
    return not survived


def remove_tree(path: str) -> None:
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


@dataclass
class Outcome:
    """What the supervision saw of one run (classified into a RunResult by results.py)."""

    returncode: int | None = None
    timed_out: bool = False
    setup_error: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    leftovers: bool = False
    exited: bool = False       # the program ended by itself before the kill (its returncode is its own)
    verdict: bytes = b""       # judged runs: what the judge wrote on its verdict pipe


def supervise(proc: subprocess.Popen, pipes: _Pipes, plan: Plan, uid: int | None, deadline: float,
              start: float) -> Outcome:
    """Collect output until the end (the program's exit, or the judge's verdict) or the deadline, then kill
    everything left."""
    try:
        if pipes.verdict_r >= 0:
            done = pipes.wait_verdict(deadline)
            pipes.wait_exit(proc.pid, min(deadline, time.monotonic() + 0.1))  # its own exit status, if it ends
        else:
            done = pipes.wait_exit(proc.pid, deadline)
        seconds = time.monotonic() - start
        exited = has_exited(proc.pid)
        clean = kill_all(proc, plan, uid)
        pipes.drain()
    finally:
        pipes.close()
    return Outcome(returncode=proc.returncode, timed_out=not done, seconds=seconds, leftovers=not clean,
                   setup_error=bytes(pipes.status.data).decode("utf-8", "replace"), exited=exited,
                   stdout=pipes.out.text(), stderr=pipes.err.text(), verdict=bytes(pipes.verdict.data))


def run_sandboxed(source: str, plan: Plan, timeout: float, limits: SandboxLimits, uid: int | None,
                  argv: list[str], *, handoff_fds: tuple[int, ...] = (), verdict_r: int = -1,
                  grace_s: float = 0.0) -> Outcome:
    """Run `source` (as program.py) once under `plan` with the sandboxed command `argv`; everything it started is
    dead when this returns. `handoff_fds` go to the program and are closed here; with `verdict_r` the run ends
    when that pipe closes (the judge's verdict), at the latest `timeout + grace_s` after the start."""
    workdir = ""
    proc = None
    start = time.monotonic()
    try:
        workdir = make_workdir(uid, plan)
        program = Path(workdir, "program.py")
        program.write_text(source, encoding="utf-8", errors="surrogatepass")
        program.chmod(0o644)
        start = time.monotonic()
        proc, status_r = start_sandboxed(plan, workdir, uid, limits, rlimits(timeout, limits, uid is not None),
                                         argv, program="program.py", pass_fds=handoff_fds)
        try:
            for fd in handoff_fds:  # only the child holds them: EOF on the other ends when it is gone
                os.close(fd)
            handoff_fds = ()
            return supervise(proc, _Pipes(proc, status_r, verdict_r, limits), plan, uid,
                             start + timeout + grace_s, start)
        finally:
            os.close(status_r)
    except Exception as exc:  # noqa: BLE001  (the host side failed: report it, never raise)
        if proc is not None and proc.returncode is None:
            kill_all(proc, plan, uid)
        return Outcome(setup_error=f"sandbox: {exc!r}", seconds=time.monotonic() - start)
    finally:
        for fd in handoff_fds:
            os.close(fd)
        if proc is not None:
            proc.stdout.close()
            proc.stderr.close()
        if workdir:
            remove_tree(workdir)
