"""ggml tensor types and llama.cpp file-type presets, as tables.

Everything that depends on a quant type (block size, bytes per block, whether ggml needs an importance matrix,
llama.cpp's row-length fallback) is read from the tables below; nothing else in the package hard-codes a type.
Numbers match ggml.h / gguf-py of llama.cpp as vendored in llama-cpp-python 0.3.36.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import CerebellumError


class TypeNameError(CerebellumError):
    """A ggml type or llama.cpp preset name (or id) that does not exist; the message lists what does."""


@dataclass(frozen=True)
class GGMLType:
    name: str  # as ggml_type_name() spells it, upper-cased (Q4_K, IQ2_XXS, F16, ...)
    id: int  # enum ggml_type
    block_size: int  # elements per block: a row length must be a multiple of it
    type_size: int  # bytes per block
    quantizable: bool  # ggml_quantize_chunk can write it (a precision map may ask for it)
    needs_imatrix: bool  # refused without an importance matrix (see the note under the table)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes of one row of n_per_row elements; the caller has checked that the row length is legal."""
        return n_per_row // self.block_size * self.type_size

    def fits_row(self, n_per_row: int) -> bool:
        return n_per_row % self.block_size == 0


_QK_K = 256

# name, id, block size, bytes per block, quantizable, needs imatrix
_TYPE_ROWS = [
    ("F32", 0, 1, 4, True, False),
    ("F16", 1, 1, 2, True, False),
    ("Q4_0", 2, 32, 2 + 16, True, False),
    ("Q4_1", 3, 32, 2 + 2 + 16, True, False),
    ("Q5_0", 6, 32, 2 + 4 + 16, True, False),
    ("Q5_1", 7, 32, 2 + 2 + 4 + 16, True, False),
    ("Q8_0", 8, 32, 2 + 32, True, False),
    ("Q8_1", 9, 32, 2 + 2 + 32, False, False),
    ("Q2_K", 10, _QK_K, 2 + 2 + _QK_K // 16 + _QK_K // 4, True, False),
    ("Q3_K", 11, _QK_K, 2 + _QK_K // 4 + _QK_K // 8 + 12, True, False),
    ("Q4_K", 12, _QK_K, 2 + 2 + _QK_K // 2 + 12, True, False),
    ("Q5_K", 13, _QK_K, 2 + 2 + _QK_K // 2 + _QK_K // 8 + 12, True, False),
    ("Q6_K", 14, _QK_K, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16, True, False),
    ("Q8_K", 15, _QK_K, 4 + _QK_K + _QK_K // 8, False, False),
    ("IQ2_XXS", 16, _QK_K, 2 + _QK_K // 4, True, True),
    ("IQ2_XS", 17, _QK_K, 2 + _QK_K // 4 + _QK_K // 32, True, True),
    ("IQ3_XXS", 18, _QK_K, 2 + _QK_K // 4 + _QK_K // 8, True, True),
    ("IQ1_S", 19, _QK_K, 2 + _QK_K // 8 + _QK_K // 16, True, True),
    ("IQ4_NL", 20, 32, 2 + 16, True, False),
    ("IQ3_S", 21, _QK_K, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4, True, False),
    ("IQ2_S", 22, _QK_K, 2 + _QK_K // 4 + _QK_K // 16, True, True),
    ("IQ4_XS", 23, _QK_K, 2 + 2 + _QK_K // 2 + _QK_K // 64, True, False),
    ("I8", 24, 1, 1, False, False),
    ("I16", 25, 1, 2, False, False),
    ("I32", 26, 1, 4, False, False),
    ("I64", 27, 1, 8, False, False),
    ("F64", 28, 1, 8, False, False),
    ("IQ1_M", 29, _QK_K, _QK_K // 8 + _QK_K // 16 + _QK_K // 32, True, True),
    ("BF16", 30, 1, 2, True, False),
    ("TQ1_0", 34, _QK_K, 2 + 4 * 13, True, False),
    ("TQ2_0", 35, _QK_K, 2 + 64, True, False),
    ("MXFP4", 39, 32, 1 + 16, True, False),
    ("NVFP4", 40, 64, 4 + 32, True, False),
    ("Q1_0", 41, 128, 2 + 16, True, False),
    ("Q2_0", 42, 64, 2 + 16, True, False),
]

TYPES: dict[str, GGMLType] = {row[0]: GGMLType(*row) for row in _TYPE_ROWS}
TYPES_BY_ID: dict[int, GGMLType] = {t.id: t for t in TYPES.values()}

# Types that a precision map may name (ggml can quantize to them), ordered by bits per weight.
QUANTIZABLE: tuple[str, ...] = tuple(
    sorted((t.name for t in TYPES.values() if t.quantizable), key=lambda n: (TYPES[n].bits_per_weight, n))
)

# needs_imatrix follows llama.cpp's tensor_requires_imatrix (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS): ggml
# itself aborts the process for IQ1_S, IQ2_XXS and IQ2_XS without one, and llama.cpp calls the others garbage.

# Types whose quantizer weighs the rounding error by the importance vector (ggml_quantize_chunk with quant_weights):
# an imatrix changes their bytes; the others (F16, BF16, Q8_0, TQ*, MXFP4, NVFP4, Q1_0, Q2_0) ignore it. Checked
# against ggml itself (tests/test_quantize_oracle.py).
IMATRIX_WEIGHTED: frozenset[str] = frozenset({
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "IQ1_M"})

# llama.cpp's row-length fallback (src/llama-quant.cpp tensor_type_fallback): a type whose block does not divide the
# row length is replaced by the type on the right; if that does not fit either, F16.
FALLBACK: dict[str, str] = {
    "IQ1_S": "IQ4_NL",
    "IQ1_M": "IQ4_NL",
    "IQ2_XXS": "IQ4_NL",
    "IQ2_XS": "IQ4_NL",
    "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL",
    "IQ3_S": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
    "Q2_0": "Q4_0",
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "TQ1_0": "Q4_0",
    "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}


def ggml_type(name_or_id: str | int) -> GGMLType:
    """Look a type up by name (case-insensitive) or enum value; the error lists what exists."""
    if isinstance(name_or_id, int):
        if name_or_id in TYPES_BY_ID:
            return TYPES_BY_ID[name_or_id]
        raise ValueError(f"unknown ggml type id {name_or_id}; known ids: {sorted(TYPES_BY_ID)}")
    key = str(name_or_id).strip().upper()
    if key in TYPES:
        return TYPES[key]
    raise TypeNameError(f"unknown ggml type {name_or_id!r}; quantizable types: {', '.join(QUANTIZABLE)}")


def fallback_type(target: str, n_per_row: int) -> str:
    """The type llama.cpp would write instead of `target` for rows of n_per_row elements."""
    t = ggml_type(target)
    if t.fits_row(n_per_row):
        return t.name
    if t.name in FALLBACK:
        replacement = FALLBACK[t.name]
    elif t.block_size <= 32:
        replacement = t.name  # already a 32-block type: only F16 is left
    else:
        raise TypeNameError(f"llama.cpp defines no row-length fallback for {t.name} (llama-quantize stops there too)")
    return replacement if TYPES[replacement].fits_row(n_per_row) else "F16"


def legal_types(n_per_row: int) -> tuple[str, ...]:
    """Quantizable types whose block size divides the row length, by bits per weight."""
    return tuple(n for n in QUANTIZABLE if TYPES[n].fits_row(n_per_row))


# llama.cpp file types (enum llama_ftype) that name a preset mixture, with their default tensor type
# (llama_ftype_get_default_type). Names are llama-quantize's.
@dataclass(frozen=True)
class FileType:
    name: str
    id: int
    default_type: str


_FTYPE_ROWS = [
    ("F32", 0, "F32"),
    ("F16", 1, "F16"),
    ("Q4_0", 2, "Q4_0"),
    ("Q4_1", 3, "Q4_1"),
    ("Q8_0", 7, "Q8_0"),
    ("Q5_0", 8, "Q5_0"),
    ("Q5_1", 9, "Q5_1"),
    ("Q2_K", 10, "Q2_K"),
    ("Q3_K_S", 11, "Q3_K"),
    ("Q3_K_M", 12, "Q3_K"),
    ("Q3_K_L", 13, "Q3_K"),
    ("Q4_K_S", 14, "Q4_K"),
    ("Q4_K_M", 15, "Q4_K"),
    ("Q5_K_S", 16, "Q5_K"),
    ("Q5_K_M", 17, "Q5_K"),
    ("Q6_K", 18, "Q6_K"),
    ("IQ2_XXS", 19, "IQ2_XXS"),
    ("IQ2_XS", 20, "IQ2_XS"),
    ("Q2_K_S", 21, "Q2_K"),
    ("IQ3_XS", 22, "IQ3_S"),
    ("IQ3_XXS", 23, "IQ3_XXS"),
    ("IQ1_S", 24, "IQ1_S"),
    ("IQ4_NL", 25, "IQ4_NL"),
    ("IQ3_S", 26, "IQ3_S"),
    ("IQ3_M", 27, "IQ3_S"),
    ("IQ2_S", 28, "IQ2_XS"),
    ("IQ2_M", 29, "IQ2_S"),
    ("IQ4_XS", 30, "IQ4_XS"),
    ("IQ1_M", 31, "IQ1_M"),
    ("BF16", 32, "BF16"),
    ("TQ1_0", 36, "TQ1_0"),
    ("TQ2_0", 37, "TQ2_0"),
    ("MXFP4_MOE", 38, "MXFP4"),
    ("Q1_0", 40, "Q1_0"),
    ("Q2_0", 41, "Q2_0"),
]

FILE_TYPES: dict[str, FileType] = {row[0]: FileType(*row) for row in _FTYPE_ROWS}
FILE_TYPES_BY_ID: dict[int, FileType] = {f.id: f for f in FILE_TYPES.values()}


def file_type(name: str) -> FileType:
    key = name.strip().upper()
    if key in FILE_TYPES:
        return FILE_TYPES[key]
    raise TypeNameError(f"unknown llama.cpp preset {name!r}; presets: {', '.join(FILE_TYPES)}")


__all__ = [
    "FALLBACK", "FILE_TYPES", "FILE_TYPES_BY_ID", "FileType", "GGMLType", "QUANTIZABLE", "TYPES", "TYPES_BY_ID",
    "TypeNameError", "fallback_type", "file_type", "ggml_type", "legal_types"
]
