"""Importance matrices: the exact float32 vectors llama-quantize hands to ``llama_model_quantize``.

llama-imatrix writes two formats (``tools/imatrix/imatrix.cpp``), and llama-quantize turns either into one
vector per weight tensor (``tools/quantize/quantize.cpp: load_imatrix``, reading through
``common/imatrix-loader.cpp``). This module reproduces that arithmetic bit for bit:

- GGUF (``general.type = "imatrix"``): tensors ``<weight>.in_sum2`` (F32 [ne0, n_mat], sums of squared activations)
  and ``<weight>.counts`` (F32 [1, n_mat], tokens seen per matrix; ggml drops trailing 1s, so a dense entry's two
  tensors are 1-D). Each count is rounded with ``lround`` (halves away from zero) to an integer and converted back
  to float; each matrix's slice is ``in_sum2 / count`` (a float32 division, not a multiplication by a reciprocal),
  and a matrix whose rounded count is <= 0 gets all ones.
- legacy ``.dat``: int32 n_entries; per entry int32 name length, name bytes, int32 ncall, int32 nval,
  float32[nval] holding mean * ncall; optionally int32 chunk count, int32 length, dataset name.
  The vector is ``values / float(ncall)`` when ncall > 0, else the stored values unchanged.

For a 3-D expert tensor the vector holds one ne0-long slice per expert, expert 0 first; llama-quantize quantizes
each expert's rows with its own slice (see :meth:`Imatrix.per_expert`).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from gguf import GGUFReader, GGUFValueType

from ..core.errors import CerebellumError

FORMATS = ("gguf", "dat")
GGUF_MAGIC = b"GGUF"
KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"

_DIGEST_TAG = b"cerebellum-ray/imatrix/v1\0"
_GGUF_VERSION = 3
_GGUF_ALIGNMENT = 32
_GGUF_F32 = 0  # ggml_type F32
_GGUF_UINT32, _GGUF_STRING, _GGUF_ARRAY = 4, 8, 9  # gguf_type


class ImatrixError(CerebellumError):
    """An importance matrix that cannot be used: the message names the file, the entry or offset and the rule."""


# ---- the record --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Imatrix:
    """Importance vectors as llama-quantize passes them to ``llama_model_quantize``; build with :meth:`build`.

    Two records are equal when their vectors (digest), datasets and chunk count are.
    """

    entries: Mapping[str, np.ndarray]  # tensor name -> read-only float32 vector, ne0 * n_experts long
    datasets: tuple[str, ...]  # what it was computed on (file names, as llama-imatrix records them)
    chunk_count: int  # chunks of text it was computed on
    digest: str  # sha256 hex of the names and vectors alone: equal for the same vectors from either format
    source_format: str  # "gguf", "dat", or "memory" for a record built in Python
    chunk_size: int = 0  # tokens per chunk (GGUF only; 0 when unknown)
    n_mat: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # matrices (experts) per entry

    @classmethod
    def build(
        cls,
        entries: Mapping[str, Iterable[float] | np.ndarray],
        *,
        datasets: Iterable[str] = (),
        chunk_count: int = 0,
        chunk_size: int = 0,
        n_mat: Mapping[str, int] | None = None,
        source_format: str = "memory",
    ) -> Imatrix:
        """Make a record from final importance vectors (copied to read-only float32; must be 1-D and finite)."""
        frozen: dict[str, np.ndarray] = {}
        for name in sorted(entries):
            vec = np.array(entries[name], dtype=np.float32).reshape(-1)
            if vec.size == 0:
                raise ImatrixError(f"imatrix entry {name!r} is empty; every entry needs at least one value")
            _check_values(name, vec, where="in memory")
            vec.flags.writeable = False
            frozen[name] = vec
        mats = {name: int(n) for name, n in (n_mat or {}).items() if name in frozen}
        for name, n in mats.items():
            if n < 1 or frozen[name].size % n:
                raise ImatrixError(
                    f"imatrix entry {name!r}: {frozen[name].size} values cannot be split into n_mat={n} equal slices"
                )
        return cls(
            entries=MappingProxyType(frozen),
            datasets=tuple(datasets),
            chunk_count=int(chunk_count),
            digest=_digest(frozen),
            source_format=source_format,
            chunk_size=int(chunk_size),
            n_mat=MappingProxyType(mats),
        )

    def vector(self, name: str) -> np.ndarray | None:
        """The importance vector for tensor `name` (read-only float32), or None when the imatrix has none."""
        return self.entries.get(name)

    def per_expert(self, name: str, n_per_row: int, n_expert: int = 1) -> np.ndarray | None:
        """The vector of `name` as [n_expert, n_per_row] (row e = expert e's slice), or None when absent.

        Applies llama-quantize's size rule: the vector must hold n_per_row * n_expert values, otherwise it was
        computed for another model and quantizing with it is refused (llama.cpp throws too, except for token_embd,
        which it quantizes without an imatrix instead; this returns None for it likewise).
        """
        vec = self.entries.get(name)
        if vec is None:
            return None
        if vec.size != n_per_row * n_expert:
            if "token_embd" in name:
                return None
            raise ImatrixError(
                f"imatrix entry {name!r} has {vec.size} values but the tensor needs n_per_row * n_expert = "
                f"{n_per_row} * {n_expert} = {n_per_row * n_expert}; the imatrix was computed for another model: "
                "make one for this model with llama-imatrix"
            )
        return vec.reshape(n_expert, n_per_row)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Imatrix):
            return NotImplemented
        return (self.digest, self.datasets, self.chunk_count) == (other.digest, other.datasets, other.chunk_count)

    def __hash__(self) -> int:
        return hash((self.digest, self.datasets, self.chunk_count))

    def __repr__(self) -> str:
        return (
            f"Imatrix({len(self.entries)} entries, datasets={self.datasets!r}, chunk_count={self.chunk_count}, "
            f"digest={self.digest[:12]}..., source_format={self.source_format!r})"
        )


def _digest(entries: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256(_DIGEST_TAG)
    for name in sorted(entries):
        raw = name.encode("utf-8")
        vec = np.ascontiguousarray(entries[name], dtype="<f4")
        h.update(struct.pack("<I", len(raw)) + raw + struct.pack("<Q", vec.size))
        h.update(vec.tobytes())
    return h.hexdigest()


def _check_values(name: str, vec: np.ndarray, where: str) -> None:
    """Importances are means of squared activations: finite and never negative (ggml's IQ quantizers abort the
    process on negative weights, and llama_model_quantize refuses non-finite ones)."""
    bad = np.flatnonzero(~np.isfinite(vec))
    if bad.size:
        raise ImatrixError(
            f"{where}: imatrix entry {name!r} has a non-finite importance {vec[bad[0]]} at index {bad[0]} "
            f"({bad.size} such values); llama_model_quantize refuses non-finite imatrix values: "
            "recompute the imatrix (a model that overflows in F16 can cause this)"
        )
    bad = np.flatnonzero(vec < 0)
    if bad.size:
        raise ImatrixError(
            f"{where}: imatrix entry {name!r} has a negative importance {vec[bad[0]]} at index {bad[0]} "
            f"({bad.size} such values); importances are means of squared activations and cannot be negative "
            "(ggml's quantizers abort on them): the file is corrupt, recompute it"
        )


# ---- loading -------------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What common_imatrix_load reads, before llama-quantize's normalisation."""

    sums: dict[str, np.ndarray]  # float32, flat
    counts: dict[str, np.ndarray]  # int64 (GGUF: lround of the stored floats; legacy: [ncall])
    datasets: list[str]
    chunk_count: int
    chunk_size: int


def load_imatrix(path: str | os.PathLike) -> Imatrix:
    """Read a llama-imatrix file (GGUF or legacy .dat, told apart by the GGUF magic) into an :class:`Imatrix`.

    Raises ImatrixError naming the file, the offset or entry and the broken rule for truncated or garbled files,
    files llama-quantize would refuse (no entries, GGUF without imatrix metadata) and non-finite importances.
    """
    path = Path(path)
    if path.is_dir():
        raise ImatrixError(f"{path}: is a directory, not an imatrix file")
    if not path.is_file():
        raise ImatrixError(f"{path}: no such imatrix file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        raw, fmt = _read_gguf(path), "gguf"
    else:
        raw, fmt = _read_dat(path, path.read_bytes()), "dat"
    vectors = {name: _importance(raw, name, legacy=fmt == "dat") for name in raw.sums}
    for name, vec in vectors.items():
        _check_values(name, vec, where=str(path))
    n_mat = {name: int(c.size) for name, c in raw.counts.items()} if fmt == "gguf" else {}
    return Imatrix.build(
        vectors, datasets=raw.datasets, chunk_count=raw.chunk_count, chunk_size=raw.chunk_size, n_mat=n_mat,
        source_format=fmt,
    )


def _importance(raw: _Raw, name: str, legacy: bool) -> np.ndarray:
    """llama-quantize's load_imatrix, element for element (float32 arithmetic throughout)."""
    sums, counts = raw.sums[name], raw.counts[name]
    if legacy:
        ncall = int(counts[0])
        return sums / np.float32(ncall) if ncall > 0 else sums.copy()
    ne0 = sums.size // counts.size
    out = np.empty_like(sums)
    for j, c in enumerate(counts):
        count = np.float32(c)  # (float) of the rounded int64 count
        block = slice(j * ne0, (j + 1) * ne0)
        out[block] = sums[block] / count if count > 0 else np.float32(1.0)
    return out


def _lround(x: np.ndarray, path: Path, name: str) -> np.ndarray:
    """C's lround on float32 values: nearest integer, halves away from zero (numpy's round goes to even)."""
    if not np.all(np.isfinite(x)) or np.any(np.abs(x) >= 2.0**62):
        raise ImatrixError(
            f"{path}: imatrix entry {name!r} has counts {x.tolist()[:8]} that are not finite integers in range; "
            "llama.cpp's lround of them is undefined: the file is corrupt, recompute it"
        )
    x64 = x.astype(np.float64)
    return (np.sign(x64) * np.floor(np.abs(x64) + 0.5)).astype(np.int64)


class _Cursor:
    """Sequential little-endian reads over bytes that name the file and offset when they run out."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            raise ImatrixError(
                f"{self.path}: truncated legacy imatrix: {what} needs {n} bytes at offset {self.pos}, but the file "
                f"ends at {len(self.data)}; the file is incomplete: copy or recompute it"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _garbled(path: Path, offset: int, what: str) -> ImatrixError:
    return ImatrixError(
        f"{path}: garbled legacy imatrix at offset {offset}: {what}; the file is not a llama-imatrix file or is "
        "corrupt: recompute it"
    )


def _read_dat(path: Path, data: bytes) -> _Raw:
    cur = _Cursor(path, data)
    n_entries = cur.i32("the entry count")
    if n_entries < 1:
        raise _garbled(path, 0, f"entry count {n_entries} < 1 (llama-quantize: 'no data in file')")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        start = cur.pos
        name = _read_dat_name(cur, i, n_entries)
        ncall = cur.i32(f"ncall of entry {i} ({name!r})")
        nval = cur.i32(f"nval of entry {i} ({name!r})")
        if nval < 1:
            raise _garbled(path, cur.pos - 4, f"entry {i} ({name!r}) has nval {nval} < 1")
        values = np.frombuffer(cur.take(4 * nval, f"the {nval} values of entry {i} ({name!r})"), dtype="<f4")
        if name in sums:
            raise _garbled(path, start, f"entry {i} repeats the name {name!r}")
        sums[name] = values.astype(np.float32)
        counts[name] = np.array([ncall], dtype=np.int64)
    chunk_count, datasets = _read_dat_trailer(cur)
    return _Raw(sums, counts, datasets, chunk_count, 0)


def _read_dat_name(cur: _Cursor, i: int, n_entries: int) -> str:
    at = cur.pos
    n = cur.i32(f"the name length of entry {i} of {n_entries}")
    if n < 1 or n > 4096:
        raise _garbled(cur.path, at, f"entry {i} of {n_entries} has name length {n} (a tensor name is 1..4096 bytes)")
    raw = cur.take(n, f"the name of entry {i} of {n_entries}")
    if b"\0" in raw:
        raise _garbled(cur.path, at + 4, f"entry {i} has a NUL byte inside its name {raw!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _garbled(cur.path, at + 4, f"entry {i} has a name that is not UTF-8: {raw[:64]!r}") from None


def _read_dat_trailer(cur: _Cursor) -> tuple[int, list[str]]:
    """The optional trailer: int32 chunk count, then int32 length and the dataset name."""
    if cur.remaining() == 0:
        return 0, []
    chunk_count = cur.i32("the trailer's chunk count")
    if cur.remaining() == 0:
        return chunk_count, []  # llama.cpp accepts a trailer without a dataset name
    n = cur.i32("the trailer's dataset name length")
    if n <= 0:
        return chunk_count, []
    name = cur.take(n, "the trailer's dataset name").split(b"\0", 1)[0]  # read as a C string
    return chunk_count, [name.decode("utf-8", errors="replace")]


def _read_gguf(path: Path) -> _Raw:
    """_read_gguf_fields, with anything gguf-py raises on a garbled file (it decodes lazily) named as such."""
    try:
        return _read_gguf_fields(path)
    except ImatrixError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, MemoryError) as exc:
        raise ImatrixError(
            f"{path}: garbled GGUF imatrix ({type(exc).__name__}: {exc}); copy or recompute the file"
        ) from None


def _read_gguf_fields(path: Path) -> _Raw:
    size = path.stat().st_size
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # gguf-py raises many types on garbage; all mean the same here
        raise ImatrixError(
            f"{path}: truncated or garbled GGUF imatrix ({type(exc).__name__}: {exc}); copy or recompute the file"
        ) from exc
    fields = reader.fields
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in fields]
    if missing:
        raise ImatrixError(
            f"{path}: GGUF file without imatrix metadata (missing {', '.join(missing)}); llama-quantize refuses it "
            "('missing imatrix metadata'): is this a model rather than an imatrix?"
        )
    scalars = {}
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        f = fields[key]
        if f.types != [GGUFValueType.UINT32]:
            raise ImatrixError(f"{path}: {key} has type {[t.name for t in f.types]}, llama.cpp requires UINT32")
        scalars[key] = int(f.contents())
    datasets: list[str] = []
    f = fields[KEY_DATASETS]
    if f.types == [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        datasets = [str(s) for s in f.contents()]
    _check_gguf_data_section(path, size, reader)
    pairs: dict[str, dict[str, object]] = {}
    for t in reader.tensors:
        for suffix in (SUMS_SUFFIX, COUNTS_SUFFIX):
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[: -len(suffix)], {})[suffix] = t
    if not reader.tensors:
        raise ImatrixError(f"{path}: GGUF imatrix with no tensors (llama-quantize: 'no data in file')")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for name in sorted(pairs):
        sums[name], counts[name] = _read_gguf_pair(path, name, pairs[name])
    return _Raw(sums, counts, datasets, scalars[KEY_CHUNK_COUNT], scalars[KEY_CHUNK_SIZE])


def _check_gguf_data_section(path: Path, size: int, reader: GGUFReader) -> None:
    """ggml's gguf reader rules: tensor data back to back, each padded to the alignment, all present in the file."""
    expected = int(reader.data_offset)
    for t in reader.tensors:
        if int(t.data_offset) != expected:
            raise ImatrixError(
                f"{path}: garbled GGUF imatrix: tensor {t.name} starts at offset {t.data_offset}, ggml expects "
                f"{expected} (tensor data must be contiguous and aligned to {reader.alignment}); recompute the file"
            )
        expected += -(-int(t.n_bytes) // reader.alignment) * reader.alignment
    if expected > size:
        raise ImatrixError(
            f"{path}: truncated GGUF imatrix: the tensor data (with alignment padding) ends at offset {expected} but "
            f"the file has {size} bytes (ggml, hence llama-quantize, refuses it); copy or recompute the file"
        )


def _read_gguf_pair(path: Path, name: str, pair: dict) -> tuple[np.ndarray, np.ndarray]:
    if set(pair) != {SUMS_SUFFIX, COUNTS_SUFFIX}:
        have = ", ".join(name + s for s in pair)
        raise ImatrixError(
            f"{path}: imatrix entry {name!r} needs both {SUMS_SUFFIX} and {COUNTS_SUFFIX}, found only {have}"
        )
    arrays = []
    for suffix in (SUMS_SUFFIX, COUNTS_SUFFIX):
        t = pair[suffix]
        if int(t.tensor_type) != _GGUF_F32:
            raise ImatrixError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, llama.cpp requires F32")
        arrays.append(np.asarray(t.data, dtype=np.float32).reshape(-1).copy())
    sums, raw_counts = arrays
    if raw_counts.size == 0 or sums.size % raw_counts.size:
        raise ImatrixError(
            f"{path}: imatrix entry {name!r} has {sums.size} sums for {raw_counts.size} counts; the sums must split "
            "into one equal slice per count"
        )
    return sums, _lround(raw_counts, path, name)


# ---- writing -------------------------------------------------------------------------------------------------------


def save_imatrix(imatrix: Imatrix, path: str | os.PathLike, fmt: str) -> Path:
    """Write `imatrix` as a llama-imatrix file in `fmt` ("gguf" or "dat"), atomically; returns the path.

    Both formats store each vector with a count of 1 (legacy: ncall 1), so llama-quantize, and
    :func:`load_imatrix`, read back exactly the same float32 vectors and the same digest. The legacy format keeps only
    the last dataset name and no chunk size (llama-imatrix writes it that way too).
    """
    stats = {}
    for name, vec in imatrix.entries.items():
        n = imatrix.n_mat.get(name, 1)
        stats[name] = (vec, np.ones(n, dtype=np.int64))
    return write_collected_imatrix(
        path, stats, fmt=fmt, datasets=imatrix.datasets, chunk_count=imatrix.chunk_count,
        chunk_size=imatrix.chunk_size,
    )


def write_collected_imatrix(
    path: str | os.PathLike,
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    fmt: str,
    datasets: Iterable[str] = (),
    chunk_count: int = 0,
    chunk_size: int = 0,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> Path:
    """Write raw collector statistics exactly as llama-imatrix's save_imatrix / save_imatrix_legacy do.

    `stats` maps a tensor name to (sums of squared activations, float32 [n_mat * ne0]; token counts, int [n_mat]).
    GGUF stores them as they are (entries sorted by name). The legacy format stores
    ``(sum / count) * ncall`` with ``ncall = ceil(max(counts) / chunk_size)``, 1 for a matrix never counted, skips
    entries with no counts at all, and keeps only the last dataset name; it needs chunk_size >= 1. `inputs`
    ({what: path}, e.g. the model the statistics come from) are refused as `path`.
    """
    if fmt not in FORMATS:
        raise ImatrixError(f"unknown imatrix format {fmt!r}; choose one of {', '.join(FORMATS)}")
    checked = {name: _check_stats(name, *stats[name]) for name in sorted(stats)}
    datasets = [str(d) for d in datasets]
    if fmt == "gguf":
        blob = _gguf_bytes(checked, datasets, chunk_count, chunk_size)
    else:
        if chunk_size < 1:
            raise ImatrixError(f"the legacy imatrix format needs chunk_size >= 1 to compute ncall, got {chunk_size}")
        blob = _dat_bytes(checked, datasets, chunk_count, chunk_size)
    from ..core.atomic import atomic_output

    path = Path(path)
    with atomic_output(path, inputs=inputs) as f:
        f.write(blob)
    return path


def _check_stats(name: str, sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sums = np.ascontiguousarray(sums, dtype=np.float32).reshape(-1)
    counts = np.asarray(counts).reshape(-1)
    if counts.size == 0 or sums.size == 0 or sums.size % counts.size:
        raise ImatrixError(
            f"imatrix entry {name!r}: {sums.size} sums and {counts.size} counts; need at least one of each and "
            "the same number of sums per count"
        )
    if np.any(counts < 0) or not np.array_equal(counts, np.round(counts)):
        raise ImatrixError(f"imatrix entry {name!r}: counts must be non-negative integers, got {counts.tolist()[:8]}")
    return sums, counts.astype(np.int64)


def _dat_bytes(stats: Mapping[str, tuple[np.ndarray, np.ndarray]], datasets: list[str], chunk_count: int,
               chunk_size: int) -> bytes:
    stored = {name: sc for name, sc in stats.items() if np.any(sc[1] != 0)}  # "has no data - skipping"
    out = [struct.pack("<i", len(stored))]
    for name, (sums, counts) in stored.items():
        raw = name.encode("utf-8")
        ncall = (int(counts.max()) + chunk_size - 1) // chunk_size  # ceiling division, as llama-imatrix
        ne0 = sums.size // counts.size
        count = np.repeat(counts.astype(np.float32), ne0)
        value = np.where(count == 0, np.float32(1.0), sums)
        count = np.where(count == 0, np.float32(1.0), count)
        tmp = (value / count) * np.float32(ncall)
        out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, sums.size), tmp.astype("<f4").tobytes()]
    last = datasets[-1].encode("utf-8") if datasets else b""
    out += [struct.pack("<ii", chunk_count, len(last)), last]
    return b"".join(out)


def _gguf_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _gguf_bytes(stats: Mapping[str, tuple[np.ndarray, np.ndarray]], datasets: list[str], chunk_count: int,
                chunk_size: int) -> bytes:
    """The bytes gguf_write_to_file produces for llama-imatrix's context (an empty dataset list included)."""
    kv = [
        _gguf_str(KEY_TYPE) + struct.pack("<I", _GGUF_STRING) + _gguf_str("imatrix"),
        _gguf_str(KEY_DATASETS) + struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_STRING, len(datasets))
        + b"".join(_gguf_str(d) for d in datasets),
        _gguf_str(KEY_CHUNK_COUNT) + struct.pack("<II", _GGUF_UINT32, chunk_count),
        _gguf_str(KEY_CHUNK_SIZE) + struct.pack("<II", _GGUF_UINT32, chunk_size),
    ]
    tensors: list[tuple[str, tuple[int, int], np.ndarray]] = []
    for name, (sums, counts) in stats.items():
        n_mat = counts.size
        tensors.append((name + SUMS_SUFFIX, (sums.size // n_mat, n_mat), sums))
        tensors.append((name + COUNTS_SUFFIX, (1, n_mat), counts.astype(np.float32)))
    infos, blobs, offset = [], [], 0
    for tname, (ne0, ne1), data in tensors:
        ne = [ne0] if ne1 == 1 else [ne0, ne1]  # ggml_n_dims: trailing 1s are not written (dense entries are 1-D)
        info = struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        infos.append(_gguf_str(tname) + info + struct.pack("<IQ", _GGUF_F32, offset))
        raw = data.astype("<f4").tobytes()
        blobs.append(raw + b"\0" * (_pad(len(raw)) - len(raw)))
        offset += _pad(len(raw))
    head = b"".join([GGUF_MAGIC, struct.pack("<IQQ", _GGUF_VERSION, len(tensors), len(kv)), *kv, *infos])
    return head + b"\0" * (_pad(len(head)) - len(head)) + b"".join(blobs)


def _pad(n: int) -> int:
    return (n + _GGUF_ALIGNMENT - 1) // _GGUF_ALIGNMENT * _GGUF_ALIGNMENT


__all__ = ["FORMATS", "Imatrix", "ImatrixError", "load_imatrix", "save_imatrix", "write_collected_imatrix"]
