"""Precision maps: a ggml type for every tensor of a model, resolved and checked before any work.

A map is written by a person (YAML/JSON ``{name-or-regex: TYPE}``, optionally with a ``base`` preset or ``like``
file, or llama-quantize's ``--tensor-type-file`` lines) and resolved against a model catalog into a
``PrecisionMap``: the frozen record every later stage (builder, search, store, export) works with.

Resolution rules
  * The base gives every tensor a type: a llama.cpp preset exactly as llama.cpp assigns it (``presets.py``), the
    types of another GGUF (``like``), or the source's own types.
  * Rules then override it. A key equal to a tensor name sets that tensor; any other key is a regular expression
    searched in the names of 2-D/3-D tensors (as llama-quantize's ``--tensor-type``), first matching rule wins,
    exact names before regexes. Rules apply to every tensor, **the MoE routers ffn_gate_inp included**.
  * A type whose block does not divide a tensor's row length is refused, naming the tensor, the rule and the legal
    types, unless ``fallback`` is asked for: then llama.cpp's fallback table is applied and each fallback reported.
  * A rule that matches no tensor, an unknown tensor name or an unknown type is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

from ..core.errors import CerebellumError
from .catalog import ModelCatalog, load_catalog
from .ggml_types import FILE_TYPES, fallback_type, ggml_type


class MapError(CerebellumError):
    """A precision map that cannot be applied to this model; the message names tensor, value, rule and fix."""


@dataclass(frozen=True)
class Rule:
    pattern: str  # a tensor name, or a regular expression searched in tensor names
    type: str

    def __post_init__(self):
        object.__setattr__(self, "type", ggml_type(self.type).name)


@dataclass(frozen=True)
class MapSpec:
    """A map as a person writes it: base, rules, whether llama.cpp's row-length fallback may be applied."""

    rules: tuple[Rule, ...] = ()
    base: str | None = None  # a llama.cpp preset name (Q4_K_M, ...), or None for the source's own types
    like: str | None = None  # path of a GGUF whose tensor types are the base
    fallback: bool = False

    def __post_init__(self):
        for name in ("base", "like"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise MapError(f"`{name}` must be a string, got {value!r}" +
                               (" (a llama.cpp preset name such as Q4_K_M)" if name == "base" else " (a GGUF path)"))
        if not isinstance(self.fallback, bool):
            raise MapError(f"`fallback` must be true or false, got {self.fallback!r}")
        if self.base and self.like:
            raise MapError("a map has either a `base` preset or a `like` file, not both")
        if self.base is not None:
            key = self.base.strip().upper()
            if key not in FILE_TYPES:
                raise MapError(f"unknown base preset {self.base!r}; llama.cpp presets: {', '.join(FILE_TYPES)}")
            object.__setattr__(self, "base", key)


@dataclass(frozen=True)
class Fallback:
    tensor: str
    asked: str
    got: str
    reason: str


def fallback_summary(fallbacks) -> list[str]:
    """One line per (asked type, got type, reason), the tensors compressed as layer ranges."""
    from .catalog import compress_names

    groups: dict[tuple[str, str, str], list[str]] = {}
    for fb in fallbacks:
        groups.setdefault((fb.asked or "preset", fb.got, fb.reason), []).append(fb.tensor)
    return [f"{asked} -> {got} for {len(names)} tensor{'s' if len(names) > 1 else ''} ({reason}): "
            + ", ".join(compress_names(names)) for (asked, got, reason), names in groups.items()]


@dataclass(frozen=True)
class PrecisionMap:
    """The resolved map: every tensor of the model (file order) with its ggml type, and what was decided."""

    types: Mapping[str, str]
    base: str  # "source", a preset name, or "like:<file name>"
    fallbacks: tuple[Fallback, ...] = ()
    overridden: tuple[str, ...] = field(default=(), compare=False)  # tensors set by a rule

    @property
    def digest(self) -> str:
        """sha256 of the sorted name=type lines: equal maps have equal digests, whatever their origin."""
        text = "\n".join(f"{n}={t}" for n, t in sorted(self.types.items()))
        return hashlib.sha256(text.encode()).hexdigest()

    def type_of(self, name: str) -> str:
        return self.types[name]

    def changed_from(self, other: PrecisionMap) -> list[str]:
        return [n for n, t in self.types.items() if other.types.get(n) != t]

    def to_json(self) -> str:
        return json.dumps(dict(self.types), indent=1)


# ---- parsing ------------------------------------------------------------------------------------------------------


def parse_tensor_type_lines(text: str) -> list[Rule]:
    """llama-quantize --tensor-type-file syntax: whitespace-separated `pattern=type` items (patterns lower-cased)."""
    rules = []
    for item in text.split():
        if item.startswith("#"):
            continue
        pattern, sep, type_name = item.partition("=")
        if not sep or not pattern or not type_name:
            raise MapError(f"malformed tensor type item {item!r}: expected pattern=TYPE, e.g. attn_q=q5_k")
        rules.append(Rule(pattern.lower(), type_name))
    return rules


def spec_from_data(data: Any, where: str = "map") -> MapSpec:
    """A MapSpec from parsed YAML/JSON: either a flat {pattern: TYPE} mapping or {base|like, fallback, types}
    (checked against schema.MAP_SCHEMA first: types, unknown keys)."""
    from ..core.schema import MAP_FLAT_SCHEMA, MAP_KEYS, MAP_STRUCTURED_SCHEMA, validate

    if not isinstance(data, Mapping):
        raise MapError(f"{where}: expected a mapping of tensor name or regex to type, got {type(data).__name__}")
    structured = bool(set(MAP_KEYS) & set(data))
    validate(data, MAP_STRUCTURED_SCHEMA if structured else MAP_FLAT_SCHEMA, where, MapError)
    if structured:
        types = data.get("types") or {}
        try:
            return MapSpec(rules=tuple(_rule(k, v, where) for k, v in types.items()), base=data.get("base"),
                           like=data.get("like"), fallback=data.get("fallback", False))
        except MapError as exc:
            raise MapError(f"{where}: {exc}") from None
    return MapSpec(rules=tuple(_rule(k, v, where) for k, v in data.items()))


def _rule(pattern: Any, type_name: Any, where: str) -> Rule:
    try:
        return Rule(str(pattern), str(type_name))
    except ValueError as exc:
        raise MapError(f"{where}: rule {pattern!r}: {exc}") from None


def load_spec(path: str | os.PathLike) -> MapSpec:
    """Read a map file: .yaml/.yml/.json, or anything else as llama-quantize tensor-type lines."""
    from ..core.schema import parse_yaml, read_document_text

    path = Path(path)
    text = read_document_text(path, MapError, "map")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return spec_from_data(parse_yaml(text, str(path), MapError) or {}, where=str(path))
    return MapSpec(rules=tuple(parse_tensor_type_lines(text)))


def _llama_quantize_can_set(catalog: ModelCatalog, name: str) -> bool:
    from .presets import allows_quantization

    t = catalog[name]
    return t.quantizable and allows_quantization(name, len(t.shape), catalog.arch)


def to_tensor_type_lines(pmap: PrecisionMap, catalog: ModelCatalog, only_changed: bool = True) -> str:
    """The map as llama-quantize --tensor-type-file lines (anchored, escaped names).

    Only tensors llama-quantize will quantize appear; what it cannot do (routers, ...) is `not_expressible`.
    """
    lines = []
    for t in catalog.tensors:
        want = pmap.types[t.name]
        if (only_changed and want == t.type) or not _llama_quantize_can_set(catalog, t.name):
            continue
        lines.append(f"^{re.escape(t.name)}$={want.lower()}")
    return "\n".join(lines) + ("\n" if lines else "")


def not_expressible(pmap: PrecisionMap, catalog: ModelCatalog) -> list[tuple[str, str, str]]:
    """(tensor, source type, wanted type) for changes llama-quantize silently skips, such as MoE router types."""
    return [
        (t.name, t.type, pmap.types[t.name])
        for t in catalog.tensors
        if pmap.types[t.name] != t.type and not _llama_quantize_can_set(catalog, t.name)
    ]


# ---- resolution ---------------------------------------------------------------------------------------------------


def _base_types(catalog: ModelCatalog, spec: MapSpec, has_imatrix: bool) -> tuple[dict[str, str], str, list[Fallback]]:
    if spec.like:
        other = load_catalog(spec.like)
        missing = [n for n in catalog.by_name if n not in other.by_name]
        if missing:
            raise MapError(
                f"like file {spec.like} lacks {len(missing)} tensors of {catalog.path} (e.g. {missing[0]}); "
                "it is not a quantization of this model"
            )
        for t in catalog.tensors:
            o = other[t.name]
            if o.shape != t.shape:
                raise MapError(f"like file {spec.like}: tensor {t.name} has shape {o.shape}, the model has {t.shape}")
        return {t.name: other[t.name].type for t in catalog.tensors}, f"like:{Path(spec.like).name}", []
    if spec.base:
        from .presets import PresetHParams, preset_types

        choices = preset_types(catalog.tensors, PresetHParams.from_kv(catalog.kv), spec.base, has_imatrix=has_imatrix)
        fallbacks = [
            Fallback(n, "", c.type, c.reason) for n, c in choices.items() if c.reason.startswith("fallback")
        ]
        return {n: c.type for n, c in choices.items()}, spec.base, fallbacks
    return {t.name: t.type for t in catalog.tensors}, "source", []


def _matching(catalog: ModelCatalog, rule: Rule) -> list[str]:
    from ..core.errors import CerebellumError
    from ..core.schema import matching_names

    if rule.pattern in catalog.by_name:
        return [rule.pattern]
    try:
        return matching_names(rule.pattern, catalog.by_name, f"rule {rule.pattern}={rule.type}",
                              keep=lambda n: catalog.by_name[n].quantizable)
    except CerebellumError as exc:
        raise MapError(f"{exc}; a rule is a tensor name or a regular expression") from None


def resolve(catalog: ModelCatalog, spec: MapSpec, has_imatrix: bool = False) -> PrecisionMap:
    """Resolve a MapSpec against a model into a checked PrecisionMap (no tensor data is read)."""
    types, base, fallbacks = _base_types(catalog, spec, has_imatrix)
    exact = [r for r in spec.rules if r.pattern in catalog.by_name]
    regex = [r for r in spec.rules if r.pattern not in catalog.by_name]
    decided: dict[str, Rule] = {}
    for rule in exact + regex:
        names = _matching(catalog, rule)
        if not names:
            raise MapError(_no_match_message(catalog, rule))
        for name in names:
            decided.setdefault(name, rule)  # first matching rule wins
    for name, rule in decided.items():
        types[name] = _legal_type(catalog, name, rule, spec.fallback, fallbacks)
    return PrecisionMap(types=types, base=base, fallbacks=tuple(fallbacks), overridden=tuple(decided))


def _no_match_message(catalog: ModelCatalog, rule: Rule) -> str:
    looks_like_name = re.fullmatch(r"[\w.]+", rule.pattern) and rule.pattern.endswith((".weight", ".bias", ".scale"))
    if looks_like_name:
        return f"rule {rule.pattern}={rule.type}: no tensor {rule.pattern!r} in {catalog.path} (unknown tensor)"
    return (
        f"rule {rule.pattern}={rule.type}: the regular expression matches no 2-D/3-D tensor of {catalog.path}; "
        "check the pattern against `cerebellum-ray inspect`"
    )


def _legal_type(catalog: ModelCatalog, name: str, rule: Rule, allow_fallback: bool, fallbacks: list[Fallback]) -> str:
    t = catalog[name]
    if not t.quantizable:
        if rule.type == t.type:
            return t.type
        raise MapError(
            f"tensor {name} ({t.group}, shape {list(t.shape)}): rule {rule.pattern}={rule.type} asks for "
            f"{rule.type}, but 1-D tensors (norms, scales) keep their type {t.type}"
        )
    if ggml_type(rule.type).fits_row(t.n_per_row):
        return rule.type
    if allow_fallback:
        try:
            got = fallback_type(rule.type, t.n_per_row)
        except CerebellumError as exc:
            raise MapError(f"tensor {name}: rule {rule.pattern}={rule.type}: rows of {t.n_per_row} elements do not "
                           f"fit it, {exc}; legal types: {', '.join(t.legal_types)}") from None
        fallbacks.append(
            Fallback(name, rule.type, got, f"row length {t.n_per_row} is not a multiple of {rule.type}'s block")
        )
        return got
    block = ggml_type(rule.type).block_size
    try:
        way_out = f"or pass --fallback to take llama.cpp's choice ({fallback_type(rule.type, t.n_per_row)})"
    except CerebellumError as exc:
        way_out = f"and no fallback exists: {exc}"
    raise MapError(
        f"tensor {name}: rule {rule.pattern}={rule.type} is illegal: rows of {t.n_per_row} elements are not a "
        f"multiple of {rule.type}'s block of {block}. Legal types: {', '.join(t.legal_types)}; {way_out}"
    )


# ---- size --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapSize:
    tensor_bytes: int
    n_elements: int
    file_bytes: int | None = None  # exact size of the built file, header included

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_elements


def tensor_bytes(catalog: ModelCatalog, pmap: PrecisionMap) -> int:
    return sum(t.bytes_as(pmap.types[t.name]) for t in catalog.tensors)


def by_group(catalog: ModelCatalog, pmap: PrecisionMap) -> dict[str, dict[str, int]]:
    """{group: {type: tensor count}}: the summary the model card's 'Final Precision Map' table shows."""
    out: dict[str, dict[str, int]] = {}
    for t in catalog.tensors:
        counts = out.setdefault(t.group, {})
        ty = pmap.types[t.name]
        counts[ty] = counts.get(ty, 0) + 1
    return out


def rules_from_pairs(pairs: Iterable[str | Rule], option: str = "--set") -> tuple[Rule, ...]:
    """`NAME=TYPE` strings (the CLI's --set) as rules; NAME is a tensor name or a regular expression, kept exactly
    as written (unlike llama-quantize's tensor-type files, which are lower-cased: a rule means what it says in YAML
    maps and on the command line alike). A pattern given twice with different types is refused."""
    rules: list[Rule] = []
    for item in pairs:
        if isinstance(item, Rule):
            rules.append(item)
            continue
        pattern, sep, type_name = str(item).strip().rpartition("=")
        if not sep or not pattern or not type_name:
            raise MapError(f"malformed {option} {item!r}: expected TENSOR=TYPE, e.g. blk.8.ffn_gate_inp.weight=Q8_0")
        try:
            rules.append(Rule(pattern, type_name))
        except ValueError as exc:
            raise MapError(f"{option} {item}: {exc}") from None
    seen: dict[str, str] = {}
    for r in rules:
        if seen.setdefault(r.pattern, r.type) != r.type:
            raise MapError(f"{option} {r.pattern} is given twice with different types ({seen[r.pattern]}, {r.type})")
    return tuple(rules)


def merge_specs(spec: MapSpec, extra_rules: Sequence[Rule] = (), base: str | None = None,
                like: str | None = None, fallback: bool | None = None) -> MapSpec:
    """A spec with command-line options laid over it: extra rules come first (they win), flags replace."""
    return MapSpec(
        rules=tuple(extra_rules) + spec.rules,
        base=base if base is not None else spec.base,
        like=like if like is not None else spec.like,
        fallback=spec.fallback if fallback is None else fallback,
    )


__all__ = [
    "Fallback", "MapError", "MapSize", "MapSpec", "PrecisionMap", "Rule", "by_group", "fallback_summary", "load_spec",
    "merge_specs", "not_expressible", "parse_tensor_type_lines", "resolve", "rules_from_pairs", "spec_from_data",
    "tensor_bytes", "to_tensor_type_lines"
]
