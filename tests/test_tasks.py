"""Batched generation, continuation log-likelihoods and multiple-choice scoring on the tiny models."""


from pathlib import Path

import numpy as np
import pytest

from cerebellum_ray.evaluate.generate import continuation_logprobs, generate_greedy
from cerebellum_ray.evaluate.llama_runner import LlamaRunner, RunnerConfig
from cerebellum_ray.evaluate.tasks import TaskError, load_choice_items, score_choices

FIXTURES = Path(__file__).parent / "fixtures"
PROMPTS = [f"def add_{i}(a, b):\n    return" for i in range(5)] + ["The quick brown fox", "import os\n"]


@pytest.fixture(scope="module")
def runner(tiny_models):
    with LlamaRunner(tiny_models["llama"], RunnerConfig(n_ctx=192, n_seq=4)) as r:
        yield r


def _full_logits(runner, tokens):
    runner.clear()
    n = len(tokens)
    return np.array(runner.decode(tokens, np.arange(n), 0, np.ones(n, bool)), dtype=np.float64)


def _assert_greedy(runner, prompts, gens):
    for prompt, gen in zip(prompts, gens):
        prompt_tokens = runner.tokenize(prompt)
        chosen = np.array(gen.tokens, dtype=np.int32)
        full = np.concatenate([prompt_tokens, chosen])
        rows = _full_logits(runner, full)[len(prompt_tokens) - 1 : len(full) - 1]
        gap = rows.max(axis=1) - rows[np.arange(len(chosen)), chosen]
        assert gap.max() < 1e-2  # each token was the argmax (up to float noise between batch layouts)


def test_batched_greedy_generation_is_greedy(runner):
    gens = generate_greedy(runner, PROMPTS, max_new_tokens=24, stops=())
    assert len(gens) == len(PROMPTS) and all(g.n_tokens > 0 for g in gens)
    assert all(g.stopped_by == "eog" or (g.n_tokens == 24 and g.stopped_by == "length") for g in gens)
    _assert_greedy(runner, PROMPTS, gens)


def test_continuous_batching_refills_and_compacts_slots(runner, tiny_models, monkeypatch):
    """More prompts than slots and completions of different lengths: finished slots take waiting prompts, then the
    running sequences are moved down to ids 0..k-1; every token must still be the greedy one for its own prompt."""
    moves = []
    real_move = runner.move_sequence
    monkeypatch.setattr(runner, "move_sequence", lambda src, dst: (moves.append((src, dst)), real_move(src, dst)))
    prompts = PROMPTS + [f"x = {i} * y" for i in range(5)]
    stops = ("e",)
    gens = generate_greedy(runner, prompts, max_new_tokens=40, stops=stops)
    lengths = {g.n_tokens for g in gens}
    assert len(lengths) > 2 and {g.stopped_by for g in gens} >= {"stop"}  # the lengths differ: slots free unevenly
    assert moves, "no sequence was moved: the compaction path was not exercised"
    for g in gens:
        assert "e" not in g.text
    _assert_greedy(runner, prompts, gens)
    # the same prompts one at a time in a single-sequence context give the same completions
    with LlamaRunner(tiny_models["llama"], RunnerConfig(n_ctx=192, n_seq=1)) as single:
        alone = generate_greedy(single, prompts, max_new_tokens=40, stops=stops)
    assert [g.text for g in alone] == [g.text for g in gens]


def test_generation_cuts_at_stop_sequences(runner):
    gens = generate_greedy(runner, PROMPTS[:3], max_new_tokens=48, stops=("e",))
    for g in gens:
        assert "e" not in g.text
        assert g.stopped_by in ("stop", "eog", "length")


def test_continuation_logprobs_equal_a_full_pass(runner):
    pairs = [("The quick brown fox", " jumps over"), ("def f(x):", "\n    return x"), ("a", " b c d")]
    got = continuation_logprobs(runner, pairs)
    for (ctx, cont), (ll, n) in zip(pairs, got):
        full = runner.tokenize(ctx + cont)
        head = runner.tokenize(ctx)
        start = next(i for i in range(len(full)) if i >= len(head) or full[i] != head[i])
        logits = _full_logits(runner, full)
        m = logits.max(axis=1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        expected = logp[np.arange(start - 1, len(full) - 1), full[start:]].sum()
        assert n == len(full) - start and ll == pytest.approx(expected, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("name", ["mc_arc_style", "mc_hellaswag_style", "mc_mmlu_style"])
def test_multiple_choice_fixtures_score(runner, name):
    items = load_choice_items(FIXTURES / f"{name}.jsonl")
    result = score_choices(runner, items)
    assert result.n_items == len(items) and 0 <= result.acc <= 1 and 0 <= result.acc_norm <= 1
    # recompute acc independently from the per-choice log-likelihoods
    lls = continuation_logprobs(runner, [(it.prompt, " " + c) for it in items for c in it.choices])
    k, right = 0, 0
    for it in items:
        scores = [lls[k + j][0] for j in range(len(it.choices))]
        right += int(np.argmax(scores) == it.answer)
        k += len(it.choices)
    assert result.acc == right / len(items)


def test_bad_multiple_choice_file_is_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "x", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(TaskError, match="answer 5"):
        load_choice_items(bad)
    bad.write_text("not json\n")
    with pytest.raises(TaskError, match="bad.jsonl:1"):
        load_choice_items(bad)


def test_chat_prompt_uses_the_models_template(tiny_chat_model):
    """A copy of the tiny model with a Gemma-style tokenizer.chat_template key: the prompt goes through it."""
    from cerebellum_ray.evaluate.tasks import chat_prompt

    out = tiny_chat_model
    prompt = chat_prompt(out, "def add(a, b):\n")
    assert prompt.startswith("<start_of_turn>user\nComplete the following Python function")
    assert "<start_of_turn>model\ndef add(a, b):\n" in prompt
    with LlamaRunner(out, RunnerConfig(n_ctx=128)) as r:  # the copy is a valid model
        assert len(r.tokenize(prompt)) > 10
