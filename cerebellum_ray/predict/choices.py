"""A search space as a table of discrete choices with exact byte costs: what the prior, the surrogate and the solver
share.

Each dimension of a `SearchSpace` becomes one row of the table. Its *levels* are the ways its tensors can be typed:
first the candidate types (level k = `Dimension.types[k]`, the point's index), then, when the space's base map
gives the dimension's tensors types that are not one candidate (mixed types, or a type outside the candidates), one
extra *base level*: what a partial point (`SearchSpace.map_for` semantics) leaves that dimension at. The base level
can be measured (ablation rows) but never chosen by the solver.

Sizes are exact and additive: a map's tensor bytes are `fixed_bytes` (every tensor outside all dimensions, at its
base type) plus each dimension's level bytes (`TensorInfo.bytes_as` of each tensor's type, llama.cpp's row-length
fallback applied as `precision_map.resolve` applies it). This is the number the search's size constraint compares
(tensor data, no header); bits per weight are `8 * bytes / n_elements` over every tensor of the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..formats.catalog import ModelCatalog, TensorInfo
from ..core.errors import CerebellumError
from ..formats.ggml_types import fallback_type, ggml_type
from ..formats.space import SearchSpace


class ChoiceError(CerebellumError):
    """A point, map or level vector that is not a choice of the table; the message names the parameter."""


@dataclass(frozen=True)
class ChoiceTable:
    """Every dimension's levels (tensor types) and their exact bytes; see the module docstring."""

    space: str  # the space's name
    params: tuple[str, ...]
    families: tuple[str, ...]  # per param: the space file's dimension it comes from (attn_q for attn_q.L3)
    tensors: tuple[tuple[str, ...], ...]
    types: tuple[tuple[str, ...], ...]  # per param: the candidate types (point index -> type)
    levels: tuple[tuple[tuple[str, ...], ...], ...]  # per param, per level: the type of each of its tensors
    base_level: tuple[int, ...]  # per param: the level the base map gives it (a candidate, or the extra level)
    level_bytes: tuple[tuple[int, ...], ...]  # per param, per level: exact tensor bytes
    fixed_bytes: int  # tensors outside every dimension, at their base types
    n_elements: int  # every tensor of the model (the bits-per-weight denominator)
    base: str = ""  # the base map's name (PrecisionMap.base)
    fixed_digest: str = ""  # sha256 of the name=type lines of the tensors outside every dimension ("": unchecked)

    def __post_init__(self):
        n = len(self.params)
        for name in ("families", "tensors", "types", "levels", "base_level", "level_bytes"):
            if len(getattr(self, name)) != n:
                raise ChoiceError(f"choice table: {name} has {len(getattr(self, name))} entries for {n} parameters")
        if len(set(self.params)) != n:
            raise ChoiceError("choice table: a parameter is named twice")
        for i, p in enumerate(self.params):
            k, n_lev = len(self.types[i]), len(self.levels[i])
            if k < 1 or n_lev not in (k, k + 1) or len(self.level_bytes[i]) != n_lev:
                raise ChoiceError(f"choice table: parameter {p} has {k} candidates, {n_lev} levels and "
                                  f"{len(self.level_bytes[i])} sizes (levels = candidates, plus one base level)")
            if not 0 <= self.base_level[i] < n_lev:
                raise ChoiceError(f"choice table: parameter {p}: base level {self.base_level[i]} is not a level")
            if n_lev == k + 1 and self.base_level[i] != k:
                raise ChoiceError(f"choice table: parameter {p} has an extra level that is not its base level")

    # ---- shape ----

    @property
    def n_params(self) -> int:
        return len(self.params)

    def n_candidates(self, i: int) -> int:
        return len(self.types[i])

    def n_levels(self, i: int) -> int:
        return len(self.levels[i])

    def index(self, param: str) -> int:
        try:
            return self.params.index(param)
        except ValueError:
            raise ChoiceError(f"space {self.space} has no parameter {param!r}") from None

    def level_name(self, i: int, level: int) -> str:
        """The candidate type of a level, or 'base' for the extra base level."""
        return self.types[i][level] if level < len(self.types[i]) else "base"

    # ---- encodings ----

    def levels_of_point(self, point: Mapping[str, int]) -> tuple[int, ...]:
        """Levels of a (possibly partial) point: a missing parameter is at its base level, as in map_for."""
        unknown = set(point) - set(self.params)
        if unknown:
            raise ChoiceError(f"point names {sorted(unknown)[0]!r}, not a parameter of space {self.space}")
        out = []
        for i, p in enumerate(self.params):
            if p not in point:
                out.append(self.base_level[i])
                continue
            v = point[p]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
                raise ChoiceError(f"point: {p}={v!r} is not an index into its candidate types")
            v = int(v)
            if not 0 <= v < len(self.types[i]):
                raise ChoiceError(f"point: {p}={v} is outside its {len(self.types[i])} candidate types")
            out.append(v)
        return tuple(out)

    def levels_of_map(self, types: Mapping[str, str]) -> tuple[int, ...] | None:
        """Levels of a full map (tensor -> type, e.g. a stored row's `map`), or None when the map is no choice of
        this table: a dimension's tensors typed as none of its levels, or (when the table knows them) a tensor
        outside every dimension typed otherwise than in the base map."""
        if self.fixed_digest:
            in_dims = {t for ts in self.tensors for t in ts}
            if _types_digest({n: ty for n, ty in types.items() if n not in in_dims}) != self.fixed_digest:
                return None
        out = []
        for i in range(self.n_params):
            got = tuple(types.get(t) for t in self.tensors[i])
            if got not in self.levels[i]:
                return None
            # a candidate first: when the base level equals a candidate, it is that candidate
            out.append(self.levels[i].index(got))
        return tuple(out)

    def check_levels(self, levels: Sequence[int]) -> tuple[int, ...]:
        levels = tuple(int(x) for x in levels)
        if len(levels) != self.n_params:
            raise ChoiceError(f"{len(levels)} levels given for the {self.n_params} parameters of space {self.space}")
        for i, lv in enumerate(levels):
            if not 0 <= lv < self.n_levels(i):
                raise ChoiceError(f"{self.params[i]}: level {lv} outside its {self.n_levels(i)} levels")
        return levels

    def point_of_levels(self, levels: Sequence[int]) -> dict[str, int]:
        """The full point of a level vector; refused when a parameter is at the extra base level (no index)."""
        levels = self.check_levels(levels)
        for i, lv in enumerate(levels):
            if lv >= len(self.types[i]):
                raise ChoiceError(f"{self.params[i]} is at its base level, which is none of its candidate types "
                                  f"({', '.join(self.types[i])}): no point of the space gives it")
        return dict(zip(self.params, levels))

    # ---- sizes ----

    def size_of_levels(self, levels: Sequence[int]) -> int:
        """Exact tensor bytes of the map these levels give."""
        levels = self.check_levels(levels)
        return self.fixed_bytes + sum(self.level_bytes[i][lv] for i, lv in enumerate(levels))

    def size_of(self, point: Mapping[str, int]) -> int:
        """Exact tensor bytes of the map of a (possibly partial) point."""
        return self.size_of_levels(self.levels_of_point(point))

    @property
    def min_bytes(self) -> int:
        """The smallest map of the space (every dimension at its smallest candidate)."""
        return self.fixed_bytes + sum(min(b[: len(t)]) for b, t in zip(self.level_bytes, self.types))

    @property
    def max_bytes(self) -> int:
        return self.fixed_bytes + sum(max(b[: len(t)]) for b, t in zip(self.level_bytes, self.types))

    def bytes_for_bpw(self, bpw: float) -> int:
        """The byte budget of a bits-per-weight budget: floor(bpw * n_elements / 8)."""
        return bytes_for_bpw(bpw, self.n_elements)

    def bpw_of(self, n_bytes: int) -> float:
        return 8.0 * n_bytes / self.n_elements if self.n_elements else math.nan


def _types_digest(types: Mapping[str, str]) -> str:
    text = "\n".join(f"{n}={t}" for n, t in sorted(types.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def bytes_for_bpw(bpw: float, n_elements: int) -> int:
    """floor(bpw * n_elements / 8): the most tensor bytes a map of `n_elements` weights may take at `bpw`."""
    if not math.isfinite(bpw) or bpw <= 0:
        raise ChoiceError(f"bits per weight {bpw!r} must be a positive number")
    if n_elements <= 0:
        raise ChoiceError("bits per weight need the model's element count, which is unknown here; give bytes")
    return int(math.floor(bpw * n_elements / 8.0))


def _actual_type(t: TensorInfo, type_name: str, fallback: bool) -> str:
    """The type `precision_map.resolve` gives tensor t for a rule asking `type_name`."""
    if ggml_type(type_name).fits_row(t.n_per_row):
        return type_name
    if fallback:
        return fallback_type(type_name, t.n_per_row)
    raise ChoiceError(f"tensor {t.name}: type {type_name} does not fit rows of {t.n_per_row} elements and the "
                      "space does not allow llama.cpp's fallback")


def choice_table(space: SearchSpace, catalog: ModelCatalog, has_imatrix: bool = False) -> ChoiceTable:
    """The choice table of a validated space on its model. `has_imatrix` must be what trials build with: some
    presets give other base types with an importance matrix."""
    base = space.map_for(catalog, {}, has_imatrix=has_imatrix)
    in_dims: set[str] = set()
    families, tensors, types, levels, base_level, level_bytes = [], [], [], [], [], []
    for d in space.dimensions:
        infos = [catalog[n] for n in d.tensors]
        in_dims.update(d.tensors)
        lev = [tuple(_actual_type(t, ty, space.base.fallback) for t in infos) for ty in d.types]
        base_types = tuple(base.types[n] for n in d.tensors)
        if base_types in lev:
            b = lev.index(base_types)
        else:
            lev.append(base_types)
            b = len(lev) - 1
        families.append(d.dimension)
        tensors.append(tuple(d.tensors))
        types.append(tuple(d.types))
        levels.append(tuple(lev))
        base_level.append(b)
        level_bytes.append(tuple(sum(t.bytes_as(ty) for t, ty in zip(infos, lv)) for lv in lev))
    fixed = sum(t.bytes_as(base.types[t.name]) for t in catalog.tensors if t.name not in in_dims)
    return ChoiceTable(
        space=space.name, params=tuple(d.param for d in space.dimensions), families=tuple(families),
        tensors=tuple(tensors), types=tuple(types), levels=tuple(levels), base_level=tuple(base_level),
        level_bytes=tuple(level_bytes), fixed_bytes=int(fixed), n_elements=int(catalog.n_elements), base=base.base,
        fixed_digest=_types_digest({n: ty for n, ty in base.types.items() if n not in in_dims}),
    )


def params_of_row(row: Mapping) -> dict | None:
    """A store row's `params` (JSON text or a mapping) as a dict, or None when absent or not a mapping."""
    params = row.get("params")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            return None
    return dict(params) if isinstance(params, Mapping) else None


__all__ = ["ChoiceError", "ChoiceTable", "bytes_for_bpw", "choice_table", "params_of_row"]
