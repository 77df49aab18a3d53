"""The sandbox package: its layout (sandbox-side files import only the standard library and load from source where
nothing of the project is importable), the wire format, and the judge's channel against a scripted program."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict, namedtuple
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from cerebellum_ray.evaluate.sandbox import judge as judge_module
from cerebellum_ray.evaluate.sandbox.supervise import HERE, loader_source, source_text
from cerebellum_ray.evaluate.sandbox.wire import MAX_DEPTH, Opaque, WireError, decode, encode, frame

# the modules that run inside a sandbox (the program's, the judge's) or before it (the bootstrap)
SANDBOX_SIDE = ("bootstrap", "wire", "child", "judge", "judge_server")


# ---- layout ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", SANDBOX_SIDE)
def test_sandbox_side_modules_import_only_the_standard_library(module):
    tree = ast.parse((HERE / f"{module}.py").read_text())
    outside = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            outside += [a.name for a in node.names if a.name.split(".")[0] not in sys.stdlib_module_names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module.split(".")[0] not in sys.stdlib_module_names:
                outside.append(node.module)
            if node.level > 0 and (node.level > 1 or (node.module or "") not in SANDBOX_SIDE):
                outside.append("." * node.level + (node.module or ""))
    assert outside == []


def test_the_check_finds_a_foreign_import(tmp_path):
    """The AST walk above is not vacuous: it sees imports inside functions too."""
    tree = ast.parse("def f():\n    import numpy\n    from ..core import errors\n")
    found = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert len(found) == 2


@pytest.mark.parametrize("modules", [("wire", "child"), ("wire", "judge", "judge_server")])
def test_sandbox_side_loads_from_source_with_nothing_of_the_project(modules, tmp_path):
    """What a sandboxed interpreter sees: `python -I -S` in an empty directory, the modules from their text."""
    code = loader_source(modules) + "print(__import__('json').dumps(sorted(sys.modules)))\n"
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    res = subprocess.run([python, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60, check=True)
    loaded = json.loads(res.stdout)
    ours = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names and m != "__main__"]
    assert sorted(ours) == sorted(["cerebellum_sandbox"] + [f"cerebellum_sandbox.{m}" for m in modules])
    assert not any(m.startswith("cerebellum_ray") for m in loaded)


def test_the_bootstrap_reports_setup_errors(tmp_path):
    """python -I -S -c <bootstrap.py> CONFIG: an impossible setup step comes back on the status pipe, exit 126."""
    import marshal

    status_r, status_w = os.pipe()
    cfg = {"status_fd": status_w, "program": "absent.py", "unshare": 0, "mounts": False, "workdir": str(tmp_path),
           "uid": None, "gid": None, "no_new_privs": False, "tmpfs_dirs": [], "workdir_bytes": 0, "tmpfs_bytes": 0,
           "rlimits": [], "argv": ["/bin/true"]}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", source_text("bootstrap"), marshal.dumps(cfg).hex()],
                          cwd=tmp_path, pass_fds=(status_w,), timeout=60)
    os.close(status_w)
    with os.fdopen(status_r, "rb") as f:
        message = f.read().decode()
    assert proc.returncode == 126
    assert message.startswith("read program: FileNotFoundError")


def test_package_init_imports_nothing():
    tree = ast.parse((HERE / "__init__.py").read_text())
    assert [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and n.module != "__future__"] == []
    code = ("import sys, cerebellum_ray.evaluate.sandbox as s\n"
            "print([m for m in sys.modules if m.startswith('cerebellum_ray.evaluate.sandbox.')])\n"
            "s.SandboxLimits\nprint([m for m in sys.modules if m.startswith('cerebellum_ray.evaluate.sandbox.')])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    before, after = res.stdout.splitlines()
    assert before == "[]" and after == "['cerebellum_ray.evaluate.sandbox.config']"


def test_old_names_resolve_through_the_old_shim():
    import cerebellum_ray.sandbox as old
    from cerebellum_ray.evaluate.sandbox import probe, results

    assert old.RunResult is results.RunResult and old._interpreter_candidates is probe.interpreter_candidates
    assert "os.execv" in old._BOOTSTRAP and "def serve" in old._RUNNER
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


# ---- the wire format ---------------------------------------------------------------------------------------------


ROUND_TRIP = [
    None, True, False, 0, -1, 255, -(1 << 80), 10 ** 5000, 0.1, -0.0, math.inf, -math.inf, 1e-310, "", "héllo \udcff",
    b"\x00\xff", bytearray(b"ab"), [], [1, [2, [3]]], (), (1, "a"), {1: "a", (2, 3): {4}, frozenset({5}): b""},
    {"k": [1.5, None]}, {1, 2}, frozenset(), 1 + 2j, range(1, 10, 3), Fraction(1, 3), Decimal("1.10"),
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: type(v).__name__)
def test_builtin_values_round_trip_exactly(value):
    for strict in (False, True):
        back = decode(encode(value, strict=strict))
        assert type(back) is type(value) and back == value
        assert encode(back) == encode(value)  # -0.0 stays -0.0, dict and set order are kept


def test_nan_round_trips():
    assert math.isnan(decode(encode(math.nan)))


def test_program_side_encoding_of_other_values():
    P = namedtuple("P", "a b")
    assert decode(encode(P(1, 2))) == (1, 2) and type(decode(encode(P(1, 2)))) is tuple
    assert type(decode(encode(Counter("aab")))) is dict and decode(encode(OrderedDict(a=1))) == {"a": 1}
    assert list(decode(encode(x * x for x in range(4)))) == [0, 1, 4, 9]
    back = decode(encode(map(int, "12")))
    assert type(back).__name__ == "list_iterator" and list(back) == [1, 2]

    class Yes:
        def __eq__(self, other):
            return True

    opaque = decode(encode(Yes()))
    assert isinstance(opaque, Opaque) and opaque.type_name == "Yes"
    assert opaque != 42 and not (opaque == opaque.text) and opaque == opaque

    class Seven(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    assert type(decode(encode(Seven(7)))) is int and decode(encode(Seven(7))) != 8


def test_strict_encoding_refuses_what_is_not_a_builtin_value():
    for value in (lambda: 0, object(), iter([1]), [len]):
        with pytest.raises(TypeError):
            encode(value, strict=True)


def _ok(*rest: bytes) -> bytes:
    return b"t" + len(rest).to_bytes(4, "big") + b"".join(rest)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "ends inside"), (b"N!", "trailing"), (b"x", "unknown tag"), (b"l\xff\xff\xff\xff", "count larger"),
    (b"l\x00\x00\x00\x01" * (MAX_DEPTH + 2) + b"N", "nested deeper"), (b"f\x03xyz", "ValueError"),
    (b"d\x00\x00\x00\x01l\x00\x00\x00\x00T", "unhashable"), (b"s\x00\x00\x00\x02\xff\xfe", "UnicodeDecodeError"),
    (b"o" + encode("bool") + encode(True), "opaque needs two str"), (b"r" + encode(1) + encode(2) + encode(0), "arg 3"),
    (b"q" + encode(1) + encode(0), "ZeroDivisionError"), (b"f\x05ab", "ends inside"),
])
def test_the_decoder_refuses_malformed_bytes(data, message):
    with pytest.raises(WireError, match=message):
        decode(data)


def test_deep_nesting_in_the_limit_decodes():
    value = None
    for _ in range(MAX_DEPTH):
        value = [value]
    assert decode(encode(value)) == value
    with pytest.raises(WireError):
        encode([value, [[value]]])


# ---- the judge against a scripted program ----------------------------------------------------------------------------

PROMPT = 'def add(a, b):\n    """a + b"""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"


def _judge_with(answers, test=TEST, prompt=PROMPT, **job):
    """Run judge.judge in this process against a thread that reads the requests and writes `answers` (raw bytes
    each, or a callable of the request giving them)."""
    (req_r, req_w), (resp_r, resp_w) = os.pipe(), os.pipe()
    job = {"prompt": prompt, "test": test, "entry_point": "add", "timeout_s": 5.0, "call_timeout_s": 5.0,
           "answer_bytes": 1 << 20, "answers_total_bytes": 4 << 20, **job}

    def program():
        with os.fdopen(req_r, "rb") as req, os.fdopen(resp_w, "wb", buffering=0) as resp:
            try:
                resp.write(frame(encode(("ready",))))
                for answer in answers:
                    head = req.read(4)
                    if len(head) < 4:
                        return
                    request = decode(req.read(int.from_bytes(head, "big")))
                    resp.write(answer(request) if callable(answer) else answer)
            except BrokenPipeError:
                pass  # the judge had its verdict already

    thread = threading.Thread(target=program, daemon=True)
    thread.start()
    try:
        return judge_module.judge(job, req_w, resp_r)
    finally:
        os.close(req_w)
        os.close(resp_r)
        thread.join(5)


def _answer(value, mut=None):
    return lambda request: frame(encode(("ok", request[1], value, mut)))


def test_honest_answers_pass_and_wrong_ones_fail_at_the_test_line():
    assert _judge_with([_answer(3), _answer(4)])["status"] == "passed"
    verdict = _judge_with([_answer(3), _answer(5)])
    assert (verdict["status"], verdict["reason"]) == ("failed", "test_failed")
    assert verdict["detail"] == "test failed: AssertionError (test line 3: assert candidate(2, 2) == 4)"


@pytest.mark.parametrize(("answers", "reason"), [
    ([lambda r: frame(encode(("ok", r[1] + 1, 3, None)))], "protocol"),          # not the pending call's id
    ([lambda r: frame(encode(("ok", r[1], 3)))], "protocol"),                     # malformed envelope
    ([lambda r: frame(encode(("ok", r[1], 3, (1, 2, 3))))], "protocol"),          # mutation record of 3 args for 2
    ([lambda r: frame(_ok(encode("ok"), encode(r[1]), b"T", encode(None)) + b"NN")], "protocol"),  # trailing bytes
    ([lambda r: (0x7FFFFFFF).to_bytes(4, "big")], "too_large"),                   # a 2 GiB length header
    ([lambda r: frame(encode(("exc", r[1], "SystemExit", "0", True, None)))], "program_exited"),
    ([lambda r: time.sleep(1.5) or b""], "timeout"),                             # answers nothing in time
])
def test_a_broken_channel_poisons_the_verdict(answers, reason):
    verdict = _judge_with(answers, timeout_s=5.0, call_timeout_s=0.5)
    assert verdict["reason"] == reason and verdict["status"] != "passed"


def test_poison_survives_a_test_that_swallows_everything():
    test = ("def check(candidate):\n    for _ in range(3):\n        try:\n            candidate(1, 2)\n"
            "        except BaseException:\n            pass\n")
    verdict = _judge_with([lambda r: frame(encode(("ok", 99, 3, None)))], test=test)
    assert (verdict["status"], verdict["reason"]) == ("failed", "protocol")


def test_exceptions_arrive_by_builtin_name_and_others_are_candidate_exceptions():
    test = ("def check(candidate):\n    try:\n        candidate(1, 2)\n    except ValueError as e:\n"
            "        assert str(e) == 'no'\n    try:\n        candidate(1, 2)\n    except Exception as e:\n"
            "        assert type(e).__name__ == 'CandidateException' and 'MyErr: x' in str(e)\n")
    answers = [lambda r: frame(encode(("exc", r[1], "ValueError", "no", False, None))),
               lambda r: frame(encode(("exc", r[1], "MyErr", "x", False, None)))]
    assert _judge_with(answers, test=test)["status"] == "passed"
    # StopIteration would end a test's loop over map(candidate, ...) early: it is not passed through by name
    stop = _judge_with([lambda r: frame(encode(("exc", r[1], "StopIteration", "", False, None)))],
                       test="def check(candidate):\n    assert all(map(candidate, [1], [2]))\n")
    assert stop["status"] == "failed" and "CandidateException" in stop["detail"]


def test_in_place_changes_of_arguments_are_written_back():
    test = "def check(candidate):\n    l = [3, 1]\n    assert candidate(l, 0) is None\n    assert l == [1, 3]\n"
    verdict = _judge_with([_answer(None, mut=([1, 3], 0))], test=test)
    assert verdict["status"] == "passed" and verdict["mutations"] == 1


def test_a_function_argument_is_an_error_by_design():
    verdict = _judge_with([], test="def check(candidate):\n    assert candidate(lambda x: x, 1) == 1\n")
    assert (verdict["status"], verdict["reason"]) == ("error", "design_limit")


def test_the_prompt_helpers_and_the_global_name_are_the_judges():
    """The test calls the prompt's helper (never a completion's) and the entry point by its global name."""
    prompt = PROMPT + "\n\ndef helper(x):\n    return x * 10\n"
    test = "def check(candidate):\n    assert add(1, 2) == helper(3) // 10\n"
    assert _judge_with([_answer(3)], test=test, prompt=prompt)["status"] == "passed"


def test_a_problem_that_does_not_load_is_an_error():
    verdict = _judge_with([], test="def check(candidate:\n")
    assert (verdict["status"], verdict["reason"]) == ("error", "judge_error")


# ---- leftovers -------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a process of a sandbox uid)")
def test_a_leftover_is_a_process_of_a_uid_no_run_holds():
    """What the no-strays checks count: a process of a program uid is a leftover once no run holds the uid."""
    from cerebellum_ray.evaluate.sandbox.uids import (kill_uid, sandbox_uid_processes, take_uid,
                                                      unclaimed_sandbox_processes)

    lease = take_uid(sys.executable)
    uid = lease.uid
    code = (f"import os, time\nos.setgroups([])\nos.setresgid({uid}, {uid}, {uid})\n"
            f"os.setresuid({uid}, {uid}, {uid})\ntime.sleep(120)\n")
    sleeper = subprocess.Popen([sys.executable, "-I", "-S", "-c", code])
    try:
        deadline = time.monotonic() + 30
        while sleeper.pid not in sandbox_uid_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.pid in sandbox_uid_processes()
        assert sleeper.pid not in unclaimed_sandbox_processes()  # a run (ours) holds the uid
        lease.release()
        assert sleeper.pid in unclaimed_sandbox_processes()
    finally:
        lease.release()
        kill_uid(uid, sys.executable)
        sleeper.wait()
    assert sleeper.pid not in unclaimed_sandbox_processes()
