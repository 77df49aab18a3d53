"""What a search space or a precision map file may contain, as data (JSON Schema), and a safe way to read them.

Files are read with `load_document`: at most `MAX_DOCUMENT_BYTES`, parsed by YAML's safe loader with aliases refused
(a kilobyte of nested aliases expands to gigabytes: "billion laughs"), nesting bounded. The parsed data is then
checked against `SPACE_SCHEMA` or `MAP_SCHEMA` (types, ranges, unknown keys) with the `jsonschema` library; the first
error found is reported as one line naming the file, the key path, the value, the rule and what is expected.
Checks that need the model (tensor names, legal types) come later, in `space.py` and `precision_map.py`.

Regular expressions in these files (map rules, `select.regex`) are compiled and searched through `compile_pattern`
and `search`, which use the `regex` package with a time limit: a pattern with catastrophic backtracking fails with
an error naming it instead of hanging.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import CerebellumError
from .metrics import OBJECTIVE_NAMES  # the registry's objectives: the enum of `objectives` below

MAX_DOCUMENT_BYTES = 4 << 20  # a 26B model's map is ~60 KB; anything near this is not a map or a space
MAX_NESTING = 64
REGEX_TIMEOUT_S = 1.0

SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]*)?\s*([KMGT]i?B|[KMGT]|B)?\s*$"
PRESETS_NOTE = "a llama.cpp preset name such as Q4_K_M, Q3_K_M, Q8_0"

_string = {"type": "string"}
_positive_int = {"type": "integer", "minimum": 1}
_size = {"oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": SIZE_PATTERN}],
         "description": "a size such as 11.7GB, 500MiB or a number of bytes (> 0)"}
_type_name = {"type": "string", "minLength": 1, "description": "a ggml type name such as Q4_K, Q8_0, F16"}

MAP_STRUCTURED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "base": {"type": ["string", "null"], "description": PRESETS_NOTE},
        "like": {"type": ["string", "null"], "description": "the path of a GGUF whose types are the base"},
        "fallback": {"type": "boolean", "description": "true or false (not a string)"},
        "types": {"type": ["object", "null"], "additionalProperties": _type_name,
                  "description": "a mapping of tensor name or regex to a ggml type"},
    },
    "additionalProperties": False,
}
MAP_FLAT_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": _type_name}
MAP_KEYS = tuple(MAP_STRUCTURED_SCHEMA["properties"])
# A map file is one of the two: structured when it has any of MAP_KEYS at the top, else flat.
MAP_SCHEMA: dict[str, Any] = {
    "description": "a precision map: {base|like, fallback, types: {tensor name or regex: TYPE}} or a flat "
                   "{tensor name or regex: TYPE}",
    "oneOf": [MAP_STRUCTURED_SCHEMA,
              {**MAP_FLAT_SCHEMA, "not": {"anyOf": [{"required": [k]} for k in MAP_KEYS]}}],
}

SPACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": _string,
        "description": _string,
        "model": _string,
        "base": {"type": ["string", "null"], "description": PRESETS_NOTE},
        "like": {"type": ["string", "null"], "description": "the path of a GGUF whose types are the base"},
        "fallback": {"type": "boolean", "description": "true or false (not a string)"},
        "dimensions": {
            "type": "array", "minItems": 1, "description": "a list of dimensions",
            "items": {
                "type": "object",
                "required": ["name", "select", "types"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$",
                             "description": "letters, digits, '_', '.', '-'"},
                    "select": {
                        "type": "object", "minProperties": 1,
                        "description": "a mapping with group, layers, regex or tensors",
                        "properties": {
                            "group": {"oneOf": [_string, {"type": "array", "items": _string, "minItems": 1}],
                                      "description": "a group name from `cerebellum-ray inspect`, or a list"},
                            "layers": {"oneOf": [{"type": "integer", "minimum": 0},
                                                 {"type": "string", "pattern": r"^\s*\d+\s*-\s*\d+\s*$"},
                                                 {"type": "array", "items": {"type": "integer", "minimum": 0},
                                                  "minItems": 1}],
                                       "description": "N, [N, M, ...] or 'A-B'"},
                            "regex": {"type": "string",
                                      "description": "a regular expression searched in tensor names"},
                            "tensors": {"type": "array", "items": _string, "minItems": 1,
                                        "description": "a list of tensor names"},
                        },
                        "additionalProperties": False,
                    },
                    "per": {"enum": ["group", "layer", "tensor"]},
                    "types": {"type": "array", "items": _type_name, "minItems": 1,
                              "description": "the candidate ggml types"},
                },
                "additionalProperties": False,
            },
        },
        "constraints": {
            "type": ["object", "null"],
            "properties": {
                "max_size": _size,
                "max_bpw": {"type": "number", "exclusiveMinimum": 0, "description": "bits per weight (> 0)"},
                "vram": {"type": "object", "required": ["gb"],
                         "properties": {"gb": {"type": "number", "exclusiveMinimum": 0},
                                        "context": _positive_int},
                         "additionalProperties": False, "description": "{gb: N, context: C}"},
            },
            "additionalProperties": False,
        },
        "objectives": {"type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"enum": list(OBJECTIVE_NAMES)}},
        "evaluation": {
            "type": ["object", "null"],
            "properties": {
                "text": {"type": ["string", "null"], "description": "a text file (relative to the space file)"},
                "ctx": {"type": "integer", "minimum": 4, "maximum": 1 << 20, "multipleOf": 2,
                        "description": "an even context size of at least 4 tokens, e.g. 512"},
                "chunks": {"type": ["integer", "null"], "minimum": 1,
                           "description": "chunks per trial: a positive integer, e.g. 8 (null: all)"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 1 << 16,
                          "description": "reference tokens kept per position, e.g. 128"},
                "tail_samples": {"type": "integer", "minimum": 0, "maximum": 1 << 16,
                                 "description": "reference tokens sampled from the rest of the vocabulary, e.g. 128"},
                "humaneval_limit": {"type": "integer", "minimum": 0, "maximum": 164,
                                    "description": "0 (off) or the number of HumanEval problems, at most 164"},
                "mc": {"type": ["array", "null"], "items": _string,
                       "description": "multiple-choice JSONL files"},
                "chat_text": {"type": ["string", "null"],
                              "description": "a JSONL file of {messages: [...]} conversations, or 'builtin'"},
                "reference_logits": {"type": ["string", "null"],
                                     "description": "a llama-perplexity --kl-divergence-base file: the reference "
                                                    "(its tokens, context and chunks are the evaluation's)"},
                "code": {"type": "boolean", "description": "true or false: score the code corpus too"},
                "code_text": {"type": ["string", "null"],
                              "description": "a code file for kld_code/ppl_code (null: HumanEval's code)"},
            },
            "additionalProperties": False,
        },
        "imatrix": {
            "description": "an importance matrix file (relative to the space file), or {text: FILE|builtin, "
                           "chat_text: FILE|builtin, ctx: N, chunks: N} to have one made from that text",
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "object",
                 "properties": {
                     "text": {"type": "string", "minLength": 1},
                     "chat_text": {"type": "string", "minLength": 1},
                     "ctx": {"type": "integer", "minimum": 8, "maximum": 1 << 20},
                     "chunks": {"type": ["integer", "null"], "minimum": 1},
                 },
                 "not": {"required": ["text", "chat_text"]},
                 "additionalProperties": False},
            ],
        },
        "search": {
            "type": ["object", "null"],
            "properties": {
                "sampler": {"enum": ["nsga2", "tpe"]},
                "trials": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                           "description": "a positive number of trials"},
                "seed": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


# ---- reading documents --------------------------------------------------------------------------------------------


def _loader_class():
    import yaml

    class NoAliasSafeLoader(yaml.SafeLoader):
        """YAML's safe loader with aliases refused and nesting bounded (no expansion bombs, no deep recursion)."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases (*{event.anchor}) are not accepted: write the values out",
                    event.start_mark)
            depth = getattr(self, "_depth", 0)
            if depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_NESTING} levels", self.peek_event().start_mark)
            self._depth = depth + 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth = depth

    return NoAliasSafeLoader


def read_document_text(path: str | os.PathLike, error: type[CerebellumError], what: str) -> str:
    """The text of a map or space file, refused when missing, a directory, too large or not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, not a {what} file")
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise error(f"{path}: {size} bytes is too large for a {what} file (at most {MAX_DOCUMENT_BYTES})")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror}") from None


def parse_yaml(text: str, where: str, error: type[CerebellumError]) -> Any:
    """YAML (or JSON) text parsed safely: no aliases, bounded size and nesting; errors name `where`."""
    import yaml

    if len(text) > MAX_DOCUMENT_BYTES:
        raise error(f"{where}: {len(text)} characters is too large (at most {MAX_DOCUMENT_BYTES})")
    try:
        return yaml.load(text, Loader=_loader_class())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML/JSON: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply") from None


# ---- validation ---------------------------------------------------------------------------------------------------


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _message(err, where: str) -> str:
    from jsonschema.exceptions import best_match

    hint = err.schema.get("description") if isinstance(err.schema, dict) else None
    if err.validator in ("oneOf", "anyOf") and err.context:
        deeper = best_match(err.context)
        if len(deeper.absolute_path) > len(err.absolute_path):
            err = deeper
            hint = (err.schema.get("description") if isinstance(err.schema, dict) else None) or hint
        elif hint:
            return f"{where}: {_path(err.absolute_path)}: {err.instance!r} is not {hint}"
    at = _path(err.absolute_path)
    if err.validator == "pattern":
        return f"{where}: {at}: {err.instance!r} is not in the expected form" + (f" ({hint})" if hint else "")
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed), key=str)
        if allowed:
            return f"{where}: {at}: unknown key {extra[0]!r}; allowed: {', '.join(allowed)}"
    if err.validator == "enum":
        choices = ", ".join(map(str, err.validator_value))
        return f"{where}: {at}: {err.instance!r} is not one of {choices}"
    msg = f"{where}: {at}: {err.message}"
    return msg + (f" (expected {hint})" if hint else "")


def validate(data: Any, schema: dict, where: str, error: type[CerebellumError]) -> None:
    """Refuse `data` that breaks `schema`, naming the first problem (file, key path, value, rule)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(schema)
    errors = list(validator.iter_errors(data))
    if errors:
        raise error(_message(best_match(errors), where))


# ---- regular expressions with a time limit ------------------------------------------------------------------------


def compile_pattern(pattern: str, where: str):
    """A compiled regular expression (the `regex` package, `re`-compatible syntax); refuses an invalid one."""
    import regex

    try:
        return regex.compile(pattern)
    except (regex.error, ValueError, RecursionError, OverflowError) as exc:
        raise CerebellumError(f"{where}: {pattern!r} is not a valid regular expression ({exc})") from None


def search(compiled, text: str, where: str) -> bool:
    """compiled.search(text) under REGEX_TIMEOUT_S; a runaway pattern is refused, naming it and the text."""
    try:
        return compiled.search(text, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        raise CerebellumError(
            f"{where}: the regular expression {compiled.pattern!r} took more than {REGEX_TIMEOUT_S:g} s on "
            f"{text!r} (catastrophic backtracking): simplify it, e.g. avoid nested repetition like (a+)+"
        ) from None


def matching_names(pattern: str, names: Iterable[str], where: str,
                   keep: Callable[[str], bool] | None = None) -> list[str]:
    """The names (those `keep` accepts) in which `pattern` is found, in order."""
    compiled = compile_pattern(pattern, where)
    return [n for n in names if (keep is None or keep(n)) and search(compiled, n, where)]


__all__ = [
    "MAP_FLAT_SCHEMA", "MAP_KEYS", "MAP_SCHEMA", "MAP_STRUCTURED_SCHEMA", "MAX_DOCUMENT_BYTES", "OBJECTIVE_NAMES",
    "SPACE_SCHEMA", "compile_pattern", "matching_names", "parse_yaml", "read_document_text", "search", "validate",
]
