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

from .catalog import ModelCatalog, load_catalog
from .ggml_types import FILE_TYPES, fallback_type, ggml_type


class MapError(ValueError):
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
    """A MapSpec from parsed YAML/JSON: either a flat {pattern: TYPE} mapping or {base|like, fallback, types}."""
    if not isinstance(data, Mapping):
        raise MapError(f"{where}: expected a mapping of tensor name or regex to type, got {type(data).__name__}")
    structured = {"types", "base", "like", "fallback"} & set(data)
    if structured:
        unknown = set(data) - {"types", "base", "like", "fallback"}
        if unknown:
            raise MapError(f"{where}: unknown keys {sorted(unknown)}; allowed: base, like, fallback, types")
        types = data.get("types") or {}
        if not isinstance(types, Mapping):
            raise MapError(f"{where}: `types` must be a mapping of tensor name or regex to type")
        return MapSpec(
            rules=tuple(_rule(k, v, where) for k, v in types.items()),
            base=data.get("base"),
            like=data.get("like"),
            fallback=bool(data.get("fallback", False)),
        )
    return MapSpec(rules=tuple(_rule(k, v, where) for k, v in data.items()))


def _rule(pattern: Any, type_name: Any, where: str) -> Rule:
    try:
        return Rule(str(pattern), str(type_name))
    except ValueError as exc:
        raise MapError(f"{where}: rule {pattern!r}: {exc}") from None


def load_spec(path: str | os.PathLike) -> MapSpec:
    """Read a map file: .yaml/.yml/.json, or anything else as llama-quantize tensor-type lines."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MapError(f"cannot read map file {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml  # JSON is YAML

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MapError(f"{path}: not valid YAML/JSON: {exc}") from None
        return spec_from_data(data or {}, where=str(path))
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
    if rule.pattern in catalog.by_name:
        return [rule.pattern]
    try:
        regex = re.compile(rule.pattern)
    except re.error as exc:
        raise MapError(f"rule {rule.pattern!r}: not a tensor name and not a valid regular expression ({exc})") from None
    return [t.name for t in catalog.tensors if t.quantizable and regex.search(t.name)]


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
        got = fallback_type(rule.type, t.n_per_row)
        fallbacks.append(
            Fallback(name, rule.type, got, f"row length {t.n_per_row} is not a multiple of {rule.type}'s block")
        )
        return got
    block = ggml_type(rule.type).block_size
    raise MapError(
        f"tensor {name}: rule {rule.pattern}={rule.type} is illegal: rows of {t.n_per_row} elements are not a "
        f"multiple of {rule.type}'s block of {block}. Legal types: {', '.join(t.legal_types)}; "
        f"or pass --fallback to take llama.cpp's choice ({fallback_type(rule.type, t.n_per_row)})"
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


def rules_from_pairs(pairs: Iterable[str]) -> tuple[Rule, ...]:
    """`name-or-regex=TYPE` strings (the CLI's --set) as rules."""
    return tuple(parse_tensor_type_lines(" ".join(pairs))) if pairs else ()


def merge_specs(spec: MapSpec, extra_rules: Sequence[Rule] = (), base: str | None = None,
                like: str | None = None, fallback: bool | None = None) -> MapSpec:
    """A spec with command-line options laid over it: extra rules come first (they win), flags replace."""
    return MapSpec(
        rules=tuple(extra_rules) + spec.rules,
        base=base if base is not None else spec.base,
        like=like if like is not None else spec.like,
        fallback=spec.fallback if fallback is None else fallback,
    )
