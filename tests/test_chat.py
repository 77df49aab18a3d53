"""Chat-formatted evaluation: conversations through the model's template, assistant tokens scored, and nothing else."""

import json

import numpy as np
import pytest

from cerebellum_ray.evaluate.chat import (ChatError, Conversation, Message, builtin_conversations, load_conversations,
                                          render)
from cerebellum_ray.evaluate.llama_runner import LlamaRunner, RunnerConfig
from cerebellum_ray.evaluate.logprobs import target_logprobs
from cerebellum_ray.evaluate.score import EvalSpec, compute_reference, score
from conftest import CHAT_TEMPLATE

CONVERSATIONS = (
    Conversation((Message("system", "You answer briefly."), Message("user", "What is the model?"),
                  Message("assistant", "The model is a small test model."), Message("user", "And the data?"),
                  Message("assistant", "The data is a sentence."))),
    Conversation((Message("user", "Hello there"), Message("assistant", "Hello, this is a test."))),
)


def test_assistant_turns_are_exactly_the_scored_tokens(tiny_chat_model):
    with LlamaRunner(tiny_chat_model, RunnerConfig(n_ctx=256)) as runner:
        seq = render(runner, CHAT_TEMPLATE, CONVERSATIONS[0])
        scored_text = runner.detokenize(seq.tokens[seq.scored])
        assert scored_text.replace(" ", "") == ("The model is a small test model.<end_of_turn>\n"
                                                "The data is a sentence.<end_of_turn>\n").replace(" ", "")
        assert not seq.scored[: len(runner.tokenize("<start_of_turn>system", add_bos=False))].any()
        assert seq.tokens[0] == runner.bos  # the template's own bos_token, parsed as the special token


def test_chat_scoring_counts_only_assistant_tokens(tiny_chat_model):
    spec = EvalSpec("", n_ctx=256, chat=CONVERSATIONS)
    rec = score(tiny_chat_model, spec, config=RunnerConfig(n_ctx=256, n_seq=2))
    nll = []
    with LlamaRunner(tiny_chat_model, RunnerConfig(n_ctx=256)) as runner:
        for conv in CONVERSATIONS:
            seq = render(runner, CHAT_TEMPLATE, conv)
            runner.clear()
            n = len(seq.tokens)
            logits = np.array(runner.decode(seq.tokens, np.arange(n), np.zeros(n), np.ones(n, dtype=bool)))
            rows = np.flatnonzero(seq.scored[1:])
            nll.append(-target_logprobs(logits[rows], seq.tokens[rows + 1].astype(np.int64)))
    nll = np.concatenate(nll)
    assert rec.n_scored == len(nll) and rec.chunks_done == rec.n_chunks == 2
    assert rec.nll == pytest.approx(nll.mean(), rel=1e-4)


def test_chat_kld_against_itself_is_zero_and_needs_a_template(tiny_chat_model, tiny_models):
    spec = EvalSpec("", n_ctx=256, chat=CONVERSATIONS, top_k=16, tail_samples=16)
    ref = compute_reference(tiny_chat_model, spec)
    rec = score(tiny_chat_model, spec, ref)
    assert abs(rec.kld) < 1e-6 and rec.same_top == 1.0
    with pytest.raises(ChatError, match="no chat template"):
        score(tiny_models["llama"], spec)


def test_conversation_files_and_the_builtin_corpus(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    assert load_conversations(good)[0].messages[1] == Message("assistant", "hello")
    for line, needle in (('{"messages": []}', "expected"), ('{"messages": [{"role": "user", "content": "x"}]}',
                                                            "no assistant message"), ("{", "not valid JSON"),
                         ('{"messages": [{"role": "bot", "content": "x"}]}', "role")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(ChatError, match=needle):
            load_conversations(bad)
    builtin = builtin_conversations()
    assert len(builtin) > 400 and all(any(m.role == "assistant" for m in c.messages) for c in builtin)
    assert load_conversations("builtin") == builtin
