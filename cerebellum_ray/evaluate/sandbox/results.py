"""What a run came to: the RunResult, and how an outcome (and a judge's verdict) is classified into one.

A judged run's status comes from the judge's verdict alone; what the program's process did (its exit status, a
signal) only says *why* a run that is not a pass failed, never makes one pass.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass

from .supervise import Outcome
from .wire import WireError, decode

__all__ = ["RunResult", "STATUSES", "classify", "classify_judged"]

STATUSES = ("passed", "failed", "timeout", "error", "killed")
SIGNAL_REASONS = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit",
                  signal.SIGKILL: "SIGKILL", signal.SIGSEGV: "segmentation fault"}
_VERDICT_STATUSES = ("passed", "failed", "timeout", "error")


@dataclass(frozen=True)
class RunResult:
    """Outcome of one run.

    status: "passed" (a judged run: the judge's tests passed; a whole program: it exited 0), "failed" (a test
    failed, the program raised, ended before the tests finished, broke the protocol, ...), "timeout" (wall-clock
    deadline or CPU-time limit), "killed" (the program was ended by another signal, e.g. SIGSEGV), "error" (the
    sandbox or the judge could not run it, or a test argument the design cannot send).
    detail: a one-line reason, then the tail of stderr and stdout (empty when passed).
    calls, judge_cpu_s: judged runs: calls of the entry point, CPU seconds of the judge process.
    """

    status: str
    detail: str
    seconds: float
    calls: int = 0
    judge_cpu_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def tail(text: str, n: int) -> str:
    text = text.rstrip()
    return text if len(text) <= n else "..." + text[-n:]


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _with_output(o: Outcome, status: str, reason: str, **extra) -> RunResult:
    detail = reason
    if status != "passed":
        if o.stderr.strip():
            detail += "\n--- stderr (tail) ---\n" + tail(o.stderr, 2000)
        if o.stdout.strip():
            detail += "\n--- stdout (tail) ---\n" + tail(o.stdout, 1000)
        if o.leftovers:
            detail += "\n(warning: processes of the sandbox uid survived the kill)"
    return RunResult(status, detail, round(o.seconds, 4), **extra)


def _exit_reason(o: Outcome, timeout: float) -> tuple[str, str]:
    """(status, reason) from how the program's process ended."""
    rc = o.returncode if o.returncode is not None else -signal.SIGKILL
    if rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU time limit of {math.ceil(timeout) + 1} s exceeded (SIGXCPU)"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return "killed", f"killed by {name}" + (f" ({SIGNAL_REASONS[sig]})" if sig in SIGNAL_REASONS else "")
    if rc == 0:
        return "passed", ""
    return "failed", f"exit status {rc}: {last_line(o.stderr) or 'no error message'}"


def classify(o: Outcome, timeout: float) -> RunResult:
    """A whole program: passed when it exited 0 (what it did is its own business: no verdict on untrusted
    code, which could exit 0 whenever it likes; HumanEval is judged, see classify_judged)."""
    if o.setup_error:
        return _with_output(o, "error", f"sandbox setup failed: {o.setup_error}")
    if o.timed_out:
        return _with_output(o, "timeout", f"wall-clock limit of {timeout:g} s exceeded")
    return _with_output(o, *_exit_reason(o, timeout))


def parse_verdict(data: bytes) -> dict | None:
    """The judge's verdict (one framed wire.py dict) or None when there is none or it is malformed."""
    if len(data) < 4 or int.from_bytes(data[:4], "big") != len(data) - 4:
        return None
    try:
        verdict = decode(data[4:])
    except WireError:
        return None
    if type(verdict) is not dict or verdict.get("status") not in _VERDICT_STATUSES:
        return None
    if not all(type(verdict.get(k)) is str for k in ("reason", "detail")):
        return None
    return verdict


def classify_judged(o: Outcome, timeout: float) -> RunResult:
    """A judged run: the judge's verdict decides; the program's own end only explains a run that did not pass."""
    if o.setup_error:
        return _with_output(o, "error", f"sandbox setup failed: {o.setup_error}")
    verdict = parse_verdict(o.verdict)
    if verdict is None:
        if o.timed_out:
            return _with_output(o, "timeout", f"wall-clock limit of {timeout:g} s exceeded (no verdict)")
        return _with_output(o, "error", "the judge ended without a verdict")
    status, reason, detail = verdict["status"], verdict["reason"], verdict["detail"]
    if reason == "program_ended" and o.exited:
        how, why = _exit_reason(o, timeout)
        if how == "passed":
            status, detail = "failed", "exit status 0 before the tests finished (exit() or similar in the program)"
        else:
            status, detail = how, why
    extra = {"calls": int(verdict.get("calls") or 0), "judge_cpu_s": float(verdict.get("cpu_s") or 0.0)}
    return _with_output(o, status, detail, **extra)
