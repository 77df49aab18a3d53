"""Chat-formatted evaluation: conversations rendered with the model's own chat template, assistant tokens scored.

Instruction-tuned models are used through their chat template, so that is the text their quantizations should be
measured on (the model card's WikiText perplexity of 12,054 on an instruction-tuned model says little). Input is a
JSONL file, one conversation per line, in the usual form::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}

Each conversation is rendered with the template in the GGUF (``tokenizer.chat_template``, through llama-cpp-python's
sandboxed Jinja2 formatter) and tokenized with special tokens parsed. The tokens of assistant turns are found by
rendering the conversation up to each assistant turn twice, with the generation prompt and with the turn itself, and
taking the tokens in between; only those are scored (perplexity and KLD), every conversation from an empty context.
A model without a template is refused. The built-in corpus (`builtin_conversations`) is made by
bench/make_chat_corpus.py from CPython's standard-library docstrings (PSF license): a user asks what a function or
class does, the assistant answers with its documentation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..core.errors import CerebellumError

ROLES = ("system", "user", "assistant")
BUILTIN = "builtin"


class ChatError(CerebellumError):
    """A conversation file, or a model, that chat evaluation cannot use."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class ChatSequence:
    """One rendered conversation: its tokens and which of them are assistant tokens (scored)."""

    tokens: np.ndarray  # int32
    scored: np.ndarray  # bool, same length: True for tokens inside assistant turns

    @property
    def n_scored(self) -> int:
        return int(self.scored[1:].sum())  # the first token has no context to be predicted from


def _parse_line(obj, where: str) -> Conversation:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise ChatError(f"{where}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    messages = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatError(f"{where}: message {i} must be {{\"role\": one of {', '.join(ROLES)}, \"content\": a "
                            "string}")
        messages.append(Message(m["role"], m["content"]))
    if not any(m.role == "assistant" for m in messages):
        raise ChatError(f"{where}: no assistant message: nothing to score")
    return Conversation(tuple(messages))


def load_conversations(path: str | os.PathLike) -> tuple[Conversation, ...]:
    """Conversations of a JSONL file (or the built-in corpus for "builtin"), each line checked."""
    if str(path) == BUILTIN:
        return builtin_conversations()
    path = Path(path)
    if not path.is_file():
        raise ChatError(f"{path}: no such conversation file")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ChatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        out.append(_parse_line(obj, f"{path}:{lineno}"))
    if not out:
        raise ChatError(f"{path}: no conversations")
    return tuple(out)


def builtin_conversations() -> tuple[Conversation, ...]:
    """The shipped corpus (data/chat-stdlib.jsonl)."""
    text = resources.files("cerebellum_ray").joinpath("data", "chat-stdlib.jsonl").read_text(encoding="utf-8")
    return tuple(_parse_line(json.loads(line), f"chat-stdlib.jsonl:{i}")
                 for i, line in enumerate(text.splitlines(), 1) if line.strip())


def render(runner, template: str | None, conversation: Conversation, model: str = "the model") -> ChatSequence:
    """The conversation's tokens under `template` and the mask of its assistant tokens."""
    if not isinstance(template, str) or not template:
        raise ChatError(f"{model} has no chat template (tokenizer.chat_template): chat-formatted evaluation needs one; "
                        "score plain text instead")
    bos, eos = (runner.piece(t, special=True).decode("utf-8", "replace") for t in (runner.bos, runner.eos))
    from ..native.llama import chat_formatter

    closed, open_ = chat_formatter(template, bos, eos, False), chat_formatter(template, bos, eos, True)
    as_dicts = [{"role": m.role, "content": m.content} for m in conversation.messages]

    def tokens(text: str) -> np.ndarray:
        return runner.tokenize(text, add_bos=False, parse_special=True)

    full = tokens(closed(messages=as_dicts).prompt)
    scored = np.zeros(len(full), dtype=bool)
    for k, m in enumerate(conversation.messages):
        if m.role != "assistant":
            continue
        start = tokens(open_(messages=as_dicts[:k]).prompt)
        end = tokens(closed(messages=as_dicts[: k + 1]).prompt)
        if not (np.array_equal(full[: len(start)], start) and np.array_equal(full[: len(end)], end)):
            raise ChatError(f"the chat template of {model} renders a conversation's turns differently alone and in "
                            "the whole conversation; its assistant tokens cannot be told apart")
        scored[len(start): len(end)] = True
    return ChatSequence(full.astype(np.int32), scored)


def chat_sequences(runner, template: str | None, conversations, n_ctx: int, model: str = "the model"
                   ) -> list[ChatSequence]:
    """Every conversation rendered, cut to the context size; those with nothing left to score are left out."""
    out = []
    for conv in conversations:
        seq = render(runner, template, conv, model)
        if len(seq.tokens) > n_ctx:
            seq = ChatSequence(seq.tokens[:n_ctx], seq.scored[:n_ctx])
        if seq.n_scored:
            out.append(seq)
    if not out:
        raise ChatError(f"no conversation has an assistant token within the first {n_ctx} tokens")
    return out


__all__ = ["BUILTIN", "ChatError", "ChatSequence", "Conversation", "Message", "builtin_conversations",
           "chat_sequences", "load_conversations", "render"]
