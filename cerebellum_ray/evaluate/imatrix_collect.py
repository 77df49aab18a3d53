"""Computing an importance matrix inside the project, bit for bit as llama.cpp's ``llama-imatrix`` computes it.

llama-imatrix (``tools/imatrix/imatrix.cpp`` at the llama.cpp commit llama-cpp-python 0.3.36 vendors) installs an
evaluation callback (cb_eval) on the context and, for every matrix multiplication by a ``blk.*`` weight, adds the
squares of the multiplication's input rows to a float32 sum per column. This module installs the same callback
through llama-cpp-python's ctypes bindings (``_ggml`` for the tensors, ``llama_runner`` for the context) and replays
the tool exactly:

- **Text and chunks.** The whole text is tokenized once with BOS (``-f`` drops one trailing newline); it is cut into
  ``n_chunk = min(chunks, n_tokens // n_ctx)`` chunks of ``n_ctx`` tokens, the first token of each replaced by BOS;
  at least two chunks' worth of tokens are needed.
- **Context and batches.** ``n_seq = max(1, n_batch // n_ctx)`` chunks are decoded together, one sequence each, in
  a context of ``n_seq * n_ctx`` tokens with ``n_batch = min(2048, n_seq * n_ctx)``, ``n_ubatch = 512``, one KV
  stream per sequence, ``swa_full = false`` (llama.cpp's command-line tools) and every token requesting an output
  (so the last layer sees every token). The KV cache is cleared before each group. Same batches, same ubatches, same
  callback order: the same float32 additions in the same order.
- **Which nodes.** Every ``MUL_MAT_ID``; a ``MUL_MAT`` when its input is F32 with at least 16 rows and its weight's
  name (without a ``BACKEND#...#N`` decoration) starts with ``blk.``.
- **Accumulation.** float32, one row at a time in ggml's row order (``np.add.accumulate`` along the rows is that
  sequential sum; ``np.sum`` is pairwise and would differ in the last bits). Dense: every row of every call, one
  count per call of ``nrows / n_mat``. MUL_MAT_ID: for each expert slot, then each token, the routed expert's sum
  and count grow by that token's row.
- **chunk_count** is llama-imatrix's ``m_last_chunk``: the largest ``count // n_ctx`` over all entries and experts.

The result is written with :func:`imatrix.write_collected_imatrix` (GGUF, or legacy ``.dat``), byte for byte the
file llama-imatrix writes for the same model, text file name and settings on the same build of ggml.
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ..native import ggml as _ggml
from ..core.errors import CerebellumError
from ..formats.imatrix import FORMATS, write_collected_imatrix

DEFAULT_N_CTX = 512  # llama-imatrix's -c default
DEFAULT_N_BATCH = 2048  # common_params.n_batch (-b)
MIN_ROWS = 16  # llama-imatrix ignores MUL_MAT nodes with fewer input rows
MAX_SEQ = 256  # LLAMA_MAX_SEQ: sequences per context
DEFAULT_TEXT_NAME = "cerebellum-ray:stdlib-docs.txt"  # the dataset name recorded for the built-in corpus


class ImatrixCollectError(CerebellumError):
    """An importance matrix that cannot be computed: the message names the file or tensor, the value and the rule."""


@dataclass(frozen=True)
class CollectSettings:
    """llama-imatrix's options that change what is computed (its defaults)."""

    n_ctx: int = DEFAULT_N_CTX  # -c: tokens per chunk
    n_chunks: int | None = None  # --chunks: at most this many chunks (None: as many as the text holds)
    n_batch: int = DEFAULT_N_BATCH  # -b: tokens per decode call (chunks per call = max(1, n_batch // n_ctx))
    n_threads: int | None = None  # -t (None: all CPUs; does not change the result)
    n_gpu_layers: int | None = None  # None: all layers when a GPU is visible (bit-identity is checked on CPU)

    @property
    def n_seq(self) -> int:
        return max(1, self.n_batch // self.n_ctx)

    @property
    def context_batch(self) -> int:
        """The n_batch llama-imatrix gives the context: min(-b, n_seq * n_ctx)."""
        return min(self.n_batch, self.n_seq * self.n_ctx)


@dataclass(frozen=True)
class CollectedStats:
    """Raw statistics as llama-imatrix holds them before saving: per weight name, float32 sums of squared inputs
    ([n_mat * ne0], expert 0 first) and int64 counts ([n_mat] for expert tensors, else [1]); arrays read-only."""

    stats: Mapping[str, tuple[np.ndarray, np.ndarray]]
    chunk_count: int  # llama-imatrix's m_last_chunk
    chunk_size: int  # = n_ctx
    n_chunks: int  # chunks evaluated
    n_tokens: int  # tokens of the whole text (with BOS)
    n_seq: int  # chunks per decode call


@dataclass(frozen=True)
class ImatrixReport:
    """What `compute_imatrix` wrote and how."""

    out: str
    format: str
    model: str
    datasets: tuple[str, ...]
    n_tokens: int
    n_chunks: int
    chunk_size: int
    chunk_count: int
    n_seq: int
    n_entries: int
    n_expert_entries: int
    seconds: float

    def as_dict(self) -> dict:
        return dict(vars(self))


# ---- text ------------------------------------------------------------------------------------------------------


def read_text_file(path: str | os.PathLike) -> bytes:
    """A calibration text as llama-imatrix's ``-f`` reads it: the file's bytes, one trailing newline removed."""
    p = Path(path)
    if p.is_dir():
        raise ImatrixCollectError(f"{path}: is a directory, not a calibration text file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImatrixCollectError(f"{path}: no such calibration text file") from None
    return data[:-1] if data.endswith(b"\n") else data


def default_calibration_text() -> bytes:
    """The built-in corpus, as ``-f`` would read it from a file holding it (one trailing newline removed)."""
    from .corpus import default_text

    data = default_text().encode("utf-8")
    return data[:-1] if data.endswith(b"\n") else data


# ---- the collector (llama-imatrix's IMatrixCollector::collect_imatrix) --------------------------------------------


def filter_tensor_name(name: str) -> str:
    """llama-imatrix's filter_tensor_name: ``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight``."""
    p = name.find("#")
    if p < 0:
        return name
    q = name.find("#", p + 1)
    return name[p + 1 :] if q < 0 else name[p + 1 : q]


def _accumulate(acc: np.ndarray, rows: np.ndarray) -> None:
    """acc[j] += x[j] * x[j] for each row x in order, in float32: one rounding of the square, one of the sum, the
    running sum carried from row to row (np.add.accumulate is that sequential sum)."""
    if rows.shape[0] == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):  # the caller checks for non-finite sums
        sq = np.multiply(rows, rows, dtype=np.float32)
        sq[0] += acc
        np.add.accumulate(sq, axis=0, out=sq)
    acc[:] = sq[-1]


class _Collector:
    """The callback's state: sums and counts per weight name, exactly as llama-imatrix's m_stats."""

    def __init__(self) -> None:
        self.values: dict[str, np.ndarray] = {}  # float32 [n_mat * ne0]
        self.counts: dict[str, np.ndarray] = {}  # int64 [n_mat]

    def __call__(self, address: int, ask: bool) -> bool:
        t = _ggml.tensor_at(address)
        if ask:
            return self._wanted(t)
        self._collect(t)
        return True

    @staticmethod
    def _wanted(t: _ggml.GgmlTensor) -> bool:
        if t.op == _ggml.GGML_OP_MUL_MAT_ID:
            return True
        if t.op != _ggml.GGML_OP_MUL_MAT or not t.src[0] or not t.src[1]:
            return False
        src1 = _ggml.tensor_at(t.src[1])
        if src1.ne[1] < MIN_ROWS or src1.type != _ggml.GGML_TYPE_F32:
            return False
        return filter_tensor_name(_ggml.tensor_name(_ggml.tensor_at(t.src[0]))).startswith("blk.")

    def _collect(self, t: _ggml.GgmlTensor) -> None:
        src0, src1 = _ggml.tensor_at(t.src[0]), _ggml.tensor_at(t.src[1])
        name = filter_tensor_name(_ggml.tensor_name(src0))
        if src1.type != _ggml.GGML_TYPE_F32 or src1.nb[0] != _ggml.element_size(src1):
            raise ImatrixCollectError(
                f"node {_ggml.tensor_name(t)!r} multiplies {name!r} by an input of ggml type {src1.type} with element "
                f"stride {src1.nb[0]}; llama-imatrix reads contiguous F32 rows only: use llama-imatrix for this model"
            )
        x = _ggml.tensor_array(src1, np.float32)  # (ne3, ne2, ne1, ne0)
        if t.op == _ggml.GGML_OP_MUL_MAT_ID:
            self._collect_experts(t, name, src0, src1, x)
        else:
            self._collect_dense(name, src0, src1, x)

    def _collect_dense(self, name: str, src0, src1, x: np.ndarray) -> None:
        ne0 = int(src1.ne[0])
        n_mat = int(src0.ne[2]) * int(src0.ne[3])
        counts = self.counts.get(name)
        if counts is not None and counts.size > 1 and np.all(counts == counts[0]):
            counts = self.counts[name] = counts[:1].copy()  # one count per dense tensor
        values = self.values.get(name)
        if values is None:
            values = self.values[name] = np.zeros(ne0 * n_mat, dtype=np.float32)
            counts = self.counts[name] = np.zeros(1, dtype=np.int64)
        elif values.size != ne0 * n_mat:
            raise ImatrixCollectError(
                f"tensor {name!r}: {ne0 * n_mat} input columns in this call, {values.size} before; llama-imatrix stops "
                "on such an inconsistent size (the same name used for matrices of different shapes)"
            )
        blocks: dict[int, list[np.ndarray]] = {}
        for i3 in range(int(src1.ne[3])):
            for i2 in range(int(src1.ne[2])):
                mat_id = (i3 % int(src0.ne[3])) * int(src0.ne[2]) + (i2 % int(src0.ne[2]))
                blocks.setdefault(mat_id, []).append(x[i3, i2])
        for mat_id, rows in blocks.items():
            _accumulate(values[mat_id * ne0 : (mat_id + 1) * ne0], rows[0] if len(rows) == 1 else np.concatenate(rows))
        if not np.all(np.isfinite(values)):
            raise _non_finite(name)
        counts += _ggml.tensor_nrows(src1) // n_mat

    def _collect_experts(self, t, name: str, src0, src1, x: np.ndarray) -> None:
        ids_t = _ggml.tensor_at(t.src[2])
        n_as, ne0 = int(src0.ne[2]), int(src1.ne[0])
        ne1, n_tokens = int(src1.ne[1]), int(src1.ne[2])
        if ids_t.ne[1] != n_tokens or ids_t.type != _ggml.GGML_TYPE_I32:
            raise ImatrixCollectError(
                f"node {_ggml.tensor_name(t)!r} ({name!r}): expert ids of type {ids_t.type} for {ids_t.ne[1]} tokens, "
                f"input for {n_tokens}; llama-imatrix requires I32 ids, one column per token"
            )
        if _ggml.tensor_nrows(src1) != ne1 * n_tokens:
            raise ImatrixCollectError(
                f"tensor {name!r}: the expert input has more than 3 dimensions (ne = {list(src1.ne)}); llama-imatrix "
                "refuses it too"
            )
        counts = self.counts.get(name)
        if counts is not None and counts.size == 1 and n_as > 1:
            counts = self.counts[name] = np.full(n_as, counts[0], dtype=np.int64)  # broadcast, as llama-imatrix
        values = self.values.get(name)
        if values is None:
            values = self.values[name] = np.zeros(ne0 * n_as, dtype=np.float32)
            counts = self.counts[name] = np.zeros(n_as, dtype=np.int64)
        elif values.size != ne0 * n_as or counts.size != n_as:
            raise ImatrixCollectError(
                f"tensor {name!r}: {n_as} experts of {ne0} columns in this call, {counts.size} entries of "
                f"{values.size} values before; llama-imatrix stops on such an inconsistent size"
            )
        # (n_tokens, n_ids): ids[row, idx]; always copied, as llama-imatrix does (ids may be a strided view)
        ids = _ggml.tensor_array(ids_t, np.int32, copy=True)[0, 0]
        # llama-imatrix's loop order: expert slot idx outer, token row inner
        experts = ids.T.reshape(-1).astype(np.int64)
        bad = np.flatnonzero((experts < 0) | (experts >= n_as))
        if bad.size:
            raise ImatrixCollectError(
                f"tensor {name!r}: expert id {experts[bad[0]]} outside 0..{n_as - 1}; llama-imatrix aborts on it"
            )
        k = np.arange(experts.size)
        slot, row = k // n_tokens, k % n_tokens
        order = np.argsort(experts, kind="stable")  # each expert's (slot, token) pairs, in loop order
        gathered = x[0][row[order], slot[order] % ne1]  # (n_ids * n_tokens, ne0)
        per_expert = np.bincount(experts, minlength=n_as)
        start = 0
        for ex in np.flatnonzero(per_expert):
            stop = start + int(per_expert[ex])
            acc = values[ex * ne0 : (ex + 1) * ne0]
            _accumulate(acc, gathered[start:stop])
            if not np.all(np.isfinite(acc)):
                raise _non_finite(name)
            start = stop
        counts += per_expert


def _non_finite(name: str) -> ImatrixCollectError:
    return ImatrixCollectError(
        f"tensor {name!r}: non-finite sums of squared activations (llama-imatrix stops on them too); the model "
        "overflows on this text: check the model, or compute the imatrix in higher precision"
    )


# ---- the evaluation loop (llama-imatrix's compute_imatrix) --------------------------------------------------------


def _check_settings(settings: CollectSettings) -> None:
    for field in ("n_ctx", "n_batch"):
        value = getattr(settings, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImatrixCollectError(f"{field} must be a positive integer, got {value!r}")
    if settings.n_chunks is not None and (not isinstance(settings.n_chunks, int) or settings.n_chunks < 1):
        raise ImatrixCollectError(f"n_chunks must be a positive integer or None (all), got {settings.n_chunks!r}")
    if settings.n_seq > MAX_SEQ:
        raise ImatrixCollectError(
            f"a context of {settings.n_ctx} tokens with n_batch {settings.n_batch} puts {settings.n_seq} chunks in one "
            f"decode, one sequence each; llama.cpp allows at most {MAX_SEQ} sequences: use a context of at least "
            f"{-(-settings.n_batch // MAX_SEQ)} tokens"
        )


def _chat_tokens(runner, model, conversations) -> np.ndarray:
    """Every conversation rendered through the model's chat template (as chat-formatted scoring renders it, special
    tokens as tokens), one after another: what llama-imatrix --parse-special reads from the rendered text."""
    from ..formats.catalog import load_catalog
    from .chat import render

    template = load_catalog(model).kv.get("tokenizer.chat_template")
    return np.concatenate([render(runner, template, c, os.fspath(model)).tokens for c in conversations])


def collect_stats(model: str | os.PathLike, text: bytes | str | None, settings: CollectSettings = CollectSettings(),
                  conversations=None) -> CollectedStats:
    """Evaluate `text` (or the `conversations`, rendered with the model's chat template) on `model` as llama-imatrix
    does and return its raw statistics (nothing written)."""
    from .llama_runner import LlamaRunner, RunnerConfig

    _check_settings(settings)
    _ggml.check_op_enums()
    if (text is None) == (conversations is None):
        raise ImatrixCollectError("give a calibration text or conversations, exactly one of them")
    n_ctx, n_seq, n_batch = settings.n_ctx, settings.n_seq, settings.context_batch
    collector = _Collector()
    config = RunnerConfig(n_ctx=n_ctx, n_seq=n_seq, n_batch=n_batch, n_gpu_layers=settings.n_gpu_layers,
                          n_threads=settings.n_threads)
    with LlamaRunner(model, config, eval_callback=collector, swa_full=False) as runner:
        if runner.add_eos:
            raise ImatrixCollectError(
                f"{model}: the vocabulary appends an end-of-sequence token to every text; llama-imatrix refuses such "
                "models for generation (it asserts !add_eos): use llama-imatrix's own rules for embedding models"
            )
        if conversations is not None:
            tokens = _chat_tokens(runner, model, conversations)
        else:
            data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
            tokens = runner.tokenize(data, add_bos=True, parse_special=False)
        if len(tokens) < 2 * n_ctx:
            raise ImatrixCollectError(
                f"the calibration {'conversations render' if conversations is not None else 'text tokenizes'} to "
                f"{len(tokens)} tokens; a context of {n_ctx} needs at least "
                f"{2 * n_ctx} (llama-imatrix's rule): give a longer text or a smaller --ctx"
            )
        n_chunk_max = len(tokens) // n_ctx
        n_chunk = n_chunk_max if settings.n_chunks is None else min(settings.n_chunks, n_chunk_max)
        num_batches = -(-n_ctx // n_batch)
        for i in range(0, n_chunk, n_seq):
            start, end = i * n_ctx, (i + 1) * n_ctx
            n_seq_batch = min(n_seq, n_chunk - i)
            runner.clear()
            for j in range(num_batches):
                batch_start = start + j * n_batch
                batch_size = min(end - batch_start, n_batch)
                toks = np.empty((n_seq_batch, batch_size), dtype=np.int32)
                for seq in range(n_seq_batch):
                    seq_start = batch_start + seq * n_ctx
                    toks[seq] = tokens[seq_start : seq_start + batch_size]
                if runner.add_bos and j == 0:
                    toks[:, 0] = runner.bos
                pos = np.broadcast_to(j * n_batch + np.arange(batch_size, dtype=np.int32), toks.shape)
                seq_ids = np.broadcast_to(np.arange(n_seq_batch, dtype=np.int32)[:, None], toks.shape)
                runner.decode(toks.reshape(-1), pos.reshape(-1), seq_ids.reshape(-1),
                              np.ones(toks.size, dtype=bool))
    stats = {}
    chunk_count = 0
    for name in sorted(collector.values):
        values, counts = collector.values[name], collector.counts[name]
        values.flags.writeable = counts.flags.writeable = False
        stats[name] = (values, counts)
        chunk_count = max(chunk_count, int(counts.max()) // n_ctx)
    return CollectedStats(stats=MappingProxyType(stats), chunk_count=chunk_count, chunk_size=n_ctx,
                          n_chunks=n_chunk, n_tokens=len(tokens), n_seq=n_seq)


def compute_imatrix(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    text: bytes | str | None = None,
    text_file: str | os.PathLike | None = None,
    chat_file: str | os.PathLike | None = None,
    dataset: str | None = None,
    settings: CollectSettings = CollectSettings(),
    fmt: str = "gguf",
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> ImatrixReport:
    """Compute the importance matrix of `model` on a calibration text and write it to `out` (atomically).

    The text is `text_file` (read as llama-imatrix's ``-f`` reads it, and recorded under the name given, as
    llama-imatrix records it), or `text` as it is (recorded as `dataset`; none recorded without one, as llama-imatrix
    records none without ``-f``), or `chat_file`: a JSONL of conversations ({"messages": [...]}, or "builtin" for
    the shipped corpus) rendered with the model's chat template, special tokens as tokens (llama-imatrix
    --parse-special on the rendered text; recorded under the file's name), or none: the built-in corpus, recorded as
    DEFAULT_TEXT_NAME. `out` is refused if it is the model, the text file or any of `inputs` ({what: path}).
    """
    from ..core.atomic import check_destination, refuse_inputs

    if fmt not in FORMATS:
        raise ImatrixCollectError(f"unknown imatrix format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if sum(x is not None for x in (text, text_file, chat_file)) > 1:
        raise ImatrixCollectError("give one calibration input: a text, a text file or a chat file (--text or "
                                  "--chat-text), not several")
    if dataset is not None and text is None:
        raise ImatrixCollectError("a dataset name goes with a text given as such; a text file is recorded by its name")
    guarded = {"model": model, "calibration text": text_file, "chat text": chat_file, **(inputs or {})}
    check_destination(out)
    refuse_inputs(out, guarded)  # before the long evaluation: a bad output is refused at once
    if not Path(model).is_file():
        raise ImatrixCollectError(f"{model}: no such model file")
    conversations = None
    if chat_file is not None:
        from .chat import load_conversations

        conversations, data, dataset = load_conversations(chat_file), None, os.fspath(chat_file)
    elif text_file is not None:
        data, dataset = read_text_file(text_file), os.fspath(text_file)
    elif text is not None:
        data = text
    else:
        data, dataset = default_calibration_text(), DEFAULT_TEXT_NAME
    datasets = (dataset,) if dataset else ()
    started = time.monotonic()
    collected = collect_stats(model, data, settings, conversations)
    write_collected_imatrix(out, collected.stats, fmt=fmt, datasets=datasets, chunk_count=collected.chunk_count,
                            chunk_size=collected.chunk_size, inputs=guarded)
    return ImatrixReport(
        out=os.fspath(out), format=fmt, model=os.fspath(model), datasets=datasets, n_tokens=collected.n_tokens,
        n_chunks=collected.n_chunks, chunk_size=collected.chunk_size, chunk_count=collected.chunk_count,
        n_seq=collected.n_seq, n_entries=len(collected.stats),
        n_expert_entries=sum(1 for _, c in collected.stats.values() if c.size > 1),
        seconds=time.monotonic() - started,
    )


def made_imatrix(model: str | os.PathLike, cache_dir: str | os.PathLike | None, *, text: str | None = None,
                 chat_text: str | None = None, settings: CollectSettings = CollectSettings()) -> Path:
    """The importance matrix of `model` on a calibration text (a file, "builtin" or None: the built-in corpus) or on
    conversations (`chat_text`), made once and kept in `<cache_dir>/imatrix/` under a digest of the model's bytes,
    the text's and the settings: a space's `imatrix: {text: ...}`."""
    import hashlib
    import json

    from ..formats.gguf_io import model_digest
    from ..quant.tensor_cache import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    from .. import __version__

    what = {"model": model_digest(model, root / "digests"), "ctx": settings.n_ctx, "chunks": settings.n_chunks,
            "batch": settings.n_batch, "version": __version__}  # the built-in texts ship with the version
    for key, value in (("text", text), ("chat_text", chat_text)):
        if value not in (None, "builtin"):
            what[key] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
        elif value == "builtin" or (key == "text" and chat_text is None):
            what[key] = "builtin"
    name = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]
    out = root / "imatrix" / f"{name}.imatrix"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    text_file = text if text not in (None, "builtin") else None
    compute_imatrix(model, out, text_file=text_file, chat_file=chat_text, settings=settings)
    return out


__all__ = [
    "CollectSettings", "CollectedStats", "ImatrixCollectError", "ImatrixReport", "collect_stats", "compute_imatrix",
    "default_calibration_text", "filter_tensor_name", "made_imatrix", "read_text_file",
]
