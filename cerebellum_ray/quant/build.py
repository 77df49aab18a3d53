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
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xxhash
from gguf import GGUFValueType

from .. import QUANTIZER_VERSION, __version__
from ..formats import gguf_io
from ..core.atomic import atomic_group, atomic_path, check_destination, refuse_inputs
from ..core.compat import former_names
from ..core.fileio import copy_range, pread, pwrite_all
from ..formats.catalog import ModelCatalog, TensorInfo, load_catalog
from ..core.digests import vector_digest
from ..core.errors import CerebellumError
from ..formats.ggml_types import FILE_TYPES, ggml_type
from ..formats.precision_map import PrecisionMap
from .quantize import QuantizeError, QuantJob, check_job, quantize_tensor
from .tensor_cache import TensorCache, entry_key

PROVENANCE_PREFIX = "cerebellum."
_REPLACED_KEYS = ("general.quantization_version", "general.file_type", "general.alignment")
# What llama-quantize writes about its --imatrix (tools/quantize/quantize.cpp, as key/value overrides after
# general.file_type): the file name as given, the first dataset, the entry and chunk counts.
IMATRIX_KEYS = ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                "quantize.imatrix.chunks_count")
_IMATRIX_VALUE_BYTES = 127  # llama-quantize copies at most this many bytes of a string override
# A trial's scratch build puts tensor data on page boundaries (general.alignment = 4096, as GGUF allows): cached
# tensors (tensor_cache.ENTRY_HEADER) can then be reflinked into it by filesystems that share blocks. Costs under 4 KiB
# of padding per tensor (0.2 % of Gemma 3 270M, 0.02 % of a 12 GB Gemma 4 26B build). Files for users keep GGUF's
# default of 32, as llama-quantize writes them: llama-gguf-split (this llama.cpp) writes a broken model when it splits
# or merges a file whose alignment is not 32 (it copies the key but pads at 32).
PAGE_ALIGNMENT = 4096
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

    def kv_entries(self, file_type: int, alignment: int = gguf_io.DEFAULT_ALIGNMENT) -> list[bytes]:
        enc = gguf_io.encode_kv
        return [
            enc("general.quantization_version", 2, GGUFValueType.UINT32),
            enc("general.file_type", file_type, GGUFValueType.UINT32),
            *([enc("general.alignment", alignment, GGUFValueType.UINT32)]
              if alignment != gguf_io.DEFAULT_ALIGNMENT else []),
            enc(PROVENANCE_PREFIX + "version", __version__, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "quantizer", QUANTIZER_VERSION, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "source_digest", self.source_digest, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "imatrix_digest", self.imatrix_digest, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "map_digest", self.map_digest, GGUFValueType.STRING),
            enc(PROVENANCE_PREFIX + "map_base", self.map_base, GGUFValueType.STRING),
        ]


@dataclass(frozen=True)
class PlainFile:
    """Lay the file out as llama-quantize writes it, with no provenance keys (`build --plain`, `export --plain`):
    tensors in llama.cpp's order (llama_model_loader's weight_name_comparer: tensors outside blocks first, then by
    block number, each by name), the source's key/values with general.quantization_version and general.file_type
    moved to the end, and, with an imatrix, llama-quantize's quantize.imatrix.* keys naming it `imatrix_name` (the
    name as given to --imatrix: llama-quantize run from the imatrix's directory). For a map llama-quantize can
    express, the file is then llama-quantize's byte for byte."""

    imatrix_name: str | None = None


_BLOCK_NUMBER = re.compile(r"blk\.\s*([+-]?[0-9]+)")


def llama_tensor_order(names: Sequence[str]) -> list[int]:
    """Indices of `names` in the order llama.cpp's quantizer writes tensors: sscanf("blk.%d.") as the first key
    (-1 when a name does not start so), then the name's bytes."""
    def key(i: int) -> tuple[int, bytes]:
        m = _BLOCK_NUMBER.match(names[i])
        return (int(m.group(1)) if m else -1, names[i].encode())

    return sorted(range(len(names)), key=key)


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
    parts: tuple[str, ...] = ()  # every file written (the parts of a split output; OUT alone otherwise)
    export_size: int = 0  # the size of this build as one file with GGUF's default alignment (what export writes)

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
    order: tuple[int, ...] = ()  # the catalog's tensor indices in file order (empty: the source's order)
    plain: bool = False  # no provenance keys (PlainFile)
    extra_kv: tuple[bytes, ...] = ()  # written after general.file_type (PlainFile's quantize.imatrix.* keys)

    def tensor_index(self, slot: int) -> int:
        """The catalog index of the tensor in file position `slot`."""
        return self.order[slot] if self.order else slot

    def kv_entries(self, provenance: Provenance) -> list[bytes]:
        if self.plain:
            enc = gguf_io.encode_kv
            return [*self.kv_raw, enc("general.quantization_version", 2, GGUFValueType.UINT32),
                    enc("general.file_type", self.file_type, GGUFValueType.UINT32), *self.extra_kv]
        return self.kv_raw + provenance.kv_entries(self.file_type, self.alignment)


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


def source_kv(catalog: ModelCatalog) -> list[bytes]:
    """The source's key/values a build copies (raw, in file order): all but the ones it writes itself (quantization
    version, file type, alignment) and earlier provenance."""
    return [e.raw for e in catalog.kv_entries
            if e.key not in _REPLACED_KEYS and not e.key.startswith(PROVENANCE_PREFIX)]


def _plain_kv(catalog: ModelCatalog) -> list[bytes]:
    """The source's key/values as llama-quantize copies them (gguf_set_kv, then general.quantization_version and
    general.file_type re-set, i.e. moved to the end; split keys removed), without provenance keys. A
    general.alignment of 32 stays where it is (the output is aligned so); another is left out, as every build for
    people is aligned at 32."""
    keep = []
    for e in catalog.kv_entries:
        if e.key in ("general.quantization_version", "general.file_type") or e.key.startswith(PROVENANCE_PREFIX):
            continue
        if e.key == "general.alignment" and e.value != gguf_io.DEFAULT_ALIGNMENT:
            continue
        keep.append(e.raw)
    return keep


def _imatrix_kv(imatrix, name: str | None) -> tuple[bytes, ...]:
    """llama-quantize's key/values about the imatrix it was given as `name`."""
    if imatrix is None:
        return ()

    def text(value: str) -> str:
        return value.encode()[:_IMATRIX_VALUE_BYTES].decode("utf-8", errors="ignore")

    enc = gguf_io.encode_kv
    file_key, dataset_key, entries_key, chunks_key = IMATRIX_KEYS
    out = [enc(file_key, text(name or "imatrix.gguf"), GGUFValueType.STRING)]
    if imatrix.datasets:
        out.append(enc(dataset_key, text(imatrix.datasets[0]), GGUFValueType.STRING))
    out.append(enc(entries_key, len(imatrix.entries), GGUFValueType.UINT32))
    if imatrix.chunk_count > 0:
        out.append(enc(chunks_key, imatrix.chunk_count, GGUFValueType.UINT32))
    return tuple(out)


def plan_build(source: str | os.PathLike, pmap: PrecisionMap, imatrix=None, page_aligned: bool = False,
               plain: PlainFile | None = None) -> _Plan:
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
    if plain is not None and page_aligned:
        raise BuildError("a plain file is laid out as llama-quantize writes it (32-byte alignment), not page-aligned")
    return _Plan(
        catalog=catalog,
        kv_raw=source_kv(catalog) if plain is None else _plain_kv(catalog),
        jobs=jobs,
        vectors=vectors,
        file_type=_file_type_for(pmap),
        alignment=PAGE_ALIGNMENT if page_aligned else gguf_io.DEFAULT_ALIGNMENT,
        source=str(source),
        imatrix_digest=imatrix.digest if imatrix is not None else "none",
        order=() if plain is None else tuple(llama_tensor_order([t.name for t in catalog.tensors])),
        plain=plain is not None,
        extra_kv=() if plain is None else _imatrix_kv(imatrix, plain.imatrix_name),
    )


def _slots(plan: _Plan) -> list[gguf_io.TensorSlot]:
    out = []
    for k in range(len(plan.jobs)):
        i = plan.tensor_index(k)
        t, j = plan.catalog.tensors[i], plan.jobs[i]
        out.append(gguf_io.TensorSlot(t.name, t.shape, ggml_type(j.dst_type).id, t.bytes_as(j.dst_type)))
    return out


def _layout(plan: _Plan, provenance: Provenance) -> gguf_io.GGUFLayout:
    return gguf_io.GGUFLayout.build(plan.kv_entries(provenance), _slots(plan), plan.alignment)


def _part_layouts(plan: _Plan, provenance: Provenance, split_max_bytes: int | None) -> tuple[gguf_io.PartLayout, ...]:
    return gguf_io.layout_parts(plan.kv_entries(provenance), _slots(plan), plan.alignment, split_max_bytes)


def output_paths(source: str | os.PathLike, pmap: PrecisionMap, out: str | os.PathLike,
                 split_max_bytes: int | None = None, imatrix=None, plain: PlainFile | None = None) -> list[Path]:
    """The files `build` will write for OUT: OUT itself, or the parts of a split output (OUT-00001-of-0000N.gguf,
    ...; how many follows from the tensors' sizes alone, so it is known before anything is built)."""
    if split_max_bytes is None:
        return [Path(out)]
    plan = plan_build(source, pmap, imatrix, plain=plain)
    return gguf_io.split_output_paths(out, len(gguf_io.split_ranges(_slots(plan), split_max_bytes)))


def predicted_file_size(source: str | os.PathLike, pmap: PrecisionMap, imatrix=None,
                        plain: PlainFile | None = None) -> int:
    """The exact size in bytes of the file `build` would write, computed without quantizing anything."""
    plan = plan_build(source, pmap, imatrix, plain=plain)
    placeholder = Provenance(_DIGEST_PLACEHOLDER, plan.imatrix_digest, pmap.digest, pmap.base)
    return _layout(plan, placeholder).file_size


# ---- reading and hashing the source -------------------------------------------------------------------------------


def _tensor_digest(fd: int, t: TensorInfo) -> str:
    h = xxhash.xxh3_128()  # tensor_cache.DIGEST_ALGORITHM
    step = 1 << 24
    for off in range(0, t.n_bytes, step):
        h.update(pread(fd, t.data_offset + off, min(step, t.n_bytes - off)))
    return h.hexdigest()


def source_digests(fds: Sequence[int], plan: _Plan, cache: TensorCache | None, n_threads: int) -> dict[str, str]:
    """xxh3-128 of every source tensor's bytes; remembered in the cache per source file state (digests.file_state:
    a file rewritten in place is hashed again even when its modification time was restored). `fds`: the source's
    files (its parts, for a split model), open."""
    return _digests(fds, plan.catalog, cache, n_threads)


def tensor_digests(catalog: ModelCatalog, cache: TensorCache | None = None,
                   n_threads: int | None = None) -> dict[str, str]:
    """{tensor name: xxh3-128 of its bytes} of the model `catalog` describes, remembered in the cache as the builder
    remembers them (one hashing per file state, shared with builds)."""
    fds = [os.open(part, os.O_RDONLY) for part in catalog.parts]
    try:
        return _digests(fds, catalog, cache, n_threads or os.cpu_count() or 1)
    finally:
        for fd in fds:
            os.close(fd)


def _digests(fds: Sequence[int], catalog: ModelCatalog, cache: TensorCache | None, n_threads: int) -> dict[str, str]:
    if cache is not None:
        known = cache.source_digests(catalog.parts)
        if known is not None and set(known) == set(catalog.by_name):
            return known
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        digests = dict(zip(catalog.by_name, pool.map(lambda t: _tensor_digest(fds[t.file], t), catalog.tensors)))
    if cache is not None:
        cache.remember_source_digests(catalog.parts, digests)
    return digests


def source_digest(source: str | os.PathLike, cache: TensorCache | None = None, n_threads: int | None = None) -> str:
    """The digest every build of `source` records as cerebellum.source_digest (and a trial's row as source_digest):
    sha256 over the key/values a build copies and every tensor's xxh3-128. A copy of the file has the same; the
    tensor digests are remembered in the cache per file state, so a source the trials read is not hashed again."""
    catalog = load_catalog(source)
    return _source_digest(source_kv(catalog), tensor_digests(catalog, cache, n_threads))


def _source_digest(kv_raw: Sequence[bytes], digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for entry in kv_raw:
        h.update(entry)
    for name in sorted(digests):
        h.update(f"{name}={digests[name]}\n".encode())
    return h.hexdigest()


# ---- the build: one file, a split model, or given paths ----------------------------------------------------------


def build_file(source: str | os.PathLike, pmap: PrecisionMap, out: str | os.PathLike, *, imatrix=None,
               cache: TensorCache | None = None, n_threads: int | None = None,
               inputs: dict[str, str | os.PathLike | None] | None = None, sync: bool = True,
               page_aligned: bool = False, plain: PlainFile | None = None) -> BuildReport:
    """Write the quantized GGUF `out` for `pmap`; OUT appears complete or not at all, and is never the source (nor
    any of `inputs`, {what: path}, e.g. the imatrix or map file). `sync=False` skips the flush to disk before the
    rename (scratch outputs: a trial's GGUF lives only while it is scored). `page_aligned`: tensor data on
    4096-byte boundaries (scratch builds; see PAGE_ALIGNMENT). `plain`: no provenance keys, laid out as llama-quantize
    writes its files (PlainFile); the report still carries the provenance."""
    return _build(source, pmap, _Output(lambda plan: [Path(out)], _published_file, None), imatrix=imatrix,
                  cache=cache, n_threads=n_threads, inputs=inputs, sync=sync, page_aligned=page_aligned, plain=plain)


def build_split(source: str | os.PathLike, pmap: PrecisionMap, out: str | os.PathLike, split_max_bytes: int, *,
                imatrix=None, cache: TensorCache | None = None, n_threads: int | None = None,
                inputs: dict[str, str | os.PathLike | None] | None = None, sync: bool = True,
                page_aligned: bool = False, plain: PlainFile | None = None) -> BuildReport:
    """A split model, as llama-gguf-split --split-max-size would cut it, written to `output_paths(...)`
    (OUT-00001-of-0000N.gguf, ...), all parts published together or none (otherwise as `build_file`)."""
    def targets(plan: _Plan) -> list[Path]:
        return gguf_io.split_output_paths(out, len(gguf_io.split_ranges(_slots(plan), split_max_bytes)))

    return _build(source, pmap, _Output(targets, _published_group, split_max_bytes), imatrix=imatrix, cache=cache,
                  n_threads=n_threads, inputs=inputs, sync=sync, page_aligned=page_aligned, plain=plain)


def build_into(source: str | os.PathLike, pmap: PrecisionMap, paths: Sequence[str | os.PathLike],
               split_max_bytes: int | None = None, *, imatrix=None, cache: TensorCache | None = None,
               n_threads: int | None = None, inputs: dict[str, str | os.PathLike | None] | None = None,
               sync: bool = True, page_aligned: bool = False, plain: PlainFile | None = None) -> BuildReport:
    """Write the build's files (one, or the parts of a split at `split_max_bytes`) to `paths` as they are, with no
    publishing of their own: for a caller that commits them with other outputs in one atomic.atomic_group. They
    must be as many as output_paths names."""
    targets = [Path(p) for p in paths]
    return _build(source, pmap, _Output(lambda plan: targets, _written_in_place, split_max_bytes), imatrix=imatrix,
                  cache=cache, n_threads=n_threads, inputs=inputs, sync=sync, page_aligned=page_aligned, plain=plain)


def build(
    source: str | os.PathLike,
    pmap: PrecisionMap,
    out: str | os.PathLike,
    imatrix=None,
    cache: TensorCache | None = None,
    n_threads: int | None = None,
    inputs: dict[str, str | os.PathLike | None] | None = None,
    sync: bool = True,
    split_max_bytes: int | None = None,
    part_paths: Sequence[str | os.PathLike] | None = None,
    page_aligned: bool = False,
    plain: PlainFile | None = None,
) -> BuildReport:
    """One entry for the three outputs: `build_into(part_paths)` when paths are given (`out` is then only a name),
    else `build_split` with `split_max_bytes`, else `build_file`."""
    common = {"imatrix": imatrix, "cache": cache, "n_threads": n_threads, "inputs": inputs, "sync": sync,
              "page_aligned": page_aligned, "plain": plain}
    if part_paths is not None:
        return build_into(source, pmap, part_paths, split_max_bytes, **common)
    if split_max_bytes is not None:
        return build_split(source, pmap, out, split_max_bytes, **common)
    return build_file(source, pmap, out, **common)


@dataclass(frozen=True)
class _Output:
    """Where a build writes: its target paths (known once the plan is), how the files are published (a context
    manager: targets, inputs -> the paths to write), and the split size (None: one file)."""

    targets: Callable[[_Plan], list[Path]]
    publish: Callable[[Sequence[Path], dict], AbstractContextManager[Sequence[Path]]]
    split_max_bytes: int | None


@contextmanager
def _published_file(targets: Sequence[Path], inputs: dict) -> Iterator[Sequence[Path]]:
    with atomic_path(targets[0], inputs=inputs) as tmp:
        yield [tmp]


def _published_group(targets: Sequence[Path], inputs: dict) -> AbstractContextManager[Sequence[Path]]:
    return atomic_group(targets, inputs=inputs)


def _written_in_place(targets: Sequence[Path], inputs: dict) -> AbstractContextManager[Sequence[Path]]:
    return nullcontext(targets)


def _build(source: str | os.PathLike, pmap: PrecisionMap, output: _Output, *, imatrix, cache: TensorCache | None,
           n_threads: int | None, inputs: dict | None, sync: bool, page_aligned: bool,
           plain: PlainFile | None = None) -> BuildReport:
    """Plan, refuse bad destinations, digest the source, lay out the parts, write them through `output.publish`."""
    started = time.perf_counter()
    n_threads = n_threads or os.cpu_count() or 1
    inputs = {"source model": source, **(inputs or {})}
    plan = plan_build(source, pmap, imatrix, page_aligned, plain)
    targets = output.targets(plan)
    inputs.update({f"part {i + 1} of the source model": part for i, part in enumerate(plan.catalog.parts[1:], 1)})
    for target in targets:
        check_destination(target)
        refuse_inputs(target, inputs)
    fds = [os.open(part, os.O_RDONLY) for part in plan.catalog.parts]
    try:
        digests = source_digests(fds, plan, cache, n_threads)
        provenance = Provenance(_source_digest(source_kv(plan.catalog), digests), plan.imatrix_digest, pmap.digest,
                                pmap.base)
        parts = _part_layouts(plan, provenance, output.split_max_bytes)
        export_size = (parts[0].layout.file_size if len(parts) == 1 and plan.alignment == gguf_io.DEFAULT_ALIGNMENT
                       else _layout(replace(plan, alignment=gguf_io.DEFAULT_ALIGNMENT), provenance).file_size)
        if len(targets) != len(parts):
            raise BuildError(f"{len(targets)} paths given for an output of {len(parts)} files")
        with output.publish(targets, inputs) as paths:
            actions = _write_parts(plan, parts, paths, fds, digests, cache, n_threads, sync)
    finally:
        for fd in fds:
            os.close(fd)
    return BuildReport(
        out=str(targets[0]),
        file_size=sum(p.layout.file_size for p in parts),
        tensor_bytes=sum(s.n_bytes for p in parts for s in p.layout.slots),
        n_elements=plan.catalog.n_elements,
        actions=tuple(actions),
        seconds=time.perf_counter() - started,
        provenance=provenance,
        parts=tuple(map(str, targets)),
        export_size=export_size,
    )


def _write_parts(plan: _Plan, parts: Sequence[gguf_io.PartLayout], paths: Sequence[Path], fds: Sequence[int],
                 digests: dict[str, str], cache, n_threads: int, sync: bool) -> list[TensorAction]:
    """Each part's header and tensors into its (existing, empty) file; the padding is left as holes (zeros)."""
    actions = []
    for part, path in zip(parts, paths):
        layout = part.layout
        out_fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(out_fd, layout.file_size)
            pwrite_all(out_fd, layout.header, 0)
            for k, slot, offset in zip(part.tensors, layout.slots, layout.offsets):
                i = plan.tensor_index(k)
                t, job = plan.catalog.tensors[i], plan.jobs[i]
                t0 = time.perf_counter()
                action = _write_tensor(out_fd, len(layout.header) + offset, fds[t.file], t, job, plan.vectors[i],
                                       digests[t.name], cache, n_threads)
                actions.append(TensorAction(t.name, job.src_type, job.dst_type, action, slot.n_bytes,
                                            time.perf_counter() - t0))
            if os.fstat(out_fd).st_size != layout.file_size:
                raise AssertionError(f"wrote {os.fstat(out_fd).st_size} bytes to {path}, layout says "
                                     f"{layout.file_size}")
            if sync:
                os.fsync(out_fd)
        finally:
            os.close(out_fd)
    return actions


def _write_tensor(out_fd: int, at: int, fd: int, t: TensorInfo, job: QuantJob, vec, digest: str, cache,
                  n_threads: int) -> str:
    """Put one tensor's data at offset `at` of the output: copied from the source or from the cache inside the kernel
    (copy_range), or quantized here (and cached)."""
    if job.dst_type == job.src_type:
        copy_range(fd, t.data_offset, out_fd, at, t.n_bytes)
        return "copied"
    key = entry_key(digest, t.shape, job.src_type, job.dst_type, vector_digest(vec))
    if cache is not None:
        n_bytes = t.bytes_as(job.dst_type)
        hit = cache.get(key, n_bytes, what=f"{t.name} as {job.dst_type}")
        if hit is not None:
            with hit:
                copy_range(hit.file.fileno(), hit.offset, out_fd, at, n_bytes)
            return "cached"
    row_bytes = ggml_type(job.src_type).row_bytes(t.n_per_row)
    data = quantize_tensor(
        job, lambda first, n: pread(fd, t.data_offset + first * row_bytes, n * row_bytes), vec, n_threads
    )
    pwrite_all(out_fd, memoryview(data).cast("B"), at)
    if cache is not None:
        cache.put(key, data)
    return "quantized"


__all__ = ["BuildError", "BuildReport", "IMATRIX_KEYS", "PAGE_ALIGNMENT", "PROVENANCE_PREFIX", "PlainFile",
           "Provenance", "TensorAction", "build", "build_file", "build_into", "build_split", "check_imatrix_fits",
           "imatrix_vectors", "llama_tensor_order", "output_paths", "plan_build", "predicted_file_size",
           "source_digest", "source_digests", "source_kv", "tensor_digests"]

# The file I/O helpers lived here before core/fileio.py (pread and copy_range are imported above, so
# cerebellum_ray.build.pread still resolves).
__getattr__ = former_names(__name__, {"_pwrite": "cerebellum_ray.core.fileio:pwrite_all",
                                      "_COPY_FALLBACK": "cerebellum_ray.core.fileio:_COPY_FALLBACK"})
