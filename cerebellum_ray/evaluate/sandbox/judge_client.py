"""The judge server of this process, seen from the parent: started on first use, one judge forked per run.

The server (judge_server.py) is started through the sandbox's one run path (the bootstrap: namespaces, read-only
mounts, private tmpfs, hidepid /proc, no_new_privs) as a judge uid of its own when root (``JUDGE_UID_BASE +
slot``, held for the server's life under the same kind of lock as the program uids: never a program's uid, never
root), so the dataset's test code is as contained as a program is: a hostile problem file gains nothing either.
Jobs are serialised by a lock (a submission is a fork, a few milliseconds). It ends with this process: the atexit
hook stops it, and if this process dies without it the server sees its socket close and exits.
"""

from __future__ import annotations

import atexit
import os
import resource
import select
import signal
import socket
import subprocess
import threading

from .config import Plan, SandboxLimits, judge_uids
from .supervise import kill_group, make_workdir, remove_tree, sandboxed_argv, start_sandboxed
from .uids import UidLease, kill_uid, take_uid
from .wire import encode

__all__ = ["ForkedJudge", "JudgeServer", "judge_server", "shutdown_judge_server"]

_INF = resource.RLIM_INFINITY
_SETUP_WAIT_S = 60.0


class ForkedJudge:
    """One judge forked by the server: killed through its pidfd (no pid-reuse race; the server, not this
    process, is its parent)."""

    def __init__(self, pid: int, pidfd: int):
        self.pid, self.pidfd = pid, pidfd

    def exited(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def kill(self) -> None:
        if self.pidfd < 0 or self.exited():
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class JudgeServer:
    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._lease: UidLease | None = None
        self._workdir = ""
        self._plan: Plan | None = None
        self._owner = os.getpid()

    @property
    def uid(self) -> int | None:
        return self._lease.uid if self._lease is not None else None

    def submit(self, plan: Plan, job: dict, fds: list[int]) -> ForkedJudge:
        """Fork a judge for `job` with `fds` (request write end, answer read end, verdict write end; this process
        keeps its own copies, to close)."""
        payload = encode(job, strict=True)
        with self._lock:
            self._forget_if_forked()
            for _attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None or self._plan != plan:
                    self._stop()
                    self._start(plan)
                try:
                    return self._send(payload, fds)
                except (OSError, EOFError):
                    self._stop()  # it died (a program of the same user can kill it without root): once more
            raise RuntimeError("the judge server does not answer")

    def _send(self, payload: bytes, fds: list[int]) -> ForkedJudge:
        assert self._sock is not None
        socket.send_fds(self._sock, [len(payload).to_bytes(8, "big")], fds)
        self._sock.sendall(payload)
        head, got, _, _ = socket.recv_fds(self._sock, 8, 1)
        if len(head) != 8:
            raise EOFError("the judge server closed its socket")
        if not got:
            raise RuntimeError("the judge server could not fork a judge (too many at once for its process limit)")
        return ForkedJudge(int.from_bytes(head, "big"), got[0])

    def _forget_if_forked(self) -> None:
        """In a fork of the process that started the server: leave the parent's server alone, start our own."""
        if self._owner != os.getpid():
            if self._sock is not None:
                self._sock.close()
            self._proc = self._sock = self._lease = self._plan = None
            self._workdir = ""
            self._owner = os.getpid()

    def _start(self, plan: Plan) -> None:
        try:
            self._start_server(plan)
        except BaseException:
            self._stop()
            raise

    def _start_server(self, plan: Plan) -> None:
        self._plan = plan
        self._lease = take_uid(plan.python, judge_uids()) if plan.uid_drop else None
        uid = self.uid
        self._workdir = make_workdir(uid, plan, prefix="crjudge-")
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        limits = SandboxLimits(workdir_bytes=1 << 20, tmpfs_bytes=1 << 20)
        # each judge sets its own CPU and memory limits (lower hard limits are always allowed); these bound the
        # server and every judge of it together
        rlimit_list = [("CPU", _INF, _INF), ("AS", 1 << 30, _INF), ("FSIZE", 1 << 20, 1 << 20),
                       ("NOFILE", 256, 256), ("CORE", 0, 0)]
        if uid is not None:  # the server and its judges (one per concurrent run), threads of a test included
            rlimit_list.append(("NPROC", 256, 256))
        argv = sandboxed_argv(plan, ("wire", "judge", "judge_server"), "judge_server", [str(theirs.fileno())],
                              site=False)
        try:
            self._proc, status_r = start_sandboxed(plan, self._workdir, uid, limits, rlimit_list, argv,
                                                   program=None, pass_fds=(theirs.fileno(),), capture=False)
        finally:
            theirs.close()
        try:
            error = _read_status(status_r)
        finally:
            os.close(status_r)
        if error:
            raise RuntimeError(f"the judge server did not start: {error}")
        self._sock.settimeout(30.0)

    def stop(self) -> None:
        with self._lock:
            if self._owner == os.getpid():  # never a parent's server from a fork of it
                self._stop()

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the server's end sees EOF and exits
            self._sock = None
        if self._proc is not None:
            kill_group(self._proc.pid)
            if self.uid is not None and self._plan is not None:
                kill_uid(self.uid, self._plan.python)  # its judges too, wherever they are
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._workdir:
            remove_tree(self._workdir)
            self._workdir = ""


def _read_status(status_r: int) -> str:
    """The bootstrap's status pipe: '' once the exec succeeded (EOF), else its error message."""
    data = b""
    while select.select([status_r], [], [], _SETUP_WAIT_S)[0]:
        chunk = os.read(status_r, 4096)
        if not chunk:
            return data.decode("utf-8", "replace")
        data += chunk
    return f"no answer from its bootstrap in {_SETUP_WAIT_S:.0f} s"


_SERVER = JudgeServer()
atexit.register(_SERVER.stop)


def judge_server() -> JudgeServer:
    return _SERVER


def shutdown_judge_server() -> None:
    """Stop this process's judge server (and every judge of it) now; the next judged run starts a new one."""
    _SERVER.stop()

