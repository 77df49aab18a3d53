"""Batched greedy generation and log-likelihood scoring of continuations with one llama.cpp context.

Several sequences share one context (one sequence id each): their prompts are prefilled together and every decode
step advances all unfinished sequences by one token, with logits requested only for those last positions. This is
how HumanEval completions and multiple-choice answers are computed inside a trial.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

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


def _prefill(runner: LlamaRunner, prompts: list[np.ndarray]) -> np.ndarray:
    """Feed every prompt as its own sequence; return each prompt's last-position logits (copied)."""
    toks = np.concatenate(prompts)
    pos = np.concatenate([np.arange(len(p), dtype=np.int32) for p in prompts])
    seq = np.concatenate([np.full(len(p), s, dtype=np.int32) for s, p in enumerate(prompts)])
    want = np.concatenate([np.arange(len(p)) == len(p) - 1 for p in prompts])
    last = np.empty((len(prompts), runner.n_vocab), dtype=np.float32)
    for a in range(0, len(toks), runner.n_batch):
        sl = slice(a, a + runner.n_batch)
        logits = runner.decode(toks[sl], pos[sl], seq[sl], want[sl])
        last[seq[sl][want[sl]]] = logits
    return last


def generate_greedy(runner: LlamaRunner, prompts: Sequence[str], max_new_tokens: int = 256,
                    stops: Sequence[str] = HUMANEVAL_STOPS, add_bos: bool = True) -> list[Generation]:
    """Greedy completions of `prompts`, runner.config.n_seq at a time in one context."""
    results: list[Generation] = []
    group = runner.config.n_seq
    for g in range(0, len(prompts), group):
        results.extend(_generate_group(runner, list(prompts[g : g + group]), max_new_tokens, stops, add_bos))
    return results


def _generate_group(runner, prompts, max_new_tokens, stops, add_bos) -> list[Generation]:
    encoded = [runner.tokenize(p, add_bos=add_bos) for p in prompts]
    too_long = [i for i, e in enumerate(encoded) if len(e) + max_new_tokens > runner.config.n_ctx]
    if too_long:
        raise ValueError(f"prompt {too_long[0]} has {len(encoded[too_long[0]])} tokens: with {max_new_tokens} new "
                         f"tokens it exceeds the context of {runner.config.n_ctx}")
    runner.clear()
    logits = _prefill(runner, encoded)
    n = len(prompts)
    generated: list[list[int]] = [[] for _ in range(n)]
    texts = [b"" for _ in range(n)]
    stopped = [""] * n
    active = np.arange(n)
    positions = np.array([len(e) for e in encoded], dtype=np.int32)
    for _ in range(max_new_tokens):
        next_tokens = logits.argmax(axis=1)
        still = []
        for row, s in enumerate(active.tolist()):
            tok = int(next_tokens[row])
            if runner.is_end_of_generation(tok):
                stopped[s] = "eog"
                continue
            generated[s].append(tok)
            texts[s] += runner.piece(tok)
            if _cut_at_stop(texts[s].decode("utf-8", errors="ignore"), stops)[1]:
                stopped[s] = "stop"
                continue
            still.append(row)
        active_rows = np.array(still, dtype=np.int64)
        if len(active_rows) == 0:
            break
        active = active[active_rows]
        feed = next_tokens[active_rows].astype(np.int32)
        logits = np.array(runner.decode(feed, positions[active], active.astype(np.int32), np.ones(len(active), bool)))
        positions[active] += 1
    out = []
    for s in range(n):
        text, _ = _cut_at_stop(texts[s].decode("utf-8", errors="replace"), stops)
        out.append(Generation(text, tuple(generated[s]), stopped[s] or "length"))
    return out


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
