"""Batched greedy generation and log-likelihood scoring of continuations with one llama.cpp context.

Several sequences share one context (one sequence id each): their prompts are prefilled together and every decode
step advances all unfinished sequences by one token, with logits requested only for those last positions. This is
how HumanEval completions and multiple-choice answers are computed inside a trial.
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np

from .llama_runner import LlamaRunner
from .logprobs import target_logprobs

HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass(frozen=True)
class Generation:
    text: str  # the completion, cut before the first stop sequence
    tokens: tuple[int, ...]  # every generated token (the last may extend past the stop sequence)
    stopped_by: str  # "stop", "eog" or "length"

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _prefill_argmax(runner: LlamaRunner, prompts: list[np.ndarray], seq_ids: list[int]) -> np.ndarray:
    """Feed each prompt as sequence seq_ids[i]; return the greedy next token after each prompt."""
    toks = np.concatenate(prompts)
    pos = np.concatenate([np.arange(len(p), dtype=np.int32) for p in prompts])
    seq = np.concatenate([np.full(len(p), s, dtype=np.int32) for s, p in zip(seq_ids, prompts)])
    want = np.concatenate([np.arange(len(p)) == len(p) - 1 for p in prompts])
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(prompts)])
    nxt = np.empty(len(prompts), dtype=np.int32)
    for a in range(0, len(toks), runner.n_batch):
        sl = slice(a, a + runner.n_batch)
        logits = runner.decode(toks[sl], pos[sl], seq[sl], want[sl])
        nxt[owner[sl][want[sl]]] = logits.argmax(axis=1)
    return nxt


class _Completion:
    """One prompt's generation in progress: its tokens, its text and why it ended."""

    def __init__(self, n_prompt: int):
        self.position = n_prompt  # position of the next token fed to the model
        self.tokens: list[int] = []
        self.text = b""
        self.stopped_by = ""

    def accept(self, runner: LlamaRunner, token: int, stops: Sequence[str], max_new_tokens: int) -> bool:
        """Take the greedy token; False when the completion ended (it is then not fed back)."""
        if runner.is_end_of_generation(token):
            self.stopped_by = "eog"
            return False
        self.tokens.append(token)
        self.text += runner.piece(token)
        if stops and _cut_at_stop(self.text.decode("utf-8", errors="ignore"), stops)[1]:
            self.stopped_by = "stop"
            return False
        if len(self.tokens) >= max_new_tokens:
            self.stopped_by = "length"
            return False
        return True

    def result(self, stops: Sequence[str]) -> Generation:
        text, _ = _cut_at_stop(self.text.decode("utf-8", errors="replace"), stops)
        return Generation(text, tuple(self.tokens), self.stopped_by)


def generate_greedy(runner: LlamaRunner, prompts: Sequence[str], max_new_tokens: int = 256,
                    stops: Sequence[str] = HUMANEVAL_STOPS, add_bos: bool = True) -> list[Generation]:
    """Greedy completions of `prompts` with continuous batching over runner.config.n_seq sequence slots.

    Every decode step advances each running completion by one token, logits only for those positions. A finished
    completion frees its slot for the next waiting prompt; once no prompt waits, the highest running slot moves into
    each hole so that the running slots stay 0..k-1: llama.cpp decodes a batch as one ubatch only while its sequence
    ids are consecutive (a step over ids 0, 2, 4, ... costs as much as two steps).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    encoded = [runner.tokenize(p, add_bos=add_bos) for p in prompts]
    for i, e in enumerate(encoded):
        if len(e) + max_new_tokens > runner.config.n_ctx:
            raise ValueError(f"prompt {i} has {len(e)} tokens: with {max_new_tokens} new tokens it exceeds the "
                             f"context of {runner.config.n_ctx} per sequence")
    completions = [_Completion(len(e)) for e in encoded]
    batch = _Slots(runner, runner.config.n_seq)
    waiting = list(range(len(prompts)))[::-1]
    runner.clear()
    while True:
        while waiting and batch.free():
            admitted = [(s, waiting.pop()) for s in batch.free()[: len(waiting)]]
            for s, _ in admitted:
                runner.remove_sequence(s)  # a prompt that ended at its first token left its cells behind
            firsts = _prefill_argmax(runner, [encoded[i] for _, i in admitted], [s for s, _ in admitted])
            for (s, i), tok in zip(admitted, firsts.tolist()):
                if completions[i].accept(runner, tok, stops, max_new_tokens):
                    batch.start(s, i, tok)
        if not waiting:
            batch.compact()
        running = batch.running()
        if not running:
            break
        feed = np.array([batch.feed[s] for s in running], dtype=np.int32)
        positions = np.array([completions[batch.prompt[s]].position for s in running], dtype=np.int32)
        logits = runner.decode(feed, positions, np.array(running, dtype=np.int32), np.ones(len(running), bool))
        for s, tok in zip(running, logits.argmax(axis=1).tolist()):
            c = completions[batch.prompt[s]]
            c.position += 1
            if c.accept(runner, tok, stops, max_new_tokens):
                batch.feed[s] = tok
            else:
                batch.finish(s)
    return [c.result(stops) for c in completions]


class _Slots:
    """Which prompt runs as which sequence id, and the accepted token each running sequence is fed next."""

    def __init__(self, runner: LlamaRunner, n_slots: int):
        self.runner = runner
        self.prompt: list[int | None] = [None] * n_slots
        self.feed: dict[int, int] = {}

    def free(self) -> list[int]:
        return [s for s, p in enumerate(self.prompt) if p is None]

    def running(self) -> list[int]:
        return [s for s, p in enumerate(self.prompt) if p is not None]

    def start(self, slot: int, prompt: int, token: int) -> None:
        self.prompt[slot], self.feed[slot] = prompt, token

    def finish(self, slot: int) -> None:
        self.prompt[slot] = None
        self.feed.pop(slot, None)
        self.runner.remove_sequence(slot)

    def compact(self) -> None:
        """Move the highest running sequence into the lowest free slot until the running ones are 0..k-1."""
        while True:
            free, running = self.free(), self.running()
            if not free or not running or free[0] > running[-1]:
                return
            hole, top = free[0], running[-1]
            self.runner.move_sequence(top, hole)
            self.prompt[hole], self.prompt[top] = self.prompt[top], None
            self.feed[hole] = self.feed.pop(top)


def continuation_logprobs(runner: LlamaRunner, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | context), number of continuation tokens) for each (context, continuation).

    The continuation's tokens are those of tokenize(context + continuation) after the longest common prefix with
    tokenize(context); pairs are evaluated runner.config.n_seq at a time, logits only where they are scored.
    """
    out: list[tuple[float, int]] = []
    group = runner.config.n_seq
    for g in range(0, len(pairs), group):
        chunk = pairs[g : g + group]
        seqs, starts = [], []
        for ctx, cont in chunk:
            full = runner.tokenize(ctx + cont, add_bos=True)
            head = runner.tokenize(ctx, add_bos=True)
            common = int(np.argmin(np.append(full[: len(head)] == head[: len(full)], False)))
            start = max(1, min(common, len(full) - 1))
            if len(full) > runner.config.n_ctx:
                raise ValueError(f"context + continuation of {len(full)} tokens exceeds n_ctx {runner.config.n_ctx}")
            seqs.append(full)
            starts.append(start)
        runner.clear()
        toks = np.concatenate(seqs)
        pos = np.concatenate([np.arange(len(s), dtype=np.int32) for s in seqs])
        sid = np.concatenate([np.full(len(s), i, dtype=np.int32) for i, s in enumerate(seqs)])
        # position j predicts token j+1: score positions start-1 .. len-2
        want = np.concatenate([(np.arange(len(s)) >= st - 1) & (np.arange(len(s)) < len(s) - 1)
                               for s, st in zip(seqs, starts)])
        targets = np.concatenate([s[st:] for s, st in zip(seqs, starts)]).astype(np.int64)
        owners = sid[want]
        rows, done = [], 0
        for a in range(0, len(toks), runner.n_batch):
            sl = slice(a, a + runner.n_batch)
            n_out = int(want[sl].sum())
            logits = runner.decode(toks[sl], pos[sl], sid[sl], want[sl])
            rows.append(target_logprobs(logits, targets[done : done + n_out]))
            done += n_out
        lp = np.concatenate(rows)
        for i in range(len(seqs)):
            mine = lp[owners == i]
            out.append((float(mine.sum()), len(mine)))
    return out


__all__ = ["Generation", "HUMANEVAL_STOPS", "continuation_logprobs", "generate_greedy"]
