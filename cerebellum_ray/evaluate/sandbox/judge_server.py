"""The fork server of judges (trusted): started once per process, forks one judge per run.

The parent starts it through the sandbox's own bootstrap (as a judge uid of its own when root: never a program's
uid, never root; the same namespaces, read-only mounts, private tmpfs, hidepid /proc and no_new_privs as a
program), as ``python -I -S -c <launcher> SOCKET_FD``: the launcher loads this file, judge.py and wire.py from
their source text (nothing of the project is importable there). It is single-threaded and runs nothing of a run
itself: each run arrives on the unix socket as a length-prefixed job (a wire.py dict) with three descriptors
(SCM_RIGHTS): the request pipe's write end, the answer pipe's read end and a fresh verdict pipe's write end. The
server forks; the fork makes itself non-dumpable (judges of one uid cannot ptrace or read one another), points
stdin and stdout at /dev/null (the test's prints cannot mix with anything), sets its CPU and memory limits and a
wall-clock alarm, runs ``judge.judge`` and writes the verdict (a wire.py dict) to the verdict pipe, the one
descriptor of the run that no program holds. The server answers the fork's pid with a pidfd, through which the
parent kills it; every judge starts from the same clean image, so nothing leaks from one run into the next.
"""

import os
import resource
import signal
import socket
import sys

from .judge import judge
from .wire import WireError, decode, encode, frame

__all__ = ["main", "serve"]

PR_SET_DUMPABLE = 4
MAX_JOB_BYTES = 64 << 20


def _not_dumpable():
    try:
        import ctypes
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except Exception:
        pass


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _receive_job(sock):
    """(job dict or None when unusable, [req_w, resp_r, verdict_w] or the fds that came)."""
    head, fds, _, _ = socket.recv_fds(sock, 8, 3)
    if not head:
        raise EOFError
    if len(head) < 8:
        head += _recv_exact(sock, 8 - len(head))
    size = int.from_bytes(head, "big")
    if size > MAX_JOB_BYTES:
        raise EOFError  # not our parent's doing: stop
    data = _recv_exact(sock, size)
    try:
        job = decode(data)
    except WireError:
        job = None
    return (job if type(job) is dict and len(fds) == 3 else None), fds


def _run_judge(job, req_fd, resp_fd, verdict_fd):
    """In the fork: limits, the judge, the verdict; never returns."""
    _not_dumpable()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    seconds = int(float(job["timeout_s"])) + 3
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    memory = int(job["judge_memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    signal.alarm(seconds)  # wall-clock backstop: SIGALRM's default action ends the judge
    try:
        verdict = judge(job, req_fd, resp_fd)
    except BaseException as e:  # noqa: BLE001  (the judge's own failure: an error, never a pass)
        verdict = {"status": "error", "reason": "judge_error", "detail": f"judge: {type(e).__name__}: {e}"}
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this fork's own CPU: its rusage reaches no one else
    verdict["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 6)
    data = frame(encode(verdict, strict=True))
    while data:
        data = data[os.write(verdict_fd, data):]
    os._exit(0)


def _reap(signum=None, frame_=None):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _fork_judge(sock, job, fds):
    """Fork one judge; the pidfd is taken while SIGCHLD is blocked, so the fork cannot be reaped before."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            try:
                _run_judge(job, *fds)
            finally:
                os._exit(1)
        return pid, os.pidfd_open(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def serve(sock):
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            job, fds = _receive_job(sock)
        except (EOFError, OSError):
            return  # the parent is gone: so are we
        pid, pidfd = 0, -1  # 0: refused (an unusable job, or no fork possible now: RLIMIT_NPROC)
        try:
            if job is not None:
                pid, pidfd = _fork_judge(sock, job, fds)
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)
        try:
            socket.send_fds(sock, [pid.to_bytes(8, "big")], [pidfd] if pidfd >= 0 else [])
        except OSError:
            return
        finally:
            if pidfd >= 0:
                os.close(pidfd)


def main(argv):
    _not_dumpable()
    serve(socket.socket(fileno=int(argv[0])))
    sys.exit(0)
