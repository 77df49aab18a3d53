"""Running untrusted code: a whole program (``run_python``) or a function judged by a trusted judge
(``run_judged``, what HumanEval uses). Both go through the same sandboxed start, supervision and kill
(supervise.py); failures are data: every run gives a RunResult, never an exception.
"""

from __future__ import annotations

import math
import os
import time

from .config import Plan, SandboxLimits
from .judge_client import judge_server
from .probe import current_plan, program_argv
from .results import RunResult, classify, classify_judged
from .supervise import Outcome, run_sandboxed, sandboxed_argv
from .uids import uid_slot

__all__ = ["run_judged", "run_python"]

_JUDGE_GRACE_S = 2.0  # the judge enforces the timeout; the parent waits this much longer for a stuck judge


def _check_timeout(timeout: float) -> None:
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")


def _with_uid(plan: Plan, run):
    if plan.uid_drop:
        with uid_slot(plan.python) as uid:
            return run(uid)
    return run(None)


def run_python(source: str, timeout: float = 10.0, limits: SandboxLimits | None = None) -> RunResult:
    """Run Python `source` once in the sandbox as a whole program: "passed" when it exited 0.

    That is how the program ended, not a verdict on it (it may exit 0 whenever it likes): untrusted code is judged
    with :func:`run_judged`. timeout: wall-clock seconds, finite and positive (the CPU-time limit is
    ceil(timeout) + 1). Never raises for anything the program does.
    """
    start = time.monotonic()
    try:
        if not isinstance(source, str):
            raise TypeError(f"the program must be a str, not {type(source).__name__}")
        _check_timeout(timeout)
        plan = current_plan()
        if plan.refusal:
            return RunResult("error", f"sandbox unavailable: {plan.refusal}", 0.0)
        limits = limits or SandboxLimits()
        outcome = _with_uid(plan, lambda uid: run_sandboxed(source, plan, timeout, limits, uid, program_argv(plan)))
        return classify(outcome, timeout)
    except Exception as exc:  # noqa: BLE001  (failures are data)
        return RunResult("error", f"sandbox error: {exc!r}", round(time.monotonic() - start, 4))


def run_judged(prompt: str, completion: str, test: str, entry_point: str, timeout: float = 10.0,
               limits: SandboxLimits | None = None) -> RunResult:
    """Judge `completion`: the sandboxed program runs ``prompt + completion`` only and answers calls of
    `entry_point`; a trusted judge (another process, another uid as root, holding nothing the program can reach)
    runs `test`'s ``check`` against those answers and alone decides the status.

    timeout: wall-clock seconds for the whole run (the program's CPU-time limit is ceil(timeout) + 1; the limit per
    call is limits.call_timeout_s, default the same). Never raises for anything the program does.
    """
    start = time.monotonic()
    try:
        for name, value in (("prompt", prompt), ("completion", completion), ("test", test)):
            if not isinstance(value, str):
                raise TypeError(f"the {name} must be a str, not {type(value).__name__}")
        if not (isinstance(entry_point, str) and entry_point.isidentifier()):
            raise ValueError(f"the entry point must be a Python name, got {entry_point!r}")
        _check_timeout(timeout)
        plan = current_plan()
        if plan.refusal:
            return RunResult("error", f"sandbox unavailable: {plan.refusal}", 0.0)
        limits = limits or SandboxLimits()
        job = {"prompt": prompt, "test": test, "entry_point": entry_point, "timeout_s": float(timeout),
               "call_timeout_s": float(limits.call_timeout_s or timeout), "answer_bytes": limits.answer_bytes,
               "answers_total_bytes": limits.answers_total_bytes, "judge_memory_bytes": limits.judge_memory_bytes}
        outcome = _with_uid(plan, lambda uid: _judged(prompt + completion + "\n", job, plan, timeout, limits, uid))
        return classify_judged(outcome, timeout)
    except Exception as exc:  # noqa: BLE001  (failures are data)
        return RunResult("error", f"sandbox error: {exc!r}", round(time.monotonic() - start, 4))


def _judged(program: str, job: dict, plan: Plan, timeout: float, limits: SandboxLimits,
            uid: int | None) -> Outcome:
    """Three pipes: requests (judge -> program), answers (program -> judge), the verdict (judge -> us). The
    judge holds the verdict's write end and nothing else does; the program gets only its two ends."""
    (req_r, req_w), (resp_r, resp_w), (verdict_r, verdict_w) = os.pipe(), os.pipe(), os.pipe()
    ours = [req_r, req_w, resp_r, resp_w, verdict_r, verdict_w]
    judge = None
    try:
        judge = judge_server().submit(plan, job, [req_w, resp_r, verdict_w])
        for fd in (req_w, resp_r, verdict_w):  # the judge has them now
            os.close(fd)
            ours.remove(fd)
        argv = sandboxed_argv(plan, ("wire", "child"), "child", ["serve", str(req_r), str(resp_w),
                                                                  job["entry_point"]])
        ours.remove(req_r)
        ours.remove(resp_w)  # run_sandboxed closes them, whatever happens
        return run_sandboxed(program, plan, timeout, limits, uid, argv, handoff_fds=(req_r, resp_w),
                             verdict_r=verdict_r, grace_s=_JUDGE_GRACE_S)
    finally:
        if judge is not None:
            judge.kill()
            judge.close()
        for fd in ours:
            os.close(fd)
