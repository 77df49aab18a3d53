"""The program's side of the sandbox (UNTRUSTED: everything here runs with the program and can be replaced by it).

The bootstrap execs ``python -I -B -c <launcher>`` which loads this file and wire.py from their source text
(nothing of this project is importable in the sandbox) and calls :func:`main` with one of:

  program                          run program.py as a whole program (the isolation probe, ``run_python``)
  serve REQ_FD RESP_FD ENTRY       run program.py (prompt + completion, never the tests), then answer calls of
                                   ENTRY that the judge sends on REQ_FD, on RESP_FD (dedicated pipes; stdout and
                                   stderr are captured for people and never parsed)

It holds no secret and no descriptor that leads to a verdict: whatever a program finds here by walking frames
(``req_fd``, ``resp_fd``, the namespace), the most it can do is write bytes to RESP_FD, i.e. claim return values,
which is what an honest program does too; the judge decides whether the values are right. The audit hook and the
non-dumpable process stay as defence in depth: they no longer guard anything decisive.

Messages (wire.py values), program -> judge: once ``("ready",)`` or ``("load_error", type name, message)``;
per call ``("ok", id, value, mut)`` | ``("exc", id, type name, message, fatal, mut)`` |
``("unencodable", id, reason, mut)``, where ``mut`` is None or the argument tuple after the call (in-place
changes) and ``fatal`` says the call ended the program (SystemExit and the like). Judge -> program, per call:
``("call", id, name, args tuple, kwargs dict)``.
"""

import os
import sys

from .wire import WireError, decode, encode, frame

__all__ = ["guard", "main", "run_program", "serve"]

PR_SET_DUMPABLE = 4
_FATAL = (SystemExit, KeyboardInterrupt, GeneratorExit)


def guard(event, args, _blocked=frozenset((
        "sys._getframe", "sys._getframemodulename", "sys._current_frames", "sys._current_exceptions",
        "sys.settrace", "sys.setprofile", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents")), _frames=frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back")),
        _mem=("/mem", "/pagemap", "/kcore")):
    """The audit hook (Python code cannot remove it): refuses frame and traceback-frame access, trace and profile
    hooks, gc's object walks, ctypes and /proc/*/mem. Defence in depth since the judge design: the verdict is in
    another process, so reaching this interpreter's frames gives nothing."""
    if event in _blocked or event.startswith("ctypes.") or (event == "object.__getattr__" and args[1] in _frames):
        raise ValueError("sandbox: " + event + " is not available to HumanEval programs")
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0]) if not isinstance(args[0], str) else args[0]
        if path.startswith("/proc/") and path.endswith(_mem) or path in ("/dev/mem", "/dev/kmem"):
            raise PermissionError("sandbox: " + path + " is not available to HumanEval programs")


def _harden():
    """Non-dumpable (no ptrace or /proc/PID/mem by other processes of the uid, the program's own children
    included), then the audit hook (which also closes ctypes, so it comes last)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except Exception:
        pass
    sys.addaudithook(guard)


def _program_namespace():
    sys.argv = ["program.py"]
    return {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}


def run_program():
    """A whole program: its exit status is the result (a traceback and status 1 for an exception)."""
    with open("program.py", "rb") as f:
        code = compile(f.read(), "program.py", "exec")
    _harden()
    exec(code, _program_namespace())


def _describe(exc):
    try:
        text = str(exc)[:2000]
    except BaseException:
        text = "?"
    return type(exc).__name__[:100], text


def _print_traceback(exc):
    """For people (the stderr tail shows in the result): where in the completion the call raised. The C
    implementation of the hook reads the traceback without the attribute access the audit hook refuses."""
    try:
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
    except BaseException:
        pass


class _Pipes:
    def __init__(self, req_fd, resp_fd):
        self.req_fd, self.resp_fd = req_fd, resp_fd

    def send_bytes(self, data):
        data = frame(data)
        while data:
            data = data[os.write(self.resp_fd, data):]

    def send(self, value):
        self.send_bytes(encode(value))

    def _read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(self.req_fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def receive(self):
        """The next request, raw (None once the judge is gone)."""
        head = self._read_exact(4)
        return None if head is None else self._read_exact(int.from_bytes(head, "big"))


def _answer(cid, raw, namespace, name, args, kwargs):
    """The encoded answer to one call, and whether the call ended the program."""
    fatal = False
    try:
        value = namespace[name](*args, **kwargs)
        try:
            parts = [encode("ok"), encode(cid), encode(value)]  # encoded once: an iterator is consumed here
        except (WireError, RecursionError, MemoryError) as e:
            parts = [encode("unencodable"), encode(cid), encode(": ".join(_describe(e)))]
    except BaseException as e:  # the call raised (or iterating its result did)
        fatal = isinstance(e, _FATAL)
        _print_traceback(e)
        parts = [encode(v) for v in ("exc", cid) + _describe(e) + (fatal,)]
    parts.append(_mutations(raw, args))
    return b"t" + len(parts).to_bytes(4, "big") + b"".join(parts), fatal


def _mutations(raw, args):
    """The arguments after the call if it changed them in place (for tests that look at them afterwards)."""
    try:
        if encode(tuple(args)) != encode(decode(raw)[3]):
            return encode(tuple(args))
    except BaseException:
        pass
    return encode(None)


def serve(req_fd, resp_fd, entry):
    """Run program.py, say ready, then answer calls until the judge closes its end."""
    pipes = _Pipes(req_fd, resp_fd)
    namespace = _program_namespace()
    try:
        with open("program.py", "rb") as f:
            code = compile(f.read(), "program.py", "exec")
        _harden()
        exec(code, namespace)
    except BaseException as e:  # SystemExit included: the program ended before serving
        _print_traceback(e)
        pipes.send(("load_error",) + _describe(e))
        os._exit(1)
    pipes.send(("ready",))
    while True:
        raw = pipes.receive()
        if raw is None:
            os._exit(0)
        _, cid, name, args, kwargs = decode(raw)
        answer, fatal = _answer(cid, raw, namespace, name, args, kwargs)
        for stream in (sys.stdout, sys.stderr):  # the program's prints reach the captured output in order
            try:
                stream.flush()
            except BaseException:
                pass
        pipes.send_bytes(answer)
        if fatal:
            os._exit(1)


def main(argv):
    if argv[:1] == ["program"]:
        run_program()
    elif argv[:1] == ["serve"] and len(argv) == 4:
        serve(int(argv[1]), int(argv[2]), argv[3])
    else:
        raise SystemExit("child: usage: program | serve REQ_FD RESP_FD ENTRY")
