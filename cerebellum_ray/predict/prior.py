"""The zero-run prior: how much each choice of a search space damages its tensors, before any trial runs.

For every (tensor, type) a space can give, the importance-weighted relative quantization error

    e(t, T) = sum_rows sum_j imp_j (w_ij - dq(q_T(w))_ij)^2 / sum_rows sum_j imp_j w_ij^2

where w is the source tensor as float32 (ggml's own conversion, what the builder quantizes), q_T is the project's
quantizer (`quantize.quantize_array`: ggml_quantize_chunk row by row, the bytes the builder writes for those rows)
and dq is ggml's dequantization (`_ggml.to_float`). imp is the tensor's importance vector (llama.cpp's rules,
`build.imatrix_vectors`), the slice of its expert for 3-D expert tensors, or 1 without an imatrix. Numerator and
denominator are pooled over rows (and experts): e is the relative error of the tensor's output energy, since the
imatrix holds mean squared activations, sum_j imp_j dw_ij^2 = E[(dw_i . x)^2].

Sampling. ggml quantizes every row independently (the imatrix is per column), so a row's error does not depend on
the other rows. A tensor of at most `max_rows` rows (1024 by default) is used whole (exact). A larger one is
sampled: max_rows // n_experts rows from each expert (at least 1), drawn without replacement by a generator
seeded from the tensor's name and shape (deterministic, the same rows for every type, so types are compared on
the same rows). The ratio's relative standard error is about CV / sqrt(rows) (CV: the spread of the per-row error
ratios), under 2% at 1024 rows for CV up to 0.5: ample for a prior whose scale the surrogate fits anyway. Cost:
K-quants with an imatrix run at 2.5-6 M elements/s on two busy cores (Q2_K..Q5_K, measured); the Gemma-4 26B
space (about 570 (tensor, type) pairs of 1024 x 2816 elements) is ~1.6 G elements, some 7 minutes there and
proportionally less on more cores, once (cached).

Aggregation per dimension choice: the **sum over the dimension's tensors** of their relative errors. Relative
errors are intensive (independent of a tensor's size), and to first order a model's KL divergence is a sum over
tensors of sensitivity x relative error (the "linearity theorem" of HIGGS, Malinovskii et al. 2024): a dimension of
30 layers counts 30 tensors, a 3-D expert tensor counts once (each token passes through a few experts, not through
all of its elements). Weighting by elements or bytes would count an expert tensor 128 times a dense one of the same
relative error. Sensitivities differ between tensor roles; the surrogate fits them (one coefficient per family).
Per-tensor errors are kept (`Prior.tensor_errors`) for any other aggregate.

Cache: `<TensorCache dir>/prior/<key[:2]>/<key>.json`, key = sha256 of (source tensor digest, shape, source type,
target type, importance-vector digest, quantizer version, prior format, row sample), written with atomic.write_text;
an unreadable entry is computed again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from .. import QUANTIZER_VERSION
from ..formats.catalog import ModelCatalog, TensorInfo
from .choices import ChoiceTable, choice_table
from ..core.errors import CerebellumError
from ..formats.ggml_types import ggml_type
from ..formats.space import SearchSpace

if TYPE_CHECKING:
    from .solver import Problem
    from ..quant.tensor_cache import TensorCache

DEFAULT_MAX_ROWS = 1024
PRIOR_FORMAT = 1  # bump when the error's definition or the row sample changes (part of every cache key)


class PriorError(CerebellumError):
    """A prior that cannot be computed as asked (source, imatrix or sample settings); one line, names the tensor."""


@dataclass(frozen=True)
class Prior:
    """Relative quantization error of every choice of a space (see the module docstring).

    `level_errors[i][l]` is parameter i's error at level l of `table.levels[i]` (candidates first, then the extra
    base level when there is one); `errors`, `bytes` and `base_errors` give the same by name.
    """

    table: ChoiceTable
    level_errors: tuple[tuple[float, ...], ...]
    tensor_errors: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (tensor, type) -> error
    imatrix_digest: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    computed: int = field(default=0, compare=False)  # (tensor, type) pairs quantized by this call
    from_cache: int = field(default=0, compare=False)  # pairs read from the cache

    def __post_init__(self):
        if len(self.level_errors) != self.table.n_params:
            raise PriorError(f"prior: {len(self.level_errors)} rows of errors for {self.table.n_params} parameters")
        for i, errs in enumerate(self.level_errors):
            if len(errs) != self.table.n_levels(i) or not all(math.isfinite(e) and e >= 0 for e in errs):
                raise PriorError(f"prior: parameter {self.table.params[i]} needs {self.table.n_levels(i)} finite, "
                                 f"non-negative errors, got {errs}")

    @property
    def errors(self) -> Mapping[str, Mapping[str, float]]:
        """{param: {candidate type: relative error}}."""
        return MappingProxyType({p: MappingProxyType(dict(zip(ts, errs)))
                                 for p, ts, errs in zip(self.table.params, self.table.types, self.level_errors)})

    @property
    def bytes(self) -> Mapping[str, Mapping[str, int]]:
        """{param: {candidate type: exact tensor bytes of the choice}}."""
        return MappingProxyType({p: MappingProxyType(dict(zip(ts, b)))
                                 for p, ts, b in zip(self.table.params, self.table.types, self.table.level_bytes)})

    @property
    def base_errors(self) -> Mapping[str, float]:
        """{param: error at the base map's choice} (a candidate's error, or the extra base level's)."""
        return MappingProxyType({p: self.level_errors[i][self.table.base_level[i]]
                                 for i, p in enumerate(self.table.params)})

    def error(self, param: str, type_name: str) -> float:
        i = self.table.index(param)
        if type_name not in self.table.types[i]:
            raise PriorError(f"{param} has no candidate type {type_name} "
                             f"(candidates: {', '.join(self.table.types[i])})")
        return self.level_errors[i][self.table.types[i].index(type_name)]

    def problem(self) -> Problem:
        """The solver problem 'least summed relative error' over the candidates: a zero-run guess at good maps
        (every tensor role weighted alike; the fitted surrogate replaces it once rows are measured)."""
        from .solver import Problem

        t = self.table
        return Problem(params=t.params, types=t.types,
                       costs=tuple(errs[: len(ts)] for errs, ts in zip(self.level_errors, t.types)),
                       sizes=tuple(b[: len(ts)] for b, ts in zip(t.level_bytes, t.types)),
                       fixed_bytes=t.fixed_bytes, n_elements=t.n_elements)


# ---- one tensor ----------------------------------------------------------------------------------------------------


def sample_rows(t: TensorInfo, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray | None:
    """Row indices (into the tensor's n_rows, sorted) of the deterministic sample, or None for every row."""
    if max_rows < 1:
        raise PriorError(f"max_rows {max_rows} must be at least 1")
    n_exp = t.n_experts
    per = t.n_rows // n_exp
    m = max(1, max_rows // n_exp)
    if t.n_rows <= max_rows or m >= per:
        return None
    seed = int.from_bytes(hashlib.sha256(f"{t.name}|{'x'.join(map(str, t.shape))}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return np.concatenate([e * per + np.sort(rng.choice(per, size=m, replace=False)) for e in range(n_exp)])


def _read_floats(fd: int, t: TensorInfo, rows: np.ndarray | None) -> np.ndarray:
    """The rows (all, or `rows`) as float32 [n, n_per_row], converted by ggml as the builder converts them."""
    from ..native import ggml as _ggml
    from ..core.fileio import pread

    src = ggml_type(t.type)
    row_bytes = src.row_bytes(t.n_per_row)
    if rows is None:
        raw = pread(fd, t.data_offset, t.n_bytes)
        n = t.n_rows
    else:
        n = len(rows)
        raw = np.empty(n * row_bytes, dtype=np.uint8)
        # contiguous runs of sampled rows are read in one go
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(np.arange(n), breaks):
            first, count = int(rows[run[0]]), len(run)
            raw[run[0] * row_bytes: (run[0] + count) * row_bytes] = pread(fd, t.data_offset + first * row_bytes,
                                                                           count * row_bytes)
    out = np.empty((n, t.n_per_row), dtype=np.float32)
    _ggml.to_float(src.id, raw, out.size, out)
    return out


def _error_terms(t: TensorInfo, w: np.ndarray, rows: np.ndarray | None, dst: str, vec: np.ndarray | None,
                 n_threads: int | None) -> tuple[float, float]:
    """(numerator, denominator) of the relative error of these rows `w` of t quantized to `dst`."""
    from ..native import ggml as _ggml
    from ..quant.quantize import QuantJob, QuantizeError, quantize_array

    n_exp = t.n_experts
    m = w.shape[0] // n_exp  # rows per expert in the sample
    imp = None if vec is None else np.asarray(vec, dtype=np.float64).reshape(n_exp, t.n_per_row)
    w3 = w.reshape(n_exp, m, t.n_per_row)
    energy = np.square(w3, dtype=np.float64)
    den = float(energy.sum() if imp is None else np.einsum("emj,ej->", energy, imp))
    if dst == t.type:
        return 0.0, den  # the builder copies the tensor
    shape = (t.n_per_row, m, n_exp) if len(t.shape) >= 3 else (t.n_per_row, m)
    job = QuantJob(t.name, shape, "F32", dst)
    try:
        q = quantize_array(job, w, vec, n_threads)
    except QuantizeError as exc:
        raise PriorError(f"prior: {exc}") from None
    back = np.empty(w.size, dtype=np.float32)
    _ggml.to_float(ggml_type(dst).id, q, w.size, back)
    diff2 = np.square(w3.astype(np.float64) - back.reshape(w3.shape), dtype=np.float64)
    num = float(diff2.sum() if imp is None else np.einsum("emj,ej->", diff2, imp))
    return num, den


def _ratio(num: float, den: float) -> float:
    if den <= 0:
        return 0.0 if num <= 0 else math.inf
    return num / den


# ---- the cache -----------------------------------------------------------------------------------------------------


def _cache_key(src_digest: str, t: TensorInfo, dst: str, vec_digest: str | None, rows: np.ndarray | None,
               max_rows: int) -> str:
    sample = "all" if rows is None else f"sample:{t.name}:{max_rows}:{len(rows)}"
    text = "|".join([src_digest, "x".join(map(str, t.shape)), t.type, dst, vec_digest or "-", QUANTIZER_VERSION,
                     f"prior-{PRIOR_FORMAT}", sample])
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_path(directory: Path, key: str) -> Path:
    return directory / key[:2] / f"{key}.json"


def _cache_read(path: Path) -> tuple[float, float] | None:
    try:
        data = json.loads(path.read_text())
        num, den = float(data["num"]), float(data["den"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if data.get("format") != PRIOR_FORMAT or not (math.isfinite(num) and math.isfinite(den)) or num < 0 or den < 0:
        return None
    return num, den


def _cache_write(path: Path, num: float, den: float, t: TensorInfo, dst: str, rows: np.ndarray | None) -> None:
    from ..core.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"format": PRIOR_FORMAT, "tensor": t.name, "type": dst, "num": num, "den": den,
                                 "rows": t.n_rows if rows is None else len(rows), "n_rows": t.n_rows}))


# ---- the space -----------------------------------------------------------------------------------------------------


def _load_imatrix(imatrix):
    if imatrix is None or hasattr(imatrix, "entries"):
        return imatrix
    from ..formats.imatrix import load_imatrix

    return load_imatrix(imatrix)


def tensor_errors(catalog: ModelCatalog, source_path: str | os.PathLike, pairs, imatrix=None,
                  cache: TensorCache | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                  n_threads: int | None = None) -> tuple[dict[tuple[str, str], float], int, int]:
    """Relative errors of (tensor, type) `pairs` of `source_path`: ({pair: error}, pairs computed, pairs cached)."""
    from ..quant.build import imatrix_vectors, tensor_digests
    from ..core.digests import vector_digest
    from ..quant.quantize import QuantJob

    imatrix = _load_imatrix(imatrix)
    by_tensor: dict[str, list[str]] = {}
    for name, ty in pairs:
        if name not in catalog.by_name:
            raise PriorError(f"prior: tensor {name!r} is not in {source_path}")
        if ty not in by_tensor.setdefault(name, []):
            by_tensor[name].append(ty)
    infos = [catalog[n] for n in by_tensor]
    jobs = [QuantJob(t.name, t.shape, t.type, t.type) for t in infos]
    vectors = dict(zip(by_tensor, imatrix_vectors(catalog, jobs, imatrix)))
    digests = tensor_digests(catalog, cache, n_threads) if cache is not None else {}
    directory = Path(cache.directory) / "prior" if cache is not None else None
    out: dict[tuple[str, str], float] = {}
    computed = cached = 0
    fds = [os.open(part, os.O_RDONLY) for part in catalog.parts]  # a split model's parts
    try:
        for t in infos:
            rows = sample_rows(t, max_rows)
            vec = vectors[t.name]
            w = None
            for ty in by_tensor[t.name]:
                path = None
                if directory is not None:
                    key = _cache_key(digests[t.name], t, ty, vector_digest(vec), rows, max_rows)
                    path = _cache_path(directory, key)
                    hit = _cache_read(path)
                    if hit is not None:
                        out[(t.name, ty)] = _ratio(*hit)
                        cached += 1
                        continue
                if w is None:
                    w = _read_floats(fds[t.file], t, rows)
                num, den = _error_terms(t, w, rows, ty, vec, n_threads)
                computed += 1
                if path is not None:
                    _cache_write(path, num, den, t, ty, rows)
                out[(t.name, ty)] = _ratio(num, den)
    finally:
        for fd in fds:
            os.close(fd)
    return out, computed, cached


def space_prior(space: SearchSpace, catalog: ModelCatalog, source_path: str | os.PathLike, imatrix=None,
                cache: TensorCache | None = None, *, has_imatrix: bool | None = None,
                max_rows: int = DEFAULT_MAX_ROWS, n_threads: int | None = None) -> Prior:
    """The prior of every choice of `space` on the model `source_path` (whose catalog is `catalog`).

    `imatrix`: an `Imatrix`, a path to one, or None (importance 1). `cache`: a `TensorCache` whose directory gets
    the `prior/` entries (None: nothing cached). `has_imatrix` (default: whether an imatrix is given) picks the base
    map as trials build it. Errors of every level are computed: candidates and the base level.
    """
    imatrix = _load_imatrix(imatrix)
    table = choice_table(space, catalog, has_imatrix=imatrix is not None if has_imatrix is None else has_imatrix)
    pairs = {(n, ty) for i in range(table.n_params) for lv in table.levels[i] for n, ty in zip(table.tensors[i], lv)}
    errs, computed, cached = tensor_errors(catalog, source_path, sorted(pairs), imatrix, cache, max_rows, n_threads)
    level_errors = tuple(
        tuple(float(sum(errs[(n, ty)] for n, ty in zip(table.tensors[i], lv))) for lv in table.levels[i])
        for i in range(table.n_params)
    )
    return Prior(table=table, level_errors=level_errors, tensor_errors=MappingProxyType(errs),
                 imatrix_digest=imatrix.digest if imatrix is not None else None, max_rows=max_rows,
                 computed=computed, from_cache=cached)


__all__ = ["DEFAULT_MAX_ROWS", "PRIOR_FORMAT", "Prior", "PriorError", "sample_rows", "space_prior", "tensor_errors"]
