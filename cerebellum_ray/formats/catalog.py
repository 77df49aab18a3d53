"""Model catalog: every tensor of a GGUF file with its group, layer, shape, type, size and legal types.

The catalog is the first stage of the data flow; precision maps, search spaces and the builder all address tensors
through it. Groups are a table of name patterns (``GROUP_RULES``), matched in order.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from . import gguf_io
from .ggml_types import TYPES_BY_ID, legal_types

# (group, regex on the tensor name). First match wins; 1-D norms and scales are caught before the weight rules.
GROUP_RULES: tuple[tuple[str, str], ...] = (
    ("norm", r"(norm|scale)(\.weight|\.bias)?$|\.scale$"),
    ("router", r"\.ffn_gate_inp\.weight$"),
    ("token_embd", r"^(per_layer_)?token_embd\.weight$"),
    ("output", r"^output\.weight$"),
    ("attn_q", r"\.attn_q\.weight$"),
    ("attn_k", r"\.attn_k\.weight$"),
    ("attn_v", r"\.attn_v\.weight$"),
    ("attn_qkv", r"\.attn_qkv\.weight$"),
    ("attn_output", r"\.attn_output\.weight$"),
    ("ffn_gate_up_exps", r"\.ffn_gate_up_exps\.weight$"),
    ("ffn_gate_exps", r"\.ffn_gate_exps\.weight$"),
    ("ffn_up_exps", r"\.ffn_up_exps\.weight$"),
    ("ffn_down_exps", r"\.ffn_down_exps\.weight$"),
    ("ffn_gate_shexp", r"\.ffn_gate_shexp\.weight$"),
    ("ffn_up_shexp", r"\.ffn_up_shexp\.weight$"),
    ("ffn_down_shexp", r"\.ffn_down_shexp\.weight$"),
    ("ffn_gate", r"\.ffn_gate\.weight$"),
    ("ffn_up", r"\.ffn_up\.weight$"),
    ("ffn_down", r"\.ffn_down\.weight$"),
)
GROUPS: tuple[str, ...] = tuple(g for g, _ in GROUP_RULES) + ("other",)
_COMPILED_RULES = tuple((g, re.compile(p)) for g, p in GROUP_RULES)
_LAYER = re.compile(r"^blk\.(\d+)\.")


def tensor_group(name: str, n_dims: int) -> str:
    """The group of a tensor name (see GROUP_RULES); 1-D tensors are norms/scales unless a rule says otherwise."""
    for group, pattern in _COMPILED_RULES:
        if pattern.search(name):
            return group
    return "norm" if n_dims == 1 and not name.endswith(".bias") else "other"


def tensor_layer(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def layer_ranges(layers) -> str:
    """Sorted layer numbers as ranges: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    xs = sorted(set(layers))
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def compress_names(names) -> list[str]:
    """Tensor names with the layer numbers of one pattern folded into ranges, in first-seen order:
    blk.0.attn_q.weight, blk.1.attn_q.weight, blk.3.attn_q.weight -> "blk.0-1,3.attn_q.weight"."""
    groups: dict[str, list[int]] = {}
    for name in names:
        m = _LAYER.match(name)
        if m:
            groups.setdefault("blk.{}." + name[m.end():], []).append(int(m.group(1)))
        else:
            groups.setdefault(name, [])
    return [key.replace("{}", layer_ranges(layers)) if layers else key for key, layers in groups.items()]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. `shape` is in ggml order: ne0 (the row length) first, experts last."""

    name: str
    group: str
    layer: int | None
    shape: tuple[int, ...]
    type: str
    n_bytes: int
    data_offset: int  # absolute offset of the data in its file
    file: int = 0  # which file of a split model holds it (ModelCatalog.files)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_per_row(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[0]

    @property
    def n_experts(self) -> int:
        return self.shape[2] if len(self.shape) >= 3 else 1

    @property
    def quantizable(self) -> bool:
        """2-D and 3-D matrices can take any type whose block divides the row; 1-D tensors stay as they are."""
        return len(self.shape) >= 2

    @property
    def legal_types(self) -> tuple[str, ...]:
        if not self.quantizable:
            return (self.type,)
        return legal_types(self.n_per_row)

    def bytes_as(self, type_name: str) -> int:
        from .ggml_types import ggml_type

        return self.n_rows * ggml_type(type_name).row_bytes(self.n_per_row)


@dataclass(frozen=True)
class ModelCatalog:
    """All tensors of one GGUF file, in file order, plus its metadata."""

    path: str
    arch: str
    tensors: tuple[TensorInfo, ...]
    kv: Mapping[str, Any] = field(repr=False)  # key -> value (long arrays summarized as strings)
    kv_entries: tuple = field(default=(), repr=False)  # gguf_io.KVEntry in file order, raw bytes included
    alignment: int = gguf_io.DEFAULT_ALIGNMENT
    file_size: int = 0  # all files together
    files: tuple[str, ...] = ()  # every file of the model, the first one first (one for an unsplit model)

    @property
    def parts(self) -> tuple[str, ...]:
        """The model's files (one, or every part of a split model, in order)."""
        return self.files or (self.path,)

    @cached_property
    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def __getitem__(self, name: str) -> TensorInfo:
        try:
            return self.by_name[name]
        except KeyError:
            close = [n for n in self.by_name if name.split(".")[-2:] == n.split(".")[-2:]][:3]
            hint = f"; similar names: {', '.join(close)}" if close else ""
            raise KeyError(f"tensor {name!r} is not in {self.path}{hint}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    @property
    def n_layer(self) -> int:
        value = self.kv.get(f"{self.arch}.block_count")
        if isinstance(value, int):
            return value
        layers = [t.layer for t in self.tensors if t.layer is not None]
        return max(layers) + 1 if layers else 0

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_elements if self.tensors else 0.0

    def group_summary(self) -> dict[str, dict[str, Any]]:
        """Per group: tensor count, elements, bytes and the types in use (with counts)."""
        out: dict[str, dict[str, Any]] = {}
        for t in self.tensors:
            g = out.setdefault(t.group, {"tensors": 0, "elements": 0, "bytes": 0, "types": {}})
            g["tensors"] += 1
            g["elements"] += t.n_elements
            g["bytes"] += t.n_bytes
            g["types"][t.type] = g["types"].get(t.type, 0) + 1
        return out


def load_catalog(path: str | os.PathLike) -> ModelCatalog:
    """Read a GGUF model's tensor table and metadata (no tensor data is read). A model split by llama-gguf-split is
    given by its first part; the others are found beside it and checked (gguf_io.split_parts), metadata comes from
    the first, tensors from all, each remembering its file."""
    parts = gguf_io.split_parts(gguf_io.read_header(path))
    tensors = []
    for index, header in enumerate(parts):
        infos = [_tensor_info(header, t, index) for t in header.tensors]
        gguf_io.check_layout(header, [t.n_bytes for t in infos])
        tensors += infos
    first = parts[0]
    kv = tuple(e for e in first.kv if e.key not in gguf_io.SPLIT_KEYS)
    return ModelCatalog(
        path=str(Path(path)),
        arch=str(next((e.value for e in kv if e.key == "general.architecture"), "unknown")),
        tensors=tuple(tensors),
        kv={e.key: e.value for e in kv},
        kv_entries=kv,
        alignment=first.alignment,
        file_size=sum(p.file_size for p in parts),
        files=tuple(p.path for p in parts),
    )


def _tensor_info(header: gguf_io.GGUFHeader, t: gguf_io.TensorEntry, file: int) -> TensorInfo:
    if t.type_id not in TYPES_BY_ID:
        raise gguf_io.GGUFError(f"{header.path}: tensor {t.name} has unknown ggml type id {t.type_id}")
    ty = TYPES_BY_ID[t.type_id]
    if t.shape[0] % ty.block_size:
        raise gguf_io.GGUFError(f"{header.path}: tensor {t.name}: row of {t.shape[0]} is not a multiple of {ty.name}'s "
                                "block")
    return TensorInfo(name=t.name, group=tensor_group(t.name, len(t.shape)), layer=tensor_layer(t.name),
                      shape=t.shape, type=ty.name, n_bytes=math.prod(t.shape[1:]) * ty.row_bytes(t.shape[0]),
                      data_offset=t.data_offset, file=file)


def catalog_as_dict(cat: ModelCatalog) -> dict[str, Any]:
    """The catalog as JSON-ready data (what `inspect --json` prints)."""
    return {
        "path": cat.path,
        "architecture": cat.arch,
        "n_layer": cat.n_layer,
        "n_tensors": len(cat.tensors),
        "n_elements": cat.n_elements,
        "tensor_bytes": cat.tensor_bytes,
        "file_size": cat.file_size,
        "bits_per_weight": round(cat.bits_per_weight, 4),
        "groups": cat.group_summary(),
        "tensors": [
            {
                "name": t.name,
                "group": t.group,
                "layer": t.layer,
                "shape": list(t.shape),
                "type": t.type,
                "bytes": t.n_bytes,
                "legal_types": list(t.legal_types),
            }
            for t in cat.tensors
        ],
    }


__all__ = [
    "GROUPS", "GROUP_RULES", "ModelCatalog", "TensorInfo", "catalog_as_dict", "compress_names", "layer_ranges",
    "load_catalog", "tensor_group", "tensor_layer"
]
