"""GGUF files in and out: a checked reader and a streaming, atomic writer that copies metadata byte for byte.

Reading goes through gguf-py's ``GGUFReader`` (a memory map: a tensor is read only when touched). Writing is our own
small serializer because a quantized file must keep every key/value of its source exactly (raw bytes, same value
types, same order) and because a file's exact size must be known before any tensor is quantized: ``GGUFLayout``
computes both the header bytes and every tensor's offset from names, shapes and types alone.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from gguf import GGUFReader, GGUFValueType

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32


class GGUFError(ValueError):
    """A file that is not a usable GGUF model: the message names the file, what is wrong and what to do."""


def open_gguf(path: str | os.PathLike) -> GGUFReader:
    """Open a GGUF file read-only, refusing missing, non-GGUF, big-endian and truncated files with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(
            f"{path}: not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r}); "
            "convert the model with llama.cpp's convert_hf_to_gguf.py first"
        )
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, KeyError, IndexError, OverflowError) as exc:
        raise GGUFError(f"{path}: corrupt or truncated GGUF header ({exc}); re-download or re-convert the file") from exc
    if reader.byte_order != "I":
        raise GGUFError(f"{path}: big-endian GGUF files are not supported; convert it on a little-endian machine")
    for t in reader.tensors:
        end = t.data_offset + t.n_bytes
        if end > size:
            raise GGUFError(
                f"{path}: truncated: tensor {t.name} needs bytes {t.data_offset}..{end} but the file has {size}; "
                "the download or copy is incomplete"
            )
    return reader


def kv_fields(reader: GGUFReader) -> list:
    """The file's key/value fields in file order (the reader's pseudo-fields GGUF.* excluded)."""
    return [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]


def raw_field_bytes(field) -> bytes:
    """The exact bytes of one key/value entry as stored in the file (key, value type, value)."""
    return b"".join(part.tobytes() for part in field.parts)


def field_value(field, max_array: int | None = None) -> Any:
    """A field as a Python value; arrays longer than `max_array` become a short description instead."""
    if field.types and field.types[0] == GGUFValueType.ARRAY and max_array is not None and len(field.data) > max_array:
        sub = field.types[-1].name.lower()
        return f"<array of {len(field.data)} {sub}>"
    return field.contents()


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
    """One key/value entry in GGUF encoding (strings, scalars and arrays of strings or scalars)."""
    out = _encode_str(key) + struct.pack("<I", int(vtype))
    if vtype == GGUFValueType.STRING:
        return out + _encode_str(str(value))
    if vtype == GGUFValueType.ARRAY:
        items = list(value)
        sub = GGUFValueType.STRING if all(isinstance(v, str) for v in items) else GGUFValueType.FLOAT32
        if items and all(isinstance(v, int) for v in items):
            sub = GGUFValueType.INT32
        out += struct.pack("<IQ", int(sub), len(items))
        if sub == GGUFValueType.STRING:
            return out + b"".join(_encode_str(v) for v in items)
        return out + b"".join(struct.pack(_SCALAR_FORMATS[sub], v) for v in items)
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
    def build(cls, kv_entries: Sequence[bytes], slots: Sequence[TensorSlot], alignment: int) -> "GGUFLayout":
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


# ---- atomic output -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file in the same directory, renamed into place only on success.

    On any error the temporary file is removed and `path` is left as it was (absent, or the previous file).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OSError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {path}: directory {directory} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_padding(f: BinaryIO, n_bytes: int, alignment: int) -> None:
    f.write(b"\0" * (_pad(n_bytes, alignment) - n_bytes))
