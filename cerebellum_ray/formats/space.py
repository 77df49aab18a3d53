"""Search spaces: which tensors' precision is searched, how finely, over which types, under which constraints.

A space is YAML (format: search_spaces/README.md). It is validated against the model's catalog before any trial
runs; every error names the dimension (and the tensor) at fault. A validated `SearchSpace` turns a point
(parameter name -> index into the dimension's candidate types) into a `PrecisionMap`.

Granularity: `per: group` gives one choice to all selected tensors, `per: layer` one choice per layer (tensors of
several groups selected in one dimension share their layer's choice: a tie, e.g. ffn_gate and ffn_up), `per:
tensor` one choice per tensor.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ..core import metrics
from ..core.errors import CerebellumError
from .catalog import GROUPS, ModelCatalog, TensorInfo
from .ggml_types import TYPES, ggml_type
from .precision_map import MapSpec, PrecisionMap, Rule, resolve
from ..core.units import SizeError, parse_size

CODE_OBJECTIVES = tuple(m.name for m in metrics.METRICS if m.objective and m.needs == "code")
OBJECTIVE_DIRECTIONS = {m.name: m.direction for m in metrics.METRICS if m.objective}  # older callers; derived

class SpaceError(CerebellumError):
    """An invalid search space; the message names the dimension, the tensor and the rule."""


@dataclass(frozen=True)
class Dimension:
    """One searched choice: `tensors` take the type `types[index]` together."""

    param: str  # Optuna parameter name (no "/": Ray flattens nested names with it)
    dimension: str  # the dimension's name in the space file
    tensors: tuple[str, ...]
    types: tuple[str, ...]  # candidates, ordered by bits per weight
    layer: int | None = None


@dataclass(frozen=True)
class Evaluation:
    text: str | None = None  # path; None: the built-in corpus
    ctx: int = 512
    chunks: int | None = 8
    top_k: int = 128
    tail_samples: int = 128  # reference tokens sampled from the rest of the vocabulary (KLD estimate, logprobs.py)
    humaneval_limit: int = 0  # 0: HumanEval not scored
    mc: tuple[str, ...] = ()
    chat_text: str | None = None  # conversations (JSONL path, or "builtin") instead of `text` for KLD / PPL
    code: bool = False  # score the code corpus too (kld_code, ppl_code); on when an objective needs it
    code_text: str | None = None  # path; None: the built-in code corpus (corpus.default_code_text)
    reference_logits: str | None = None  # a llama-perplexity --kl-divergence-base file as the text's reference


@dataclass(frozen=True)
class ImatrixSpec:
    """A space's `imatrix`: a file (`path`), or a calibration text (a file or "builtin") or conversations to make one
    from, once per model and text (imatrix_collect.made_imatrix)."""

    path: str | None = None
    text: str | None = None  # None (and no chat_text): the built-in corpus
    chat_text: str | None = None
    ctx: int = 512
    chunks: int | None = None


@dataclass(frozen=True)
class SearchSpace:
    name: str
    base: MapSpec
    dimensions: tuple[Dimension, ...]
    objectives: tuple[str, ...]
    max_size: int | None = None
    max_bpw: float | None = None
    evaluation: Evaluation = Evaluation()
    sampler: str = "nsga2"
    trials: int = 32
    seed: int = 0
    source_file: str = ""
    imatrix: ImatrixSpec | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def quality(self) -> str | None:
        """The text-quality objective early stopping watches (the first with a running standard error: kld, ppl),
        or None."""
        return next((o for o in self.objectives if metrics.metric(o).running), None)

    @property
    def directions(self) -> tuple[str, ...]:
        return metrics.directions(self.objectives)

    def dimension(self, param: str) -> Dimension:
        for d in self.dimensions:
            if d.param == param:
                return d
        raise SpaceError(f"space {self.name} has no parameter {param!r}")

    def rules_for(self, point: Mapping[str, int]) -> tuple[Rule, ...]:
        """Rules setting each dimension of `point` to its chosen type. A partial point (some dimensions) leaves the
        other tensors at the base map's types: the ablation's moves relative to the base preset itself."""
        unknown = set(point) - {d.param for d in self.dimensions}
        if unknown:
            raise SpaceError(f"point names {sorted(unknown)[0]!r}, not a parameter of space {self.name}")
        rules = []
        for d in self.dimensions:
            if d.param not in point:
                continue
            idx = int(point[d.param])
            if not 0 <= idx < len(d.types):
                raise SpaceError(f"dimension {d.param}: index {idx} outside its {len(d.types)} candidate types")
            rules.extend(Rule(t, d.types[idx]) for t in d.tensors)
        return tuple(rules)

    def map_for(self, catalog: ModelCatalog, point: Mapping[str, int], has_imatrix: bool = False) -> PrecisionMap:
        spec = MapSpec(rules=self.rules_for(point), base=self.base.base, like=self.base.like,
                       fallback=self.base.fallback)
        return resolve(catalog, spec, has_imatrix=has_imatrix)

    def point_of_map(self, catalog: ModelCatalog, types: Mapping[str, str]) -> dict[str, int] | None:
        """The full point whose map is exactly `types` (tensor -> type), or None when no point gives that map: a
        dimension's tensors differ in type or hold a type outside its candidates, or a tensor outside every
        dimension differs from the base map."""
        point = {}
        for d in self.dimensions:
            chosen = {types.get(t) for t in d.tensors}
            if len(chosen) != 1 or next(iter(chosen)) not in d.types:
                return None
            point[d.param] = d.types.index(next(iter(chosen)))
        return point if dict(self.map_for(catalog, point).types) == dict(types) else None


# ---- parsing -----------------------------------------------------------------------------------------------------


def _select(catalog: ModelCatalog, dim_name: str, select: Mapping[str, Any]) -> list[TensorInfo]:
    if not isinstance(select, Mapping) or not select:
        raise SpaceError(f"dimension {dim_name}: `select` must be a mapping with group, layers, regex or tensors")
    unknown = set(select) - {"group", "layers", "regex", "tensors"}
    if unknown:
        raise SpaceError(f"dimension {dim_name}: unknown select keys {sorted(unknown)}")
    chosen = [t for t in catalog.tensors if t.quantizable]
    if "group" in select:
        groups = [select["group"]] if isinstance(select["group"], str) else list(select["group"])
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            raise SpaceError(f"dimension {dim_name}: unknown group {bad[0]!r}; groups: {', '.join(GROUPS)}")
        chosen = [t for t in chosen if t.group in groups]
    if "layers" in select:
        layers = _layer_set(select["layers"], dim_name, catalog.n_layer)
        chosen = [t for t in chosen if t.layer in layers]
    if "regex" in select:
        from ..core.errors import CerebellumError
        from ..core.schema import matching_names

        try:
            keep = set(matching_names(select["regex"], [t.name for t in chosen], f"dimension {dim_name}: select.regex"))
        except CerebellumError as exc:
            raise SpaceError(str(exc)) from None
        chosen = [t for t in chosen if t.name in keep]
    if "tensors" in select:
        names = list(select["tensors"])
        missing = [n for n in names if n not in catalog.by_name]
        if missing:
            raise SpaceError(f"dimension {dim_name}: tensor {missing[0]!r} is not in {catalog.path}")
        chosen = [t for t in chosen if t.name in names]
    if not chosen:
        raise SpaceError(f"dimension {dim_name}: `select` {dict(select)} matches no 2-D/3-D tensor of {catalog.path}")
    return chosen


def _layer_set(spec: Any, dim_name: str, n_layer: int) -> set[int]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        layers = {spec}
    elif isinstance(spec, (list, tuple)):
        layers = {int(x) for x in spec}
    else:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(spec))
        if not m:
            raise SpaceError(f"dimension {dim_name}: layers {spec!r} must be N, [N, M, ...] or 'A-B'")
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise SpaceError(f"dimension {dim_name}: layers {spec!r} is an empty range (write 'low-high')")
        if hi >= n_layer:
            raise SpaceError(f"dimension {dim_name}: layer {hi} of {spec!r} is not a layer of the model "
                             f"(layers 0-{n_layer - 1})")
        layers = set(range(lo, hi + 1))
    past = sorted(x for x in layers if not 0 <= x < n_layer)
    if past:
        raise SpaceError(f"dimension {dim_name}: layer {past[0]} of {spec!r} is not a layer of the model "
                         f"(layers 0-{n_layer - 1})")
    return layers


def _param_name(dim_name: str, suffix: str) -> str:
    name = f"{dim_name}.{suffix}" if suffix else dim_name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _dimensions(catalog: ModelCatalog, entry: Mapping[str, Any], fallback: bool) -> list[Dimension]:
    name = str(entry.get("name") or "")
    if not name:
        raise SpaceError(f"a dimension has no name: {dict(entry)}")
    tensors = _select(catalog, name, entry.get("select", {}))
    types = entry.get("types")
    if not types or not isinstance(types, (list, tuple)):
        raise SpaceError(f"dimension {name}: `types` must list the candidate ggml types")
    try:
        types = sorted({ggml_type(t).name for t in types}, key=lambda t: (TYPES[t].bits_per_weight, t))
    except ValueError as exc:
        raise SpaceError(f"dimension {name}: {exc}") from None
    if not fallback:
        for t in tensors:
            illegal = [ty for ty in types if not TYPES[ty].fits_row(t.n_per_row)]
            if illegal:
                raise SpaceError(
                    f"dimension {name}: type {illegal[0]} is illegal for tensor {t.name} (rows of {t.n_per_row} are "
                    f"not a multiple of its block of {TYPES[illegal[0]].block_size}); legal: "
                    f"{', '.join(ty for ty in t.legal_types if ty in TYPES)}; or set `fallback: true`"
                )
    per = entry.get("per", "group")
    if per == "group":
        return [Dimension(_param_name(name, ""), name, tuple(t.name for t in tensors), tuple(types))]
    if per == "layer":
        by_layer: dict[int, list[str]] = {}
        for t in tensors:
            if t.layer is None:
                raise SpaceError(f"dimension {name}: per: layer, but tensor {t.name} belongs to no layer")
            by_layer.setdefault(t.layer, []).append(t.name)
        return [Dimension(_param_name(name, f"L{layer}"), name, tuple(names), tuple(types), layer)
                for layer, names in sorted(by_layer.items())]
    if per == "tensor":
        return [Dimension(_param_name(name, t.name.removesuffix(".weight")), name, (t.name,), tuple(types), t.layer)
                for t in tensors]
    raise SpaceError(f"dimension {name}: per must be group, layer or tensor, not {per!r}")


def load_space(path: str | os.PathLike, catalog: ModelCatalog) -> SearchSpace:
    """Parse and validate a space file against a model; raises SpaceError naming what is wrong."""
    from ..core.schema import parse_yaml, read_document_text

    text = read_document_text(path, SpaceError, "search space")
    return space_from_data(parse_yaml(text, str(path), SpaceError), catalog, source_file=str(path))


def space_from_data(data: Any, catalog: ModelCatalog, source_file: str = "<space>") -> SearchSpace:
    """A SearchSpace from parsed YAML, checked against schema.SPACE_SCHEMA (types, ranges, unknown keys) and then
    against the model (tensors, legal types)."""
    from ..core.schema import SPACE_SCHEMA, validate

    if not isinstance(data, Mapping):
        raise SpaceError(f"{source_file}: a search space is a YAML mapping")
    validate(data, SPACE_SCHEMA, source_file, SpaceError)
    like = data.get("like")
    if like and not os.path.isabs(like):
        like = str(Path(source_file).parent / like)
    try:
        base = MapSpec(base=data.get("base"), like=like, fallback=data.get("fallback", False))
    except ValueError as exc:
        raise SpaceError(f"{source_file}: {exc}") from None
    dims: list[Dimension] = []
    for entry in data.get("dimensions") or []:
        try:
            dims.extend(_dimensions(catalog, entry, base.fallback))
        except SpaceError as exc:
            raise SpaceError(f"{source_file}: {exc}") from None
    if not dims:
        raise SpaceError(f"{source_file}: no dimensions: a space needs at least one")
    owner: dict[str, str] = {}
    for d in dims:
        for t in d.tensors:
            if t in owner:
                raise SpaceError(f"tensor {t} is in two dimensions ({owner[t]} and {d.dimension}); select it once")
            owner[t] = d.dimension
    objectives = tuple(data.get("objectives") or ("kld", "size"))
    try:
        metrics.check(objectives, objective=True, what="objective")
    except metrics.MetricError as exc:
        raise SpaceError(f"{source_file}: {exc}") from None
    constraints = data.get("constraints") or {}
    try:
        max_size = parse_size(constraints["max_size"], "constraints.max_size") if "max_size" in constraints else None
    except SizeError as exc:
        raise SpaceError(f"{source_file}: {exc}") from None
    if "vram" in constraints:
        max_size = vram_budget(constraints["vram"], catalog, max_size)
        if max_size <= 0:
            raise SpaceError(f"{source_file}: constraints.vram {dict(constraints['vram'])} leaves no room for the "
                             "model after the KV cache; give more gb or a smaller context")
    ev = data.get("evaluation") or {}
    evaluation = Evaluation(
        text=_beside(source_file, ev["text"], "evaluation.text") if ev.get("text") else None,
        ctx=int(ev.get("ctx", 512)), chunks=ev.get("chunks", 8), top_k=int(ev.get("top_k", 128)),
        tail_samples=int(ev.get("tail_samples", 128)),
        humaneval_limit=int(ev.get("humaneval_limit", 0)),
        mc=tuple(_beside(source_file, p, "evaluation.mc") for p in ev.get("mc", ()) or ()),
        chat_text=(ev["chat_text"] if ev.get("chat_text") == "builtin" else
                   _beside(source_file, ev["chat_text"], "evaluation.chat_text") if ev.get("chat_text") else None),
        code=bool(ev.get("code", False)) or bool(ev.get("code_text")) or bool(set(CODE_OBJECTIVES) & set(objectives)),
        code_text=_beside(source_file, ev["code_text"], "evaluation.code_text") if ev.get("code_text") else None,
        reference_logits=(_beside(source_file, ev["reference_logits"], "evaluation.reference_logits")
                          if ev.get("reference_logits") else None),
    )
    if evaluation.reference_logits and (evaluation.chat_text or evaluation.text):
        raise SpaceError(f"{source_file}: evaluation.reference_logits brings its own tokens: leave out "
                         f"evaluation.{'chat_text' if evaluation.chat_text else 'text'}")
    if "humaneval" in objectives and not evaluation.humaneval_limit:
        raise SpaceError(f"{source_file}: objective humaneval needs evaluation.humaneval_limit > 0")
    if "mc" in objectives and not evaluation.mc:
        raise SpaceError(f"{source_file}: objective mc needs evaluation.mc (multiple-choice JSONL files)")
    search = data.get("search") or {}
    sampler = search.get("sampler", "nsga2")
    return SearchSpace(
        name=str(data.get("name") or Path(source_file).stem), base=base, dimensions=tuple(dims),
        objectives=objectives, max_size=max_size,
        max_bpw=float(constraints["max_bpw"]) if "max_bpw" in constraints else None, evaluation=evaluation,
        sampler=sampler, trials=int(search.get("trials", 32)), seed=int(search.get("seed", 0)),
        source_file=source_file, imatrix=_imatrix_spec(source_file, data.get("imatrix")), raw=dict(data),
    )


def _imatrix_spec(source_file: str, value) -> ImatrixSpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ImatrixSpec(path=_beside(source_file, value, "imatrix"))

    def text(key: str) -> str | None:
        v = value.get(key)
        return v if v in (None, "builtin") else _beside(source_file, v, f"imatrix.{key}")

    return ImatrixSpec(text=text("text"), chat_text=text("chat_text"), ctx=int(value.get("ctx", 512)),
                       chunks=value.get("chunks"))


def _beside(source_file: str, path: str, key: str) -> str:
    """A file named in a space, relative to the space file; refused now if it does not exist."""
    resolved = path if os.path.isabs(path) else str(Path(source_file).parent / path)
    if not os.path.isfile(resolved):
        raise SpaceError(f"{source_file}: {key}: no such file {path!r} (paths are relative to the space file)")
    return resolved


def vram_budget(vram: Any, catalog: ModelCatalog, max_size: int | None) -> int:
    """'Fits N GB of VRAM with context C': the file must leave room for the KV cache of C tokens (F16 K and V)
    plus a fixed 5% compute allowance."""
    if not isinstance(vram, Mapping) or "gb" not in vram:
        raise SpaceError("constraints.vram must be {gb: N, context: C}")
    total = float(vram["gb"]) * 1e9
    ctx = int(vram.get("context", 4096))
    kv = catalog.kv
    arch = catalog.arch
    n_layer = catalog.n_layer
    head_kv = kv.get(f"{arch}.attention.head_count_kv", kv.get(f"{arch}.attention.head_count", 1))
    head_kv = max(head_kv) if isinstance(head_kv, list) else head_kv
    k_len = kv.get(f"{arch}.attention.key_length") or (kv.get(f"{arch}.embedding_length", 0) //
                                                       max(1, kv.get(f"{arch}.attention.head_count", 1)
                                                           if not isinstance(kv.get(f"{arch}.attention.head_count"),
                                                                             list) else 1))
    kv_bytes = 2 * n_layer * ctx * int(head_kv) * int(k_len) * 2
    budget = int(total * 0.95 - kv_bytes)
    return min(budget, max_size) if max_size else budget


__all__ = [
    "CODE_OBJECTIVES", "Dimension", "Evaluation", "ImatrixSpec", "SearchSpace", "SpaceError", "load_space",
    "space_from_data", "vram_budget"
]
