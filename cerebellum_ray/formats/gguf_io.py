"""GGUF files in and out: a checked reader and a streaming, atomic writer that copies metadata byte for byte.

Reading parses only the header (gguf-py's GGUFReader builds a numpy array per vocabulary string: 20 s for Gemma's
262k-token vocabulary, against 0.3 s here); tensor data is read later with pread. Writing is our own small
serializer because a quantized file must keep every key/value of its source exactly (raw bytes, same value
types, same order) and because a file's exact size must be known before any tensor is quantized: ``GGUFLayout``
computes both the header bytes and every tensor's offset from names, shapes and types alone.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGUFValueType

from ..core.errors import CerebellumError

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32


class GGUFError(CerebellumError):
    """A file that is not a usable GGUF model: the message names the file, what is wrong and what to do."""


@dataclass(frozen=True)
class KVEntry:
    key: str
    vtype: GGUFValueType
    raw: bytes  # the entry exactly as stored (key, type, value): copied verbatim into quantized files
    value: Any  # Python value; arrays longer than MAX_KV_ARRAY are summarized as a string


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # ggml order, ne0 first
    type_id: int
    data_offset: int  # absolute offset in the file


@dataclass(frozen=True)
class GGUFHeader:
    path: str
    version: int
    kv: tuple[KVEntry, ...]
    tensors: tuple[TensorEntry, ...]
    alignment: int
    data_offset: int
    file_size: int


MAX_KV_ARRAY = 4096
_U64 = struct.Struct("<Q")
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_SCALAR_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Cursor:
    """Reads the header of a GGUF file sequentially, pulling more bytes from disk as needed."""

    def __init__(self, f: BinaryIO, path: str, size: int):
        self.f, self.path, self.size = f, path, size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # file offset of the cursor

    def need(self, n: int, what: str) -> memoryview:
        if self.pos + n > self.size:
            raise GGUFError(
                f"{self.path}: truncated header: {what} at offset {self.pos} needs {n} bytes, file has {self.size}"
            )
        end = self.pos + n
        if end > self.base + len(self.buf):
            keep = self.buf[self.pos - self.base :]
            self.f.seek(self.base + len(self.buf))
            more = self.f.read(max(n - len(keep), 1 << 20))
            self.buf, self.base = keep + more, self.pos
        view = memoryview(self.buf)[self.pos - self.base : end - self.base]
        self.pos = end
        return view

    def unpack(self, code: str, what: str):
        return struct.unpack("<" + code, self.need(struct.calcsize(code), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", what)
        if n > 1 << 30:
            raise GGUFError(f"{self.path}: corrupt header: {what} claims a string of {n} bytes at offset {self.pos}")
        return bytes(self.need(n, what)).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Move past `count` length-prefixed strings, refilling the buffer in large reads."""
        pos, base, buf = self.pos, self.base, self.buf
        for _ in range(count):
            if pos + 8 > base + len(buf):
                self.pos = pos
                self.need(8, what)
                self.pos -= 8
                pos, base, buf = self.pos, self.base, self.buf
            n = _U64.unpack_from(buf, pos - base)[0]
            if n > 1 << 30:
                raise GGUFError(f"{self.path}: corrupt header: {what} claims a string of {n} bytes at offset {pos}")
            pos += 8 + n
            if pos > base + len(buf):
                self.pos = pos - n
                self.need(n, what)
                pos, base, buf = self.pos, self.base, self.buf
        self.pos = pos

    def value(self, vtype: int, what: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype in _SCALAR_CODES:
            return self.unpack(_SCALAR_CODES[vtype], what)
        if vtype == GGUFValueType.ARRAY:
            sub, count = self.unpack("I", what), self.unpack("Q", what)
            if count > self.size:
                raise GGUFError(f"{self.path}: corrupt header: {what} claims an array of {count} items")
            if sub in _SCALAR_SIZES and count > MAX_KV_ARRAY:
                self.need(_SCALAR_SIZES[sub] * count, what)
                return f"<array of {count} {GGUFValueType(sub).name.lower()}>"
            if sub in _SCALAR_SIZES:
                return list(struct.unpack(f"<{count}{_SCALAR_CODES[sub]}", self.need(_SCALAR_SIZES[sub] * count, what)))
            if sub != GGUFValueType.STRING:  # llama.cpp's gguf reader refuses arrays of arrays too
                raise GGUFError(f"{self.path}: corrupt header: {what} is an array of value type {sub} at offset "
                                f"{self.pos}; llama.cpp reads only arrays of scalars or strings")
            if count > MAX_KV_ARRAY:  # a vocabulary: walk over it without decoding 262k strings one by one
                self.skip_strings(count, what)
                return f"<array of {count} string>"
            return [self.string(what) for _ in range(count)]
        raise GGUFError(f"{self.path}: corrupt header: {what} has unknown value type {vtype} at offset {self.pos}")


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse a GGUF file's header (key/values and tensor table) without touching tensor data.

    Refuses missing files, wrong magic, unsupported versions, big-endian files, corrupt or truncated headers and
    tensors whose data lies beyond the end of the file, each with a message that says what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise GGUFError(f"{path}: is a directory, not a GGUF file")
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        cur = _Cursor(f, str(path), size)
        magic = bytes(cur.need(4, "magic")) if size >= 4 else b""
        if magic != GGUF_MAGIC:
            raise GGUFError(
                f"{path}: not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r}); "
                "convert the model with llama.cpp's convert_hf_to_gguf.py first"
            )
        version = cur.unpack("I", "version")
        if version not in (2, 3):
            hint = " (a big-endian file?)" if version > 0xFFFF else ""
            raise GGUFError(f"{path}: GGUF version {version} is not supported{hint}; expected 2 or 3")
        n_tensors, n_kv = cur.unpack("Q", "tensor count"), cur.unpack("Q", "key/value count")
        if n_tensors > size or n_kv > size:
            raise GGUFError(f"{path}: corrupt header: {n_tensors} tensors, {n_kv} key/values in {size} bytes")
        kv = []
        seen: set[str] = set()
        for _ in range(n_kv):
            start = cur.pos
            key = cur.string("key name")
            if key in seen:
                raise GGUFError(f"{path}: corrupt header: key {key!r} appears twice (llama.cpp refuses such files)")
            seen.add(key)
            vtype = cur.unpack("I", f"type of {key}")
            value = cur.value(vtype, key)
            f_raw = _raw_bytes(cur, f, start)
            kv.append(KVEntry(key, GGUFValueType(vtype), f_raw, value))
        tensors_raw = []
        for i in range(n_tensors):
            name = cur.string(f"tensor {i} name")
            n_dims = cur.unpack("I", f"{name} n_dims")
            if not 1 <= n_dims <= 4:
                raise GGUFError(f"{path}: corrupt header: tensor {name} has {n_dims} dimensions")
            shape = tuple(cur.unpack("Q", f"{name} shape") for _ in range(n_dims))
            if 0 in shape or any(d >= 1 << 62 for d in shape):
                raise GGUFError(f"{path}: corrupt header: tensor {name} has shape {list(shape)}; a weight tensor "
                                "has at least one element in every dimension")
            tensors_raw.append((name, shape, cur.unpack("I", f"{name} type"), cur.unpack("Q", f"{name} offset")))
        header_end = cur.pos
    alignment_entry = next((e for e in kv if e.key == "general.alignment"), None)
    alignment = DEFAULT_ALIGNMENT if alignment_entry is None else alignment_entry.value
    if alignment_entry is not None and alignment_entry.vtype != GGUFValueType.UINT32:
        raise GGUFError(f"{path}: general.alignment has value type {alignment_entry.vtype.name}; llama.cpp requires "
                        "UINT32")
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path}: general.alignment {alignment!r} is not a positive power of two")
    data_offset = _pad(header_end, alignment)
    tensors = tuple(TensorEntry(n, s, t, data_offset + o) for n, s, t, o in tensors_raw)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise GGUFError(f"{path}: corrupt header: tensor name {dup!r} appears twice")
    return GGUFHeader(str(path), version, tuple(kv), tensors, alignment, data_offset, size)


def check_layout(header: GGUFHeader, n_bytes: Sequence[int]) -> None:
    """Tensor data laid out as llama.cpp's gguf reader requires: the i-th tensor's data starts exactly where the
    previous one's (padded to the alignment) ends, in table order, and the last one ends within the file. This rules
    out overlapping, unaligned, reordered and out-of-file data (llama.cpp refuses all of them: "tensor '...' has
    offset ..., expected ...")."""
    expected = 0
    for t, nb in zip(header.tensors, n_bytes):
        offset = t.data_offset - header.data_offset
        if offset != expected:
            raise GGUFError(
                f"{header.path}: corrupt layout: tensor {t.name} has data offset {offset}, but llama.cpp requires "
                f"{expected} (right after the previous tensor, padded to {header.alignment} bytes); the file was "
                "not written by a GGUF writer or was damaged: re-convert or re-download it"
            )
        expected += _pad(nb, header.alignment)
    end = header.data_offset + (expected if not n_bytes else expected - _pad(n_bytes[-1], header.alignment)
                                + n_bytes[-1])
    if end > header.file_size:
        raise GGUFError(
            f"{header.path}: truncated: the tensor data needs {end} bytes but the file has {header.file_size}; the "
            "download or copy is incomplete"
        )


def _raw_bytes(cur: _Cursor, f: BinaryIO, start: int) -> bytes:
    if start >= cur.base:
        return bytes(cur.buf[start - cur.base : cur.pos - cur.base])
    f.seek(start)
    return f.read(cur.pos - start)


# ---- encoding new key/values -------------------------------------------------------------------------------------


def _encode_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}


def encode_kv(key: str, value: Any, vtype: GGUFValueType) -> bytes:
    """One key/value entry in GGUF encoding: a string or a scalar (copied entries keep their raw bytes instead)."""
    out = _encode_str(key) + struct.pack("<I", int(vtype))
    if vtype == GGUFValueType.STRING:
        return out + _encode_str(str(value))
    if vtype not in _SCALAR_FORMATS:
        raise ValueError(f"encode_kv writes strings and scalars, not {vtype.name} (key {key})")
    return out + struct.pack(_SCALAR_FORMATS[vtype], value)


# ---- layout ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSlot:
    """One tensor as the writer lays it out: ggml shape (ne0 first), ggml type id and data size in bytes."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    n_bytes: int


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class GGUFLayout:
    """Header bytes and data offsets of a GGUF file, known before any tensor data exists."""

    header: bytes  # magic, counts, key/values, tensor infos, padded to the alignment
    slots: tuple[TensorSlot, ...]
    offsets: tuple[int, ...]  # of each tensor's data, relative to the end of the header
    alignment: int

    @classmethod
    def build(cls, kv_entries: Sequence[bytes], slots: Sequence[TensorSlot], alignment: int) -> GGUFLayout:
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(slots), len(kv_entries)), *kv_entries]
        offsets, offset = [], 0
        for s in slots:
            offsets.append(offset)
            info = _encode_str(s.name) + struct.pack("<I", len(s.shape))
            info += b"".join(struct.pack("<Q", d) for d in s.shape)
            info += struct.pack("<IQ", s.type_id, offset)
            parts.append(info)
            offset += _pad(s.n_bytes, alignment)
        header = b"".join(parts)
        header += b"\0" * (_pad(len(header), alignment) - len(header))
        return cls(header, tuple(slots), tuple(offsets), alignment)

    @property
    def file_size(self) -> int:
        return len(self.header) + sum(_pad(s.n_bytes, self.alignment) for s in self.slots)


# ---- padding -----------------------------------------------------------------------------------------------------


def write_padding(f: BinaryIO, n_bytes: int, alignment: int) -> None:
    f.write(b"\0" * (_pad(n_bytes, alignment) - n_bytes))


# ---- split models (llama.cpp's gguf-split) -------------------------------------------------------------------------

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)
_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_path(prefix: str | os.PathLike, index: int, count: int) -> Path:
    """llama.cpp's name of part `index` (0-based) of `count`: PREFIX-00001-of-00003.gguf (llama_split_path)."""
    return Path(f"{prefix}-{index + 1:05d}-of-{count:05d}.gguf")


def _kv(header: GGUFHeader, key: str):
    return next((e for e in header.kv if e.key == key), None)


def split_parts(header: GGUFHeader) -> tuple[GGUFHeader, ...]:
    """All parts of the model whose first file's header this is (just it for a single-file model), found and
    checked as llama.cpp's model loader finds and checks them: the first file is part 1, the others are named after
    it, each says its own index, no tensor appears twice, and the tensor count adds up."""
    count_kv = _kv(header, SPLIT_COUNT)
    if count_kv is None or count_kv.value in (0, 1):
        return (header,)
    path = header.path
    for key, vtype in ((SPLIT_NO, GGUFValueType.UINT16), (SPLIT_COUNT, GGUFValueType.UINT16),
                       (SPLIT_TENSORS, GGUFValueType.INT32)):
        e = _kv(header, key)
        if e is None or e.vtype != vtype:
            raise GGUFError(f"{path}: a split model's first file needs {key} of type {vtype.name}")
    if _kv(header, SPLIT_NO).value != 0:
        raise GGUFError(f"{path}: is part {_kv(header, SPLIT_NO).value + 1} of a split model; give its first part "
                        "(...-00001-of-NNNNN.gguf)")
    count = count_kv.value
    m = _SPLIT_NAME.match(Path(path).name)
    if not m or int(m.group("no")) != 1 or int(m.group("count")) != count:
        raise GGUFError(f"{path}: a split model of {count} parts must be named PREFIX-00001-of-{count:05d}.gguf "
                        "(as llama-gguf-split writes it)")
    prefix = Path(path).parent / m.group("prefix")
    parts = [header]
    for i in range(1, count):
        part_path = split_path(prefix, i, count)
        if not part_path.is_file():
            raise GGUFError(f"{path}: part {i + 1} of {count}, {part_path}, is missing")
        part = read_header(part_path)
        no = _kv(part, SPLIT_NO)
        if no is None or no.value != i:
            raise GGUFError(f"{part_path}: says it is part {None if no is None else no.value + 1}, expected {i + 1} "
                            f"of {count}")
        parts.append(part)
    names = [t.name for p in parts for t in p.tensors]
    if len(set(names)) != len(names):
        dup = next(n for n, k in Counter(names).items() if k > 1)
        raise GGUFError(f"{path}: tensor {dup!r} appears in two parts of the split model")
    expected = _kv(header, SPLIT_TENSORS).value
    if expected != len(names):
        raise GGUFError(f"{path}: the split model should hold {expected} tensors, its {count} parts hold "
                        f"{len(names)}: a part is from another split")
    return tuple(parts)


def model_files(path: str | os.PathLike) -> tuple[str, ...]:
    """The files of a model: the path itself, or every part of a split model (given its first part)."""
    return tuple(p.path for p in split_parts(read_header(path)))


def model_digest(path: str | os.PathLike, memo_dir: Path | None = None) -> str:
    """sha256 of a model's bytes: of every part in order when `path` is the first part of a split model (so a
    changed later part changes it), remembered per file state in `memo_dir` (see digests)."""
    from ..core.digests import file_digest

    return file_digest(model_files(path), memo_dir)


# ---- writing split models ----------------------------------------------------------------------------------------

SPLIT_CUT_ALIGNMENT = 32  # llama-gguf-split counts each tensor's bytes padded to 32 when it decides where to cut
_DECIMAL_SPLIT_SIZE = re.compile(r"\s*([1-9][0-9]*)\s*([MG])\s*")


def parse_split_size(value: str | int) -> int:
    """Bytes per part for --split-max-size: llama-gguf-split's own spelling (N followed by M or G, decimal: 10G is
    10 * 10**9 bytes) or any size `units.parse_size` reads (10GB, 9.5GiB, 123456)."""
    from ..core.units import parse_size

    m = _DECIMAL_SPLIT_SIZE.fullmatch(str(value))
    if m:
        return int(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)
    return parse_size(value, "--split-max-size")


def split_ranges(slots: Sequence[TensorSlot], max_bytes: int) -> tuple[range, ...]:
    """Which tensors go to which part, as llama-gguf-split --split-max-size cuts: tensors in order, a new part
    before the tensor that would take the current part's data (each tensor padded to 32) past `max_bytes`; a
    tensor larger than that gets a part of its own (gguf-split would fail on a first tensor that large)."""
    ranges, start, current = [], 0, 0
    for i, s in enumerate(slots):
        n = _pad(s.n_bytes, SPLIT_CUT_ALIGNMENT)
        if i > start and current + n > max_bytes:
            ranges.append(range(start, i))
            start, current = i, 0
        current += n
    ranges.append(range(start, len(slots)))
    return tuple(ranges)


def split_kv_entries(index: int, count: int, n_tensors: int) -> list[bytes]:
    """The split keys every part carries, with llama.cpp's types (its loader checks them strictly)."""
    return [encode_kv(SPLIT_NO, index, GGUFValueType.UINT16), encode_kv(SPLIT_COUNT, count, GGUFValueType.UINT16),
            encode_kv(SPLIT_TENSORS, n_tensors, GGUFValueType.INT32)]


@dataclass(frozen=True)
class PartLayout:
    """One file of an output: which tensors (indices into the model's tensor list) and how they are laid out."""

    tensors: range
    layout: GGUFLayout


def layout_parts(kv_entries: Sequence[bytes], slots: Sequence[TensorSlot], alignment: int,
                 split_max_bytes: int | None = None) -> tuple[PartLayout, ...]:
    """The output's files: one, or the parts of a split model as llama.cpp loads them: the first holds every
    key/value and the split keys, the others only the split keys (and general.alignment when it is not 32)."""
    if split_max_bytes is None:
        return (PartLayout(range(len(slots)), GGUFLayout.build(kv_entries, slots, alignment)),)
    held = [k for k in map(_entry_key, kv_entries) if k in SPLIT_KEYS]
    if held:
        raise GGUFError(f"the key/values to write already hold {held[0]}: split keys are written per part")
    ranges = split_ranges(slots, split_max_bytes)
    alignment_kv = ([] if alignment == DEFAULT_ALIGNMENT else
                    [encode_kv("general.alignment", alignment, GGUFValueType.UINT32)])
    return tuple(
        PartLayout(r, GGUFLayout.build([*(kv_entries if i == 0 else alignment_kv),
                                        *split_kv_entries(i, len(ranges), len(slots))],
                                       slots[r.start:r.stop], alignment))
        for i, r in enumerate(ranges)
    )


def _entry_key(raw: bytes) -> str:
    (n,) = _U64.unpack_from(raw)
    return raw[8:8 + n].decode("utf-8", errors="replace")


def split_output_paths(out: str | os.PathLike, n_parts: int) -> list[Path]:
    """Where the parts of a split output go: OUT.gguf -> OUT-00001-of-0000N.gguf ... (gguf-split's naming, with
    OUT's .gguf taken off as the prefix)."""
    out = Path(out)
    prefix = out.with_suffix("") if out.suffix == ".gguf" else out
    return [split_path(prefix, i, n_parts) for i in range(n_parts)]


__all__ = [
    "DEFAULT_ALIGNMENT", "GGUFError", "GGUFHeader", "GGUFLayout", "GGUF_MAGIC", "GGUF_VERSION", "KVEntry",
    "MAX_KV_ARRAY", "PartLayout", "SPLIT_CUT_ALIGNMENT", "SPLIT_KEYS", "TensorEntry", "TensorSlot", "check_layout",
    "encode_kv", "layout_parts", "model_digest", "model_files", "parse_split_size", "read_header", "split_kv_entries",
    "split_output_paths", "split_parts", "split_path", "split_ranges", "write_padding"
]
