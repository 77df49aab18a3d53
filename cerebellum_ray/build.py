"""Trial builder: source GGUF + precision map (+ imatrix) -> quantized GGUF, streamed tensor by tensor.

Data flow for one build:
  1. plan     - catalog the source, check every tensor's job (type legal for its rows, imatrix present where
                needed, imatrix made for this model) and lay out the output file. Nothing is written yet.
  2. digest   - per-tensor sha256 of the source (remembered per source file in the cache) -> cache keys.
  3. write    - into a temporary file beside OUT: the header, then each tensor: copied (same type), taken from
                the cache, or quantized (then cached). Renamed to OUT only when complete.
Peak memory is about one quantized tensor plus a few work buffers: the source is read with pread, never mapped
whole.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
from gguf import GGUFValueType

from . import QUANTIZER_VERSION, __version__, gguf_io
from .atomic import atomic_output, check_destination, refuse_inputs
from .catalog import ModelCatalog, TensorInfo, load_catalog
from .digests import vector_digest
from .errors import CerebellumError
from .ggml_types import FILE_TYPES, ggml_type
from .precision_map import PrecisionMap
from .quantize import QuantizeError, QuantJob, check_job, quantize_tensor
from .tensor_cache import TensorCache, copy_stream, entry_key

PROVENANCE_PREFIX = "cerebellum."
_REPLACED_KEYS = ("general.quantization_version", "general.file_type")
_GUESSED_FILE_TYPE = 1024  # LLAMA_FTYPE_GUESSED
_DIGEST_PLACEHOLDER = "0" * 64


class BuildError(CerebellumError):
    """A build refused before any output was written; the message names tensor, value, rule and fix."""


@dataclass(frozen=True)
class Provenance:
    source_digest: str
    imatrix_digest: str  # "none" without an imatrix
    map_digest: str
    map_base: str

    def kv_entries(self, file_type: int) -> list[bytes]:
        enc = gguf_io.encode_kv
        return [
            enc("general.quantization_version", 2, GGUFValueType.UINT32),
            enc("general.file_type", file_type, GGUFValueType.UINT32),
            enc(PROVENANCE_PREFIX + "version", __version__, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "quantizer", QUANTIZER_VERSION, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "source_digest", self.source_digest, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "imatrix_digest", self.imatrix_digest, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "map_digest", self.map_digest, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "map_base", self.map_base, GGUFValueType.STRING),
        ]


@dataclass(frozen=True)
class TensorAction:
    name: str
    src_type: str
    dst_type: str
    action: str  # "copied", "cached" or "quantized"
    n_bytes: int
    seconds: float


@dataclass(frozen=True)
class BuildReport:
    out: str
    file_size: int
    tensor_bytes: int
    n_elements: int
    actions: tuple[TensorAction, ...]
    seconds: float
    provenance: Provenance

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_elements

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.action == action)


@dataclass
class _Plan:
    catalog: ModelCatalog
    kv_raw: list[bytes]
    jobs: list[QuantJob]
    vectors: list[np.ndarray | None]
    file_type: int
    alignment: int
    source: str = ""
    imatrix_digest: str = "none"


def _file_type_for(pmap: PrecisionMap) -> int:
    preset = FILE_TYPES.get(pmap.base)
    return preset.id if preset else _GUESSED_FILE_TYPE


def imatrix_vectors(catalog: ModelCatalog, jobs: Sequence[QuantJob], imatrix) -> list[np.ndarray | None]:
    """Per job, its importance vector (or None); refuses an imatrix that was made for another model."""
    if imatrix is None:
        return [None] * len(jobs)
    foreign = [name for name in imatrix.entries if name not in catalog.by_name]
    if foreign:
        raise BuildError(
            f"the imatrix has entries for {len(foreign)} tensors that {catalog.path} does not have "
            f"(e.g. {foreign[0]!r}): it was made for another model; compute one for this model with llama-imatrix"
        )
    vectors = []
    for job in jobs:
        v = imatrix.vector(job.name)
        t = catalog[job.name]
        if v is not None and v.size != t.n_per_row * t.n_experts:
            if t.group == "token_embd":  # llama.cpp ignores a mis-sized token_embd entry
                v = None
            else:
                raise BuildError(
                    f"imatrix entry {job.name} has {v.size} values but the tensor needs {t.n_per_row} x "
                    f"{t.n_experts} = {t.n_per_row * t.n_experts}: the imatrix was made for another model"
                )
        vectors.append(v)
    return vectors


def check_imatrix_fits(catalog: ModelCatalog, imatrix, path: str) -> None:
    """Refuse, before any trial runs, an imatrix made for another model (entries it lacks, or of the wrong size)."""
    jobs = [QuantJob(t.name, t.shape, t.type, t.type) for t in catalog.tensors]
    try:
        imatrix_vectors(catalog, jobs, imatrix)
    except BuildError as exc:
        raise BuildError(f"--imatrix {path}: {exc}") from None


def plan_build(source: str | os.PathLike, pmap: PrecisionMap, imatrix=None) -> _Plan:
    """Everything checked and laid out, nothing written: raises BuildError/QuantizeError on any bad input."""
    catalog = load_catalog(source)
    unknown = [n for n in pmap.types if n not in catalog.by_name]
    missing = [t.name for t in catalog.tensors if t.name not in pmap.types]
    if unknown:
        raise BuildError(f"the map names tensor {unknown[0]!r} (and {len(unknown) - 1} more) not in {source}")
    if missing:
        raise BuildError(f"the map gives no type to {missing[0]!r} (and {len(missing) - 1} more) of {source}")
    jobs = [QuantJob(t.name, t.shape, t.type, pmap.types[t.name]) for t in catalog.tensors]
    vectors = imatrix_vectors(catalog, jobs, imatrix)
    for job, vec in zip(jobs, vectors):
        if job.dst_type != job.src_type:
            try:
                check_job(job, vec)
            except QuantizeError as exc:
                raise BuildError(str(exc)) from None
    kv_raw = [
        e.raw for e in catalog.kv_entries if e.key not in _REPLACED_KEYS and not e.key.startswith(PROVENANCE_PREFIX)
    ]
    return _Plan(
        catalog=catalog,
        kv_raw=kv_raw,
        jobs=jobs,
        vectors=vectors,
        file_type=_file_type_for(pmap),
        alignment=catalog.alignment,
        source=str(source),
        imatrix_digest=imatrix.digest if imatrix is not None else "none",
    )


def _layout(plan: _Plan, provenance: Provenance) -> gguf_io.GGUFLayout:
    slots = [
        gguf_io.TensorSlot(t.name, t.shape, ggml_type(j.dst_type).id, t.bytes_as(j.dst_type))
        for t, j in zip(plan.catalog.tensors, plan.jobs)
    ]
    return gguf_io.GGUFLayout.build(plan.kv_raw + provenance.kv_entries(plan.file_type), slots, plan.alignment)


def predicted_file_size(source: str | os.PathLike, pmap: PrecisionMap, imatrix=None) -> int:
    """The exact size in bytes of the file `build` would write, computed without quantizing anything."""
    plan = plan_build(source, pmap, imatrix)
    placeholder = Provenance(_DIGEST_PLACEHOLDER, plan.imatrix_digest, pmap.digest, pmap.base)
    return _layout(plan, placeholder).file_size


# ---- reading and hashing the source -------------------------------------------------------------------------------


def pread(fd: int, offset: int, n: int) -> np.ndarray:
    buf = np.empty(n, dtype=np.uint8)
    view = memoryview(buf)
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise gguf_io.GGUFError(f"unexpected end of file at offset {offset + done}")
        done += got
    return buf


def _tensor_digest(fd: int, t: TensorInfo) -> str:
    h = hashlib.sha256()
    step = 1 << 24
    for off in range(0, t.n_bytes, step):
        h.update(pread(fd, t.data_offset + off, min(step, t.n_bytes - off)))
    return h.hexdigest()


def source_digests(fd: int, plan: _Plan, cache: TensorCache | None, n_threads: int) -> dict[str, str]:
    """sha256 of every source tensor's bytes; remembered in the cache per source file state (digests.file_state:
    a file rewritten in place is hashed again even when its modification time was restored)."""
    return _digests(fd, plan.source, plan.catalog, cache, n_threads)


def tensor_digests(source: str | os.PathLike, catalog: ModelCatalog, cache: TensorCache | None = None,
                   n_threads: int | None = None) -> dict[str, str]:
    """{tensor name: sha256 of its bytes} of `source` (whose catalog is `catalog`), remembered in the cache as the
    builder remembers them (one hashing per file state, shared with builds)."""
    fd = os.open(source, os.O_RDONLY)
    try:
        return _digests(fd, str(source), catalog, cache, n_threads or os.cpu_count() or 1)
    finally:
        os.close(fd)


def _digests(fd: int, source: str, catalog: ModelCatalog, cache: TensorCache | None, n_threads: int) -> dict[str, str]:
    if cache is not None:
        known = cache.source_digests(source)
        if known is not None and set(known) == set(catalog.by_name):
            return known
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        digests = dict(zip(catalog.by_name, pool.map(lambda t: _tensor_digest(fd, t), catalog.tensors)))
    if cache is not None:
        cache.remember_source_digests(source, digests)
    return digests


def _source_digest(kv_raw: Sequence[bytes], digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for entry in kv_raw:
        h.update(entry)
    for name in sorted(digests):
        h.update(f"{name}={digests[name]}\n".encode())
    return h.hexdigest()


# ---- the build ---------------------------------------------------------------------------------------------------


def build(
    source: str | os.PathLike,
    pmap: PrecisionMap,
    out: str | os.PathLike,
    imatrix=None,
    cache: TensorCache | None = None,
    n_threads: int | None = None,
    inputs: dict[str, str | os.PathLike | None] | None = None,
) -> BuildReport:
    """Write the quantized GGUF `out` for `pmap`; OUT appears complete or not at all, and is never the source (nor
    any of `inputs`, {what: path}, e.g. the imatrix or map file)."""
    started = time.perf_counter()
    n_threads = n_threads or os.cpu_count() or 1
    inputs = {"source model": source, **(inputs or {})}
    check_destination(out)
    refuse_inputs(out, inputs)
    plan = plan_build(source, pmap, imatrix)
    fd = os.open(source, os.O_RDONLY)
    try:
        digests = source_digests(fd, plan, cache, n_threads)
        provenance = Provenance(_source_digest(plan.kv_raw, digests), plan.imatrix_digest, pmap.digest, pmap.base)
        layout = _layout(plan, provenance)
        actions = []
        with atomic_output(out, inputs=inputs) as f:
            f.write(layout.header)
            for t, job, vec, slot in zip(plan.catalog.tensors, plan.jobs, plan.vectors, layout.slots):
                t0 = time.perf_counter()
                action = _write_tensor(f, fd, t, job, vec, digests[t.name], cache, n_threads)
                gguf_io.write_padding(f, slot.n_bytes, layout.alignment)
                actions.append(
                    TensorAction(t.name, job.src_type, job.dst_type, action, slot.n_bytes, time.perf_counter() - t0)
                )
            if f.tell() != layout.file_size:
                raise AssertionError(f"wrote {f.tell()} bytes, layout says {layout.file_size}")
    finally:
        os.close(fd)
    return BuildReport(
        out=str(out),
        file_size=layout.file_size,
        tensor_bytes=sum(s.n_bytes for s in layout.slots),
        n_elements=plan.catalog.n_elements,
        actions=tuple(actions),
        seconds=time.perf_counter() - started,
        provenance=provenance,
    )


def _write_tensor(f, fd, t: TensorInfo, job: QuantJob, vec, digest: str, cache, n_threads: int) -> str:
    if job.dst_type == job.src_type:
        step = 1 << 24
        for off in range(0, t.n_bytes, step):
            f.write(pread(fd, t.data_offset + off, min(step, t.n_bytes - off)))
        return "copied"
    key = entry_key(digest, t.shape, job.src_type, job.dst_type, vector_digest(vec))
    if cache is not None:
        n_bytes = t.bytes_as(job.dst_type)
        hit = cache.get(key, n_bytes, what=f"{t.name} as {job.dst_type}")
        if hit is not None:
            with hit:
                n = copy_stream(hit.file, f, n_bytes)
            if n != n_bytes:  # verified a moment ago: only a concurrent truncation can get here
                raise BuildError(f"cache entry for {t.name} shrank while it was read ({n} of {n_bytes} bytes); "
                                 "build again")
            return "cached"
    row_bytes = ggml_type(job.src_type).row_bytes(t.n_per_row)
    data = quantize_tensor(
        job, lambda first, n: pread(fd, t.data_offset + first * row_bytes, n * row_bytes), vec, n_threads
    )
    f.write(memoryview(data))
    if cache is not None:
        cache.put(key, data)
    return "quantized"
