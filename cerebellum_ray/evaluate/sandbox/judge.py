"""The TRUSTED judge of a HumanEval run: the dataset's test against a proxy of the program, and the verdict.

Runs in a judge process (forked by judge_server.py), never in the program's; it executes no byte of untrusted code.
How it decides: ``exec(prompt)`` alone (helpers such as ``poly`` or ``encode_cyclic`` come from the dataset text,
never from the completion), bind ``candidate`` and the entry point's global name (HumanEval/33's test calls
``sort_third`` directly) to a proxy, ``exec(test)``, call ``check(proxy)``. Each call of the proxy goes to the
program as a message and comes back as a value decoded by wire.decode: builtin values and Opaque only, so no object
of the program's choosing (no ``__eq__`` that is always True), no code, ever reaches the test.

The verdict is "passed" iff ``check`` returned normally AND the channel was never poisoned: a protocol violation,
an answer over the size limits, the program's end, a call that ended the program (SystemExit), a time limit.
Poisoning raises a BaseException subclass (a test's ``except Exception`` cannot swallow it) and is sticky (not even
a bare ``except:`` that carries on can turn it into a pass). The program's exit status, stdout, stderr and timing
mean nothing to the verdict.
"""

import builtins
import os
import select
import time

from .wire import Opaque, WireError, decode, encode, frame

__all__ = ["CandidateException", "Channel", "Poisoned", "judge"]

STATUSES = ("passed", "failed", "timeout", "error")
# exceptions the program may raise in the test by name; the others arrive as CandidateException. StopIteration
# would end a test's iteration over map(candidate, ...) early instead of failing it, so it is not passed through.
_PASSED_THROUGH = frozenset(("StopIteration", "StopAsyncIteration"))
BUILTIN_EXCEPTIONS = {name: cls for name, cls in vars(builtins).items()
                      if isinstance(cls, type) and issubclass(cls, Exception) and name not in _PASSED_THROUGH}


class Poisoned(BaseException):
    """The channel is unusable: not an Exception, so test code's ``except Exception`` cannot swallow it."""

    def __init__(self, status, reason, detail):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


class CandidateException(Exception):
    """An exception the program raised whose class is not a builtin one: carries its name and message."""


class Channel:
    """The judge's end of the two pipes: requests out, answers in, with the size and time limits."""

    def __init__(self, req_fd, resp_fd, job):
        self.req, self.resp = req_fd, resp_fd
        os.set_blocking(req_fd, False)  # a program that stops reading cannot block the judge's writes
        self.start = time.monotonic()
        self.deadline = self.start + float(job["timeout_s"])
        self.per_call = float(job.get("call_timeout_s") or job["timeout_s"])
        self.max_answer, self.max_total = int(job["answer_bytes"]), int(job["answers_total_bytes"])
        self.bytes_in = self.calls = self.mutations = self.next_id = 0
        self.ready = False
        self.poison = None        # the Poisoned that ended the channel; once set, the verdict can only be that
        self.raised = None        # the last exception raised on the program's behalf (for the detail)

    def fail(self, status, reason, detail):
        if self.poison is None:
            self.poison = Poisoned(status, reason, detail)
        raise self.poison

    # -- reading and writing ---------------------------------------------------------------------------------

    def _read_exact(self, n, until):
        buf = bytearray()
        while len(buf) < n:
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.resp], [], [], left)[0]:
                return None
            chunk = os.read(self.resp, min(n - len(buf), 1 << 20))
            if not chunk:
                self.fail("failed", "program_ended", "the program's process ended before the tests finished")
            buf += chunk
        return bytes(buf)

    def receive(self, limit_s):
        until = min(self.deadline, time.monotonic() + limit_s)
        head = self._read_exact(4, until)
        if head is None:
            self._timeout(until)
        size = int.from_bytes(head, "big")
        if size > self.max_answer or self.bytes_in + size > self.max_total:
            self.fail("failed", "too_large", f"an answer of {size} bytes exceeds the size limits "
                      f"({self.max_answer} per answer, {self.max_total} in all)")
        body = self._read_exact(size, until)
        if body is None:
            self._timeout(until)
        self.bytes_in += 4 + size
        try:
            message = decode(body)
        except WireError as e:
            self.fail("failed", "protocol", f"protocol violation: {e}")
        if type(message) is not tuple or not message or type(message[0]) is not str:
            self.fail("failed", "protocol", "protocol violation: a message is a tuple (kind, ...)")
        return message

    def _timeout(self, until):
        which = f"wall-clock limit of {self.deadline - self.start:g} s" if until >= self.deadline else \
            f"time limit of {self.per_call:g} s per call"
        self.fail("timeout", "timeout", f"{which} exceeded")

    def send(self, data):
        """Write one framed message, within the run's deadline."""
        while data:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.fail("timeout", "timeout", f"wall-clock limit of {self.deadline - self.start:g} s exceeded")
            if select.select([], [self.req], [], left)[1]:
                try:
                    data = data[os.write(self.req, data[: 1 << 16]):]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    self.fail("failed", "program_ended", "the program's process ended before the tests finished")

    # -- the protocol ----------------------------------------------------------------------------------------

    def ensure_ready(self):
        """Wait for the program's "ready" (once): its prompt + completion loaded."""
        if self.ready:
            return
        message = self.receive(self.deadline - time.monotonic())
        if message == ("ready",):
            self.ready = True
            return
        if message[0] == "load_error" and len(message) == 3:
            what = ": ".join(map(str, message[1:3]))[:500]
            self.fail("failed", "load_error", f"the program raised while loading: {what}")
        self.fail("failed", "protocol", "protocol violation: expected the ready message")

    def call(self, name, args, kwargs):
        if self.poison is not None:
            raise self.poison
        self.ensure_ready()
        self.calls += 1
        self.next_id += 1
        cid = self.next_id
        request = ("call", cid, name, tuple(args), dict(kwargs))
        try:
            data = frame(encode(request, strict=True))
        except (TypeError, WireError) as e:
            self.fail("error", "design_limit", "design limit: the test passes an argument that cannot be sent to "
                      f"the program ({e})")
        self.send(data)
        return self._result(cid, args, self.receive(self.per_call))

    def _result(self, cid, args, message):
        if len(message) < 3 or type(message[1]) is not int or message[1] != cid:
            self.fail("failed", "protocol", f"protocol violation: not an answer to call {cid}")
        kind, mut = message[0], message[-1]
        if kind == "ok" and len(message) == 4:
            result = message[2]
        elif kind == "exc" and len(message) == 6 and type(message[2]) is str and type(message[3]) is str \
                and type(message[4]) is bool:
            result = None
        elif kind == "unencodable" and len(message) == 4 and type(message[2]) is str:
            result = Opaque("unencodable", message[2][:200])  # like an honest non-literal object: equal to nothing
        else:
            self.fail("failed", "protocol", "protocol violation: a malformed answer")
        self._write_back(args, mut)
        if kind == "exc":
            self._raise(*message[2:5])
        return result

    def _write_back(self, args, mut):
        if mut is None:
            return
        if type(mut) is not tuple or len(mut) != len(args):
            self.fail("failed", "protocol", "protocol violation: a bad record of changed arguments")
        for orig, new in zip(args, mut):
            self.mutations += write_back(orig, new)

    def _raise(self, name, text, fatal):
        if fatal:
            self.fail("failed", "program_exited", f"the program ended itself ({name}) before the tests finished")
        cls = BUILTIN_EXCEPTIONS.get(name)
        self.raised = cls(text) if cls is not None else CandidateException(f"{name}: {text}")
        raise self.raised


def write_back(orig, new):
    """Copy an in-place change of a mutable argument into the judge's own object (its identity kept): what the
    test sees afterwards is what it would see in one process. Top-level lists, dicts, sets, bytearrays only."""
    if type(orig) is not type(new) or orig == new:
        return 0
    if type(orig) in (list, bytearray):
        orig[:] = new
    elif type(orig) in (dict, set):
        orig.clear()
        orig.update(new)
    else:
        return 0
    return 1


def _test_line(exc, test_source):
    """'test line N: <source>' of the innermost frame of the test's code in the traceback, or ''."""
    line, tb = 0, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<test>":
            line = tb.tb_lineno
        tb = tb.tb_next
    lines = test_source.splitlines()
    if not 0 < line <= len(lines):
        return ""
    return f"test line {line}: {lines[line - 1].strip()[:200]}"


def _failure(ch, exc, test_source):
    what = f"{type(exc).__name__}: {str(exc)[:300]}" if str(exc) else type(exc).__name__
    if exc is ch.raised:
        what = "the program raised " + what
    where = _test_line(exc, test_source)
    return f"test failed: {what}" + (f" ({where})" if where else "")


def judge(job, req_fd, resp_fd):
    """The verdict of one run: a dict with status (passed|failed|timeout|error), reason, detail, calls, bytes_in,
    mutations, seconds. `job`: prompt, test, entry_point, timeout_s, call_timeout_s, answer_bytes,
    answers_total_bytes."""
    ch = Channel(req_fd, resp_fd, job)
    entry = job["entry_point"]

    def candidate(*args, **kwargs):
        return ch.call(entry, args, kwargs)

    candidate.__name__ = candidate.__qualname__ = entry
    check = None
    try:
        namespace = {"__name__": "__judge__", "__builtins__": builtins}
        exec(compile(job["prompt"], "<prompt>", "exec"), namespace)
        namespace[entry] = candidate
        exec(compile(job["test"], "<test>", "exec"), namespace)
        check = namespace["check"]
    except Poisoned:
        pass
    except BaseException as e:  # noqa: BLE001  (a problem whose prompt or test does not load)
        if ch.poison is None:
            return _verdict(ch, "error", "judge_error", f"the problem does not load: {type(e).__name__}: {e}")
    try:
        if check is not None:
            check(candidate)
            ch.ensure_ready()  # a program that does not load fails even where the test calls nothing
    except Poisoned:
        pass  # ch.poison says what happened
    except BaseException as e:  # noqa: BLE001  (an assertion or anything else: a failure)
        if ch.poison is None:
            return _verdict(ch, "failed", "test_failed", _failure(ch, e, job["test"]))
    if ch.poison is not None:
        return _verdict(ch, ch.poison.status, ch.poison.reason, ch.poison.detail)
    return _verdict(ch, "passed", "passed", "")


def _verdict(ch, status, reason, detail):
    return {"status": status, "reason": reason, "detail": detail, "calls": ch.calls, "bytes_in": ch.bytes_in,
            "mutations": ch.mutations, "seconds": round(time.monotonic() - ch.start, 4)}
