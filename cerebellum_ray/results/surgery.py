"""Tensor surgery: recast individual tensors of an existing, already quantized GGUF without the original source.

This is the model card's ``gguf_tensor_surgery.py`` step (llama-quantize leaves MoE routers ``ffn_gate_inp`` alone
whatever ``--tensor-type`` says): ``--set blk.8.ffn_gate_inp.weight=Q8_0`` dequantizes that tensor's current data
with ggml's own ``to_float`` and quantizes it to the new type with ``ggml_quantize_chunk`` (``quantize.py``), the
bytes llama-quantize would write from those floats.

Guarantees
  * Every other tensor's data and every key/value (raw bytes, same order, no key added or changed) are copied byte
    for byte; tensor order and alignment are the input's. Only the data offsets of tensors after a changed tensor
    move (for inputs laid out the standard way: in tensor-table order, each tensor padded to the alignment).
  * Everything is checked before anything is written: tensor names (exact, or a regular expression as map rules
    are), types legal for the row length (the legal alternatives are named), 1-D tensors, importance matrices.
  * The output is written to a temporary file beside OUT, loaded and run in llama.cpp (a few tokens decoded, all
    logits finite and not constant), and only then renamed into place, so OUT == IN replaces the input only after
    the check passed. On any failure neither OUT nor the temporary file remains (and IN is as it was).
  * The exact size of the result is known before any work (``GGUFLayout``): the dry run reports it.

Heavy modules (numpy, gguf, llama.cpp) are imported lazily.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from ..core.errors import CerebellumError

if TYPE_CHECKING:  # pragma: no cover
    from ..formats.catalog import ModelCatalog
    from ..formats.gguf_io import GGUFLayout
    from ..formats.precision_map import Rule
    from ..quant.quantize import QuantJob

CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Hello world, this is a test sentence."
CHECK_CTX = 32  # tokens decoded by the llama.cpp check
_COPY_STEP = 1 << 24


class SurgeryError(CerebellumError):
    """A surgery refused (nothing written) or a result that failed its llama.cpp check (nothing replaced)."""


@dataclass(frozen=True)
class TensorChange:
    """One tensor named by a --set: its type and data size before and after (equal types: a no-op)."""

    name: str
    group: str
    shape: tuple[int, ...]  # ggml order, row length first
    old_type: str
    new_type: str
    old_bytes: int
    new_bytes: int

    @property
    def changed(self) -> bool:
        return self.old_type != self.new_type

    @property
    def delta(self) -> int:
        return self.new_bytes - self.old_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "shape": list(self.shape),
            "old_type": self.old_type,
            "new_type": self.new_type,
            "old_bytes": self.old_bytes,
            "new_bytes": self.new_bytes,
            "delta": self.delta,
            "changed": self.changed,
        }


@dataclass(frozen=True)
class SurgeryReport:
    """What a surgery did (or, for a dry run, would do). `changes` are in file order and include the no-ops."""

    source: str
    out: str | None  # None for a dry run without --out
    changes: tuple[TensorChange, ...]
    size_before: int  # the input file's size
    size_after: int  # the output file's exact size
    dry_run: bool
    written: bool  # False for a dry run, and for OUT == IN with nothing to change
    check: str | None = None  # what the llama.cpp check saw (None when nothing was written)
    seconds: float = 0.0

    @property
    def delta(self) -> int:
        return self.size_after - self.size_before

    @property
    def n_changed(self) -> int:
        return sum(1 for c in self.changes if c.changed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "out": self.out,
            "dry_run": self.dry_run,
            "written": self.written,
            "changes": [c.as_dict() for c in self.changes],
            "n_changed": self.n_changed,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "delta": self.delta,
            "check": self.check,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class SurgeryPlan:
    """Everything checked and laid out, nothing read beyond the header, nothing written."""

    catalog: ModelCatalog
    changes: tuple[TensorChange, ...]
    jobs: Mapping[str, QuantJob]  # the tensors that really change
    vectors: Mapping[str, Any] = field(repr=False)  # name -> importance vector or None
    layout: GGUFLayout = field(repr=False)

    @property
    def size_before(self) -> int:
        return self.catalog.file_size

    @property
    def size_after(self) -> int:
        return self.layout.file_size


# ---- planning ----------------------------------------------------------------------------------------------------


def _file_version(path: str | os.PathLike) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<I", f.read(8)[4:8])[0]


def _check_dequantizable(job: QuantJob) -> None:
    """Refuse a source type ggml cannot turn back into floats (integer tensors), before any work."""
    import numpy as np

    from ..native import ggml as _ggml
    from ..formats.ggml_types import ggml_type

    src = ggml_type(job.src_type)
    try:  # one zero block through ggml's own dequantization
        _ggml.to_float(src.id, np.zeros(src.type_size, np.uint8), src.block_size, np.empty(src.block_size, np.float32))
    except ValueError:
        raise SurgeryError(
            f"{job.name}: ggml cannot dequantize its type {src.name}, so it cannot be recast; leave it as it is"
        ) from None


def plan_surgery(model: str | os.PathLike, sets: Sequence[str | Rule], imatrix=None) -> SurgeryPlan:
    """Check every --set against the model and lay out the result; raises MapError/SurgeryError, writes nothing."""
    from ..formats import gguf_io
    from ..quant.build import BuildError, imatrix_vectors
    from ..formats.catalog import load_catalog
    from ..formats.ggml_types import ggml_type
    from ..formats.precision_map import MapSpec, resolve
    from ..quant.quantize import QuantizeError, QuantJob, check_job

    from ..formats.precision_map import rules_from_pairs

    rules = rules_from_pairs(sets)
    if not rules:
        raise SurgeryError("nothing to do: give at least one --set TENSOR=TYPE")
    catalog = load_catalog(model)  # a split model's parts are read together; the result is one merged file
    # The source's own types as the base, the --set rules over it: names, regexes, legality and 1-D tensors are
    # checked exactly as in precision maps (refusals name the tensor, the rule and the legal types).
    pmap = resolve(catalog, MapSpec(rules=rules))
    named = set(pmap.overridden)
    changes = tuple(
        TensorChange(t.name, t.group, t.shape, t.type, pmap.types[t.name], t.n_bytes, t.bytes_as(pmap.types[t.name]))
        for t in catalog.tensors
        if t.name in named
    )
    jobs = {c.name: QuantJob(c.name, c.shape, c.old_type, c.new_type) for c in changes if c.changed}
    try:
        vectors = dict(zip(jobs, imatrix_vectors(catalog, list(jobs.values()), imatrix)))
    except BuildError as exc:
        raise SurgeryError(str(exc)) from None
    for name, job in jobs.items():
        _check_dequantizable(job)
        try:
            check_job(job, vectors[name])
        except QuantizeError as exc:
            raise SurgeryError(str(exc)) from None
    new_types = {c.name: c.new_type for c in changes}
    slots = [
        gguf_io.TensorSlot(
            t.name,
            t.shape,
            ggml_type(new_types.get(t.name, t.type)).id,
            t.bytes_as(new_types[t.name]) if t.name in jobs else t.n_bytes,
        )
        for t in catalog.tensors
    ]
    layout = gguf_io.GGUFLayout.build([e.raw for e in catalog.kv_entries], slots, catalog.alignment)
    version = _file_version(model)
    if version != gguf_io.GGUF_VERSION:  # keep a version-2 file's version field (the layout is the same)
        header = layout.header[:4] + struct.pack("<I", version) + layout.header[8:]
        layout = gguf_io.GGUFLayout(header, layout.slots, layout.offsets, layout.alignment)
    return SurgeryPlan(catalog, changes, jobs, vectors, layout)


# ---- the imatrix the file was built with --------------------------------------------------------------------------


def file_imatrix(model: str | os.PathLike) -> tuple[str | None, str | None]:
    """(digest, path) of the imatrix `model` was built with, as far as it says: its cerebellum.imatrix_digest key
    ("none" without one), else the export card beside it (FINAL.card.json, also for a plain export), whose
    provenance names the path too; (None, None) for a file that says nothing (e.g. one llama-quantize made)."""
    import json

    from ..formats.catalog import load_catalog
    from ..quant.build import PROVENANCE_PREFIX

    digest = load_catalog(model).kv.get(PROVENANCE_PREFIX + "imatrix_digest")
    card = _card_path(Path(model))
    path = None
    if card.is_file():
        try:
            provenance = json.loads(card.read_text(encoding="utf-8")).get("provenance") or {}
        except (OSError, ValueError):
            provenance = {}
        if digest is None or provenance.get("imatrix_digest") == digest:
            digest = digest or provenance.get("imatrix_digest")
            path = (provenance.get("inputs") or {}).get("imatrix")
    return (str(digest) if digest else None), path


def _card_path(model: Path) -> Path:
    """FINAL.card.json beside FINAL.gguf (or beside FINAL-00001-of-0000N.gguf, the first part of a split export)."""
    from ..formats.gguf_io import _SPLIT_NAME

    m = _SPLIT_NAME.match(model.name)
    stem = m.group("prefix") if m else model.name.removesuffix(".gguf")
    return model.with_name(f"{stem}.card.json")


def surgery_imatrix(model: str | os.PathLike, sets: Sequence[str | Rule], given: str | None) -> str | None:
    """The imatrix to recast with: the one `model` was built with (file_imatrix) when the --set changes reach a
    type whose quantizer weighs by importance (ggml_types.IMATRIX_WEIGHTED), so the recast tensors come out as
    the build would have made them. `given` must have the file's digest; without it the card's path is used, and
    a recast that needs the file's imatrix while none is to be found is refused (SurgeryError, naming it)."""
    from ..formats.catalog import load_catalog
    from ..formats.ggml_types import IMATRIX_WEIGHTED
    from ..formats.imatrix import load_imatrix
    from ..formats.precision_map import MapSpec, resolve, rules_from_pairs

    digest, recorded = file_imatrix(model)
    if digest is None:
        return given
    catalog = load_catalog(model)
    rules = rules_from_pairs(sets)
    pmap = resolve(catalog, MapSpec(rules=rules)) if rules else None
    weighted = [t.name for t in catalog.tensors if pmap is not None and pmap.types[t.name] != t.type
                and pmap.types[t.name] in IMATRIX_WEIGHTED]
    if given:
        theirs = load_imatrix(given).digest
        if digest == "none" and weighted:
            raise SurgeryError(f"--imatrix {given} (digest {theirs}): {model} was built without an imatrix (digest "
                               f"none), so {weighted[0]} would be recast unlike the build: leave --imatrix out")
        if digest not in ("none", theirs):
            raise SurgeryError(f"--imatrix {given}: its digest is {theirs}, but {model} was built with the imatrix "
                               f"of digest {digest}" + (f" ({recorded})" if recorded else "") +
                               ": give that imatrix (a file with the same digest will do)")
        return given
    if digest == "none" or not weighted:
        return None
    if recorded and Path(recorded).is_file() and load_imatrix(recorded).digest == digest:
        return recorded
    where = f"; its card names {recorded}, which is gone or changed" if recorded else ""
    raise SurgeryError(f"{model} was built with the imatrix of digest {digest}{where}: give --imatrix FILE with that "
                       f"digest, so {weighted[0]} is recast with the importances the build used")


# ---- staged, checked output --------------------------------------------------------------------------------------


# ---- the llama.cpp check -----------------------------------------------------------------------------------------


def check_runs(path: str | os.PathLike, n_gpu_layers: int = 0, n_threads: int | None = None) -> str:
    """Load `path` in llama.cpp, decode a few tokens and require sane logits; returns what was seen.

    Raises SurgeryError when the model does not load or decode, or when any logit is NaN/inf or any position's
    logits are all equal (NaN weights can come out of attention that way).
    """
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    import numpy as np

    from ..evaluate.llama_runner import LlamaError, LlamaRunner, RunnerConfig

    config = RunnerConfig(n_ctx=CHECK_CTX, n_gpu_layers=n_gpu_layers, n_threads=n_threads)
    try:
        with LlamaRunner(path, config) as runner:
            tokens = runner.tokenize(CHECK_TEXT)[:CHECK_CTX]
            if tokens.size < 2:
                raise SurgeryError(f"llama.cpp tokenized the check text of {path} into {tokens.size} tokens")
            n = int(tokens.size)
            logits = np.array(runner.decode(tokens, np.arange(n), np.zeros(n), np.ones(n, dtype=bool)))
    except LlamaError as exc:
        raise SurgeryError(f"llama.cpp cannot run it: {exc}") from None
    bad = int((~np.isfinite(logits)).sum())
    if bad:
        raise SurgeryError(f"llama.cpp computed {bad} NaN/inf logits out of {logits.size} for {n} tokens")
    flat = int((logits.max(axis=1) == logits.min(axis=1)).sum())
    if flat:  # what NaN weights can turn into on the way (no trained model gives every token the same logit)
        raise SurgeryError(f"llama.cpp computed the same logit for every token at {flat} of {n} positions")
    return f"ok: llama.cpp loaded it and decoded {n} tokens, all {logits.size} logits finite and not constant"


# ---- the surgery -------------------------------------------------------------------------------------------------


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def surgery(
    model: str | os.PathLike,
    sets: Sequence[str | Rule],
    out: str | os.PathLike | None = None,
    *,
    imatrix=None,
    dry_run: bool = False,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
) -> SurgeryReport:
    """Recast the tensors named by `sets` (``NAME=TYPE``, NAME exact or a regex) of `model` into `out`.

    `out` may be `model` itself: it is replaced only after the result loaded and ran in llama.cpp. With
    `dry_run`, everything is checked and the changes and exact sizes are reported, but nothing is written.
    `imatrix` (an imatrix.Imatrix) is used for the recast tensors; types that need one are refused without it.
    """
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)

    from ..core.atomic import atomic_path, check_destination

    started = time.perf_counter()
    if out is None and not dry_run:
        raise SurgeryError("an output file is needed (--out OUT.gguf; it may be the input), or ask for --dry-run")
    plan = plan_surgery(model, sets, imatrix)
    if out is not None:
        check_destination(Path(out))

    def report(written: bool, check: str | None = None) -> SurgeryReport:
        return SurgeryReport(
            source=str(model),
            out=None if out is None else str(out),
            changes=plan.changes,
            size_before=plan.size_before,
            size_after=plan.size_after,
            dry_run=dry_run,
            written=written,
            check=check,
            seconds=time.perf_counter() - started,
        )

    if dry_run or (not plan.jobs and _same_file(model, out)):
        return report(written=False)
    fds = [os.open(p, os.O_RDONLY) for p in plan.catalog.parts]  # readable even after OUT == IN is replaced
    try:
        with atomic_path(out) as tmp:
            _write(plan, fds, tmp, n_threads)
            try:
                seen = check_runs(tmp, n_gpu_layers=n_gpu_layers, n_threads=n_threads)
            except SurgeryError as exc:
                raise SurgeryError(
                    f"the recast model failed its llama.cpp check, {out} was not written: {exc}"
                ) from None
    finally:
        for fd in fds:
            os.close(fd)
    return report(written=True, check=seen)


_FINITE_CHECK_ELEMENTS = 1 << 22  # floats dequantized at a time (16 MiB)


def _require_finite(name: str, type_name: str, data, n_per_row: int) -> None:
    """Refuse a recast tensor whose new data does not dequantize (with ggml's own code) to finite values, read a
    few MiB at a time.

    llama.cpp's run check alone does not catch it: whether NaN weights reach the logits depends on the kernels (with
    ggml's plain CPU layout a NaN-scaled attn_q gave finite, varying logits)."""
    import numpy as np

    from ..native import ggml as _ggml
    from ..formats.ggml_types import ggml_type

    kind = ggml_type(type_name)
    raw = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    row_bytes = kind.row_bytes(n_per_row)
    rows_per_step = max(1, _FINITE_CHECK_ELEMENTS // n_per_row)
    n_rows = raw.size // row_bytes
    out = np.empty(rows_per_step * n_per_row, np.float32)
    bad = 0
    for first in range(0, n_rows, rows_per_step):
        n = min(rows_per_step, n_rows - first)
        _ggml.to_float(kind.id, raw[first * row_bytes:(first + n) * row_bytes], n * n_per_row, out)
        bad += int((~np.isfinite(out[:n * n_per_row])).sum())
    if bad:
        raise SurgeryError(f"{name}: recast to {type_name}, it dequantizes to {bad} NaN/inf values of "
                           f"{n_rows * n_per_row}; nothing was written. The source tensor or the quantizer is at "
                           "fault: check the source with `cerebellum-ray inspect`")


def _write(plan: SurgeryPlan, fds: list[int], tmp: Path, n_threads: int | None) -> None:
    from ..formats import gguf_io
    from ..core.fileio import pread  # pread per range into a numpy buffer: the builder's reader
    from ..formats.ggml_types import ggml_type
    from ..quant.quantize import quantize_tensor

    layout = plan.layout
    with open(tmp, "wb") as f:
        f.write(layout.header)
        for t, slot in zip(plan.catalog.tensors, layout.slots):
            fd = fds[t.file]
            job = plan.jobs.get(t.name)
            if job is None:
                f.writelines(
                    memoryview(pread(fd, t.data_offset + off, min(_COPY_STEP, t.n_bytes - off)))
                    for off in range(0, t.n_bytes, _COPY_STEP)
                )
            else:
                row_bytes = ggml_type(job.src_type).row_bytes(t.n_per_row)
                base = t.data_offset

                def read_rows(first: int, n: int, base=base, row_bytes=row_bytes, fd=fd):
                    return pread(fd, base + first * row_bytes, n * row_bytes)

                data = quantize_tensor(job, read_rows, plan.vectors.get(t.name), n_threads)
                if data.nbytes != slot.n_bytes:
                    raise AssertionError(f"{t.name}: quantized to {data.nbytes} bytes, layout says {slot.n_bytes}")
                _require_finite(t.name, job.dst_type, data, t.n_per_row)
                f.write(memoryview(data))
            gguf_io.write_padding(f, slot.n_bytes, layout.alignment)
        if f.tell() != layout.file_size:
            raise AssertionError(f"wrote {f.tell()} bytes, layout says {layout.file_size}")
        f.flush()
        os.fsync(f.fileno())


__all__ = [
    "CHECK_CTX", "CHECK_TEXT", "SurgeryError", "SurgeryPlan", "SurgeryReport", "TensorChange", "check_runs",
    "plan_surgery", "surgery"
]
