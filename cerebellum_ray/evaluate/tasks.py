"""Task scores for one model: HumanEval pass@1 (batched greedy generation + sandboxed checks) and
multiple-choice accuracy (log-likelihood of each choice, ARC / HellaSwag / MMLU style).

Multiple-choice files are JSONL, one item per line:

    {"id": "arc-1", "prompt": "Question: Which gas do plants take in?\\nAnswer:", "choices": ["oxygen",
     "carbon dioxide", "helium", "neon"], "answer": 1}

`prompt` is the text before the answer; each choice is scored as the continuation " " + choice (no space is
added when the prompt ends in whitespace). `answer` is the index of the correct choice. acc counts the items whose
highest-log-likelihood choice is the answer; acc_norm divides each choice's log-likelihood by its length in bytes
first (lm-evaluation-harness's acc_norm).
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

from ..core.errors import CerebellumError
from .generate import HUMANEVAL_STOPS, continuation_logprobs, generate_greedy
from .llama_runner import LlamaRunner


class TaskError(CerebellumError):
    pass


# ---- multiple choice ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    prompt: str
    choices: tuple[str, ...]
    answer: int


def load_choice_items(path: str | Path) -> list[ChoiceItem]:
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = ChoiceItem(str(row["id"]), str(row["prompt"]), tuple(map(str, row["choices"])), int(row["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TaskError(f"{path}:{n}: not a multiple-choice item ({exc}); expected "
                            '{"id", "prompt", "choices": [...], "answer": index}') from None
        if not 0 <= item.answer < len(item.choices) or len(item.choices) < 2:
            raise TaskError(f"{path}:{n}: answer {item.answer} is not an index of its {len(item.choices)} choices")
        items.append(item)
    if not items:
        raise TaskError(f"{path}: no items")
    return items


@dataclass(frozen=True)
class ChoiceScore:
    n_items: int
    acc: float
    acc_se: float
    acc_norm: float
    acc_norm_se: float
    seconds: float


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def score_choices(runner: LlamaRunner, items: Sequence[ChoiceItem]) -> ChoiceScore:
    started = time.perf_counter()
    pairs, owners = [], []
    for i, item in enumerate(items):
        sep = "" if item.prompt[-1:].isspace() else " "
        for choice in item.choices:
            pairs.append((item.prompt, sep + choice))
            owners.append(i)
    scores = continuation_logprobs(runner, pairs)
    right = right_norm = 0
    k = 0
    for item in items:
        lls = [scores[k + j][0] for j in range(len(item.choices))]
        norm = [ll / max(1, len(c.encode())) for ll, c in zip(lls, item.choices)]
        right += int(max(range(len(lls)), key=lls.__getitem__) == item.answer)
        right_norm += int(max(range(len(norm)), key=norm.__getitem__) == item.answer)
        k += len(item.choices)
    n = len(items)
    return ChoiceScore(n, right / n, _binomial_se(right / n, n), right_norm / n, _binomial_se(right_norm / n, n),
                       time.perf_counter() - started)


# ---- HumanEval ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HumanEvalScore:
    n_problems: int
    passed: int
    pass_at_1: float
    pass_at_1_se: float
    generated_tokens: int
    generate_seconds: float
    check_seconds: float
    completions: tuple[tuple[str, str], ...]  # (task_id, completion)
    outcomes: tuple[tuple[str, bool], ...] = ()  # (task_id, passed), for paired comparisons on the same problems
    loop_share: float = 0.0  # completions that ran to the token limit repeating themselves (see looping)


def looping(tokens: Sequence[int], max_period: int = 32, repeats: int = 3) -> bool:
    """True when a completion ends in a repetition loop: its last `repeats` x p tokens repeat one p-token pattern,
    for some period p <= max_period (the reported failure of low-bit quantizations: "the the the ...", or a line
    written over and over)."""
    t = list(tokens)
    for p in range(1, max_period + 1):
        n = repeats * p
        if len(t) >= n and all(t[-n + i] == t[-n + i + p] for i in range(n - p)):
            return True
    return False


def chat_prompt(model_path: str | Path, problem_prompt: str) -> str:
    """The problem wrapped in the model's own chat template (tokenizer.chat_template in the GGUF)."""
    from ..native.llama import chat_formatter
    from ..formats.catalog import load_catalog

    kv = load_catalog(model_path).kv
    template = kv.get("tokenizer.chat_template")
    if not isinstance(template, str):
        raise TaskError(f"{model_path} has no chat template (tokenizer.chat_template); score HumanEval raw instead")
    formatter = chat_formatter(template, bos_token="", eos_token="")
    message = ("Complete the following Python function. Reply with the code only.\n\n" + problem_prompt)
    return formatter(messages=[{"role": "user", "content": message}]).prompt + problem_prompt


def score_humaneval(runner: LlamaRunner, model_path: str | Path, limit: int | None = None, chat: bool = False,
                    max_new_tokens: int = 384, timeout: float = 10.0, n_workers: int = 2) -> HumanEvalScore:
    from .humaneval import check_completions, load_problems

    problems = load_problems(limit)
    prompts = [chat_prompt(model_path, p.prompt) if chat else p.prompt for p in problems]
    t0 = time.perf_counter()
    gens = generate_greedy(runner, prompts, max_new_tokens=max_new_tokens, stops=HUMANEVAL_STOPS)
    t1 = time.perf_counter()
    completions = [{"task_id": p.task_id, "completion": g.text} for p, g in zip(problems, gens)]
    results = check_completions(problems, completions, n_workers=n_workers, timeout=timeout)
    t2 = time.perf_counter()
    passed = sum(r.passed for r in results)
    n = len(results)
    loops = sum(g.stopped_by == "length" and looping(g.tokens) for g in gens)
    return HumanEvalScore(n, passed, passed / n, _binomial_se(passed / n, n), sum(g.n_tokens for g in gens), t1 - t0,
                          t2 - t1, tuple((c["task_id"], c["completion"]) for c in completions),
                          tuple((r.task_id, r.passed) for r in results), loops / n)


__all__ = [
    "ChoiceItem", "ChoiceScore", "HumanEvalScore", "TaskError", "chat_prompt", "load_choice_items", "looping",
    "score_choices", "score_humaneval"
]
