"""The files people publish beside an exported GGUF: a Hugging Face model card (README.md), an ollama Modelfile, and
the recipe's ik_llama.cpp `--custom-q` form. Text only: `export` gathers the facts (`CardFacts`) and writes the
files together with the GGUF.

The card follows the seed card's order (at a glance, how it was made, the precision map by group with counts and
why, measured results with their protocol and comparisons, usage) under Hugging Face front matter (base_model,
base_model_relation: quantized, tags with gguf, quantized_by, license from the source's general.* keys).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.units import relative_change, size_text, size_unit, value_text

__all__ = ["CARD_MARKER", "MODELFILE_MARKER", "CardFacts", "CardOptions", "base_model_of", "custom_q",
           "ggml_type_name", "group_evidence", "license_of", "model_card", "modelfile"]

CARD_MARKER = "<!-- written by cerebellum-ray export; the next export into this folder replaces it -->"
MODELFILE_MARKER = "# written by cerebellum-ray export; the next export into this folder replaces it"
_ABLATION_LABEL = re.compile(r"^(group|layer|router) (\S+)=(\S+)$")
_HF_REPO = re.compile(r"^https?://huggingface\.co/([\w.-]+/[\w.-]+?)(?:/.*)?$")
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


@dataclass(frozen=True)
class CardOptions:
    """What the source cannot tell: the Hugging Face repository the source was converted from, and who quantized."""

    base_model: str | None = None  # e.g. google/gemma-3-270m (default: the source's general.* keys, if they say)
    quantized_by: str | None = None  # the publisher's name (default: cerebellum-ray)


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered by export (rows as the store holds them)."""

    file: str  # the GGUF (its first part for a split model)
    parts: tuple[str, ...]
    size_bytes: int
    bpw: float
    n_weights: int
    arch: str
    metadata: Mapping[str, Any]  # the source's key/values (general.*, tokenizer.chat_template)
    row: Mapping[str, Any]  # the exported trial
    groups: Sequence[Mapping[str, Any]]  # group, type, count, layers
    base_quant: str  # the llama.cpp preset of the recipe (general.file_type)
    recipe_command: str  # the llama-quantize command line
    custom_q: str  # the same map as ik_llama.cpp --custom-q
    surgery: Sequence[tuple[str, str, str]]  # what llama-quantize cannot set: (tensor, from, to)
    inputs: Mapping[str, Any]  # source/imatrix paths and digests (MeasuredInputs.as_dict)
    imatrix: Mapping[str, Any] | None  # name, datasets, chunks of the imatrix used
    protocol: Mapping[str, Any] | None  # the study's evaluation: ctx, chunks, top_k, tail_samples, text, reference
    study_rows: Sequence[Mapping[str, Any]] = ()  # every row of the trial's study
    comparable: Sequence[Mapping[str, Any]] = ()  # preset rows measured with the same evaluation
    family_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # space dimension -> tensor groups
    candidates: Mapping[str, Sequence[str]] = field(default_factory=dict)  # tensor group -> the types searched
    front: Mapping[str, Any] | None = None  # n_points, n_trials, knee trial id, hypervolume fraction
    plain: bool = False
    versions: Mapping[str, str] = field(default_factory=dict)  # packages the trial ran with
    options: CardOptions = CardOptions()


# ---- names and metadata ------------------------------------------------------------------------------------------


def ggml_type_name(name: str) -> str:
    """ggml's own spelling of a type (ggml_type_name: 'q4_K', 'q8_0', 'iq4_xs', 'bf16'), which ik_llama.cpp's
    --custom-q compares case-sensitively."""
    low = name.lower()
    return low[:-2] + "_K" if low.endswith("_k") else low


def base_model_of(metadata: Mapping[str, Any], given: str | None = None) -> str | None:
    """The Hugging Face repository the source was converted from: `given`, else the first huggingface.co URL among
    the source's general.source.repo_url, general.repo_url, general.source.url, general.url keys."""
    if given:
        return given
    for key in ("general.source.repo_url", "general.repo_url", "general.source.url", "general.url"):
        m = _HF_REPO.match(str(metadata.get(key) or ""))
        if m:
            return m.group(1)
    repo = metadata.get("general.source.huggingface.repository")
    return str(repo) if repo else None


def license_of(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Front-matter license keys from general.license (a Hub license id: `license`; anything else: `other` with
    license_name and, when known, license_link)."""
    value = str(metadata.get("general.license") or "").strip()
    if not value:
        return {}
    if _LICENSE_ID.match(value.lower()):
        return {"license": value.lower()}
    out = {"license": "other", "license_name": str(metadata.get("general.license.name") or value)}
    if metadata.get("general.license.link"):
        out["license_link"] = str(metadata["general.license.link"])
    return out


def model_name(facts: CardFacts) -> str:
    meta = facts.metadata
    return str(meta.get("general.name") or facts.options.base_model or facts.arch)


# ---- ik_llama.cpp ------------------------------------------------------------------------------------------------


def custom_q(lines: str) -> str:
    """llama-quantize --tensor-type-file lines (`^NAME$=type`) as one ik_llama.cpp --custom-q argument: rules
    joined by commas (its separator: no rule may contain one), types in ggml's spelling, tensors that differ only
    in their block number and share a type folded into one rule (`^blk\\.(0|3|5)\\.attn_q\\.weight$=q5_K`)."""
    folded: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[str, str]] = []
    for line in lines.split():
        pattern, _, type_name = line.partition("=")
        m = re.fullmatch(r"\^blk\\\.([0-9]+)\\\.(.+)", pattern)
        key = (f"^blk\\.@\\.{m.group(2)}" if m else pattern, ggml_type_name(type_name))
        if key not in folded:
            folded[key] = []
            order.append(key)
        folded[key].append(m.group(1) if m else "")
    rules = []
    for pattern, type_name in order:
        layers = folded[(pattern, type_name)]
        if "@" in pattern:
            alternatives = layers[0] if len(layers) == 1 else "(" + "|".join(layers) + ")"
            pattern = pattern.replace("@", alternatives)
        rules.append(f"{pattern}={type_name}")
    text = ",".join(rules)
    if any("," in r for r in rules):  # pragma: no cover - tensor names hold no commas
        raise ValueError("a --custom-q rule would contain a comma")
    return text


# ---- the study's evidence ------------------------------------------------------------------------------------------


def _base_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((r for r in rows if r.get("label") == "base" and r.get("status") == "complete"
                 and r.get("kld") is not None), None)


def group_evidence(rows: Sequence[Mapping[str, Any]],
                   family_groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """{tensor group: ["Q2_K: KLD +0.0123 +/- 0.0011 (+45.2%), size -8.1%", ...]} from the study's one-at-a-time
    moves against its base map (ablation and guided sensitivities, labelled 'group NAME=TYPE'), a change against a
    base of ~0 shown as a difference."""
    base = _base_row(rows)
    out: dict[str, list[str]] = {}
    if base is None:
        return out
    for r in rows:
        m = _ABLATION_LABEL.match(str(r.get("label") or ""))
        if not m or r.get("status") != "complete" or r.get("kld") is None:
            continue
        kind, name, type_name = m.groups()
        family = name.split(".L")[0]
        where = "" if kind == "group" else f" ({kind} {name})"
        rel = relative_change(r["kld"], base["kld"], base.get("kld_se"))
        se = math.hypot(r.get("kld_se") or 0.0, base.get("kld_se") or 0.0)
        change = f"{r['kld'] - base['kld']:+.5f} +/- {se:.5f}" + (f" ({100 * rel:+.1f}%)" if rel is not None else "")
        size = 100 * (r["size_bytes"] - base["size_bytes"]) / base["size_bytes"] if base.get("size_bytes") else 0.0
        text = f"{type_name}{where}: KLD {change}, size {size:+.1f}%"
        for group in family_groups.get(family, ()):
            out.setdefault(group, []).append(text)
    return out


# ---- the card ----------------------------------------------------------------------------------------------------


def _yaml_scalar(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9][\w./+-]*", value) else '"' + value.replace('"', '\\"') + '"'


def front_matter(facts: CardFacts) -> str:
    meta = facts.metadata
    base = base_model_of(meta, facts.options.base_model)
    tags = ["gguf", "quantized", "mixed-precision", "llama.cpp", "cerebellum-ray", facts.arch]
    if facts.imatrix:
        tags.append("imatrix")
    tags += [str(t) for t in (meta.get("general.tags") or []) if isinstance(t, str)]
    lines = ["---"]
    if base:
        lines += [f"base_model: {_yaml_scalar(base)}", "base_model_relation: quantized"]
    else:
        lines.append("# base_model: unknown (the source names no Hugging Face repository): "
                     "export --base-model ORG/NAME")
    lines += [f"{k}: {_yaml_scalar(v)}" for k, v in license_of(meta).items()]
    lines.append(f"quantized_by: {_yaml_scalar(facts.options.quantized_by or 'cerebellum-ray')}")
    lines += ["pipeline_tag: text-generation", "library_name: gguf", "tags:"]
    lines += [f"- {_yaml_scalar(t)}" for t in dict.fromkeys(tags)]
    languages = [str(x) for x in (meta.get("general.languages") or []) if isinstance(x, str)]
    if languages:
        lines += ["language:"] + [f"- {_yaml_scalar(x)}" for x in languages]
    return "\n".join(lines + ["---"]) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _at_a_glance(facts: CardFacts) -> str:
    base = base_model_of(facts.metadata, facts.options.base_model)
    im = facts.imatrix
    rows = [("File", f"`{facts.file}`" + (f" ({len(facts.parts)} parts)" if len(facts.parts) > 1 else "")),
            ("Size", f"{size_text(facts.size_bytes)} ({facts.size_bytes:,} bytes)"),
            ("Bits per weight", f"{facts.bpw:.3f} ({facts.n_weights / 1e6:,.1f} M weights)"),
            ("Base model", f"[{base}](https://huggingface.co/{base})" if base else model_name(facts)),
            ("Base quant", f"{facts.base_quant}, per-tensor overrides from a measured search"
             + (f"; imatrix `{im['name']}`" if im else "; no imatrix")),
            ("Format", "GGUF, mixed precision" + (" (no cerebellum.* keys: as llama-quantize writes it)"
                                                 if facts.plain else "")),
            ("Measured on", str(facts.row.get("device") or "CPU") + " with llama.cpp"
             + (f" (llama-cpp-python {facts.versions['llama-cpp-python']})"
                if facts.versions.get("llama-cpp-python") else ""))]
    return "## At a glance\n\n" + _table(("", ""), rows)


def _how_made(facts: CardFacts) -> str:
    row, rows = facts.row, facts.study_rows
    done = [r for r in rows if r.get("status") == "complete"]
    strategies = sorted({str(r.get("strategy")) for r in rows})
    text = [f"## How it was made\n\nA precision map chosen by measurement: study `{row['study']}` of cerebellum-ray "
            f"ran {len(rows)} trials ({len(done)} complete; strategies {', '.join(strategies)}), each building its map "
            "with llama.cpp's own quantizer (byte for byte llama-quantize's tensors) and scoring the file against "
            "the source. This file is trial "
            f"`{row['trial_id']}`" + (f" ({row['label']})" if row.get("label") else "") + "."]
    f = facts.front
    if f:
        where = ("the knee of" if f.get("knee") == row["trial_id"] else "a member of" if f.get("member")
                 else "a trial off")
        text.append(f"It is {where} the study's front of file size against mean KL divergence ({f['n_points']} of "
                    f"{f['n_trials']} trials on it, {100 * f['hypervolume_fraction']:.1f}% of the box dominated).")
    base = _base_row(rows)
    if base is not None:
        text.append(f"Sensitivities: every searched tensor family was first moved alone from the base map "
                    f"({value_text(base['kld'], base.get('kld_se'))} mean KLD), as the seed card's group ablation "
                    "does; the table below gives what each move measured.")
    predicted = [r for r in rows if r.get("predicted_kld") is not None and r.get("kld") is not None]
    if predicted:
        within = sum(abs(r["kld"] - r["predicted_kld"]) <= 2 * (r.get("predicted_kld_se") or 0) for r in predicted)
        text.append(f"A surrogate fitted on the measured rows proposed {len(predicted)} of the trials (exact solves "
                    f"for size budgets); {within} of them measured within 2 standard errors of their prediction.")
    return "\n\n".join(text) + "\n"


def _precision_map(facts: CardFacts) -> str:
    evidence = group_evidence(facts.study_rows, facts.family_groups)
    searched = {g for gs in facts.family_groups.values() for g in gs}
    rows = []
    for g in facts.groups:
        if g["group"] in evidence:
            why = "; ".join(evidence[g["group"]])
        elif g["group"] in searched:
            why = ("searched among " + ", ".join(facts.candidates.get(g["group"], ())) +
                   "; chosen with the other groups (no one-at-a-time move of this group was measured)")
        elif g["group"] == "norm":
            why = "structural: kept at full precision"
        else:
            why = f"not searched: {facts.base_quant}'s choice"
        rows.append((f"`{g['group']}`", g["type"], g["count"], g["layers"] or "-", why))
    n_override = len(facts.custom_q.split(",")) if facts.custom_q else 0
    text = ("## Precision map\n\nBy tensor group (layers as ranges); *why* is the study's evidence: the mean KL "
            "divergence each one-at-a-time move measured against the base map, +/- its standard error.\n\n"
            + _table(("Group", "Type", "Count", "Layers", "Why"), rows, "llrll"))
    if facts.surgery:
        text += (f"\n{len(facts.surgery)} tensor(s) llama-quantize cannot set (MoE routers) are recast as "
                 "`cerebellum-ray surgery` does: " + ", ".join(f"`{n}` {a} -> {b}" for n, a, b in facts.surgery)
                 + ".\n")
    return text + f"\nAs ik_llama.cpp rules: {n_override} `--custom-q` rules (below).\n"


def _protocol_text(p: Mapping[str, Any] | None, row: Mapping[str, Any]) -> str:
    if not p:
        return (f"Scored by cerebellum-ray on {row.get('n_chunks') or '?'} chunks of the study's evaluation text "
                "(the study's space file is no longer readable, so its settings are not repeated here).")
    tail = f" plus {p['tail_samples']} sampled from the rest (unbiased)" if p.get("tail_samples") else ""
    return (f"Protocol: {p['chunks']} chunks of {p['ctx']} tokens of {p['text']} (the second half of each chunk "
            f"scored, as llama-perplexity does); KL divergence against {p['reference']} over the full vocabulary "
            f"(the reference's top {p['top_k']} tokens exact{tail}); perplexity of the same text. +/- is one "
            "standard error over the scored tokens.")


def _measured(facts: CardFacts) -> str:
    r = facts.row
    unit = size_unit(max([facts.size_bytes] + [p.get("size_bytes") or 0 for p in facts.comparable]))
    rows = [("mean KL divergence", value_text(r.get("kld"), r.get("kld_se"))),
            ("median / 99th / 99.9th percentile KLD", " / ".join(value_text(r.get(k)) for k in
                                                               ("kld_median", "kld_p99", "kld_p999"))),
            ("same top token as the source", "-" if r.get("same_top") is None else
             f"{100 * r['same_top']:.2f}% +/- {100 * (r.get('same_top_se') or 0):.2f}"),
            ("perplexity", value_text(r.get("ppl"), r.get("ppl_se"), 2))]
    if r.get("kld_code") is not None:
        rows.append(("mean KLD on code", value_text(r["kld_code"], r.get("kld_code_se"))))
    if r.get("humaneval") is not None:
        delta = (f"; {100 * r['humaneval_delta']:+.1f} +/- {100 * (r.get('humaneval_delta_se') or 0):.1f} points vs "
                 f"the source on the same problems (paired; McNemar p {r.get('humaneval_mcnemar_p') or 1:.3g})"
                 if r.get("humaneval_delta") is not None else "")
        rows.append(("HumanEval pass@1", f"{100 * r['humaneval']:.1f}% +/- {100 * (r.get('humaneval_se') or 0):.1f} "
                                         f"of {r.get('humaneval_n')} problems{delta}"))
    if r.get("mc_acc") is not None:
        rows.append(("multiple choice", f"{100 * r['mc_acc']:.1f}% +/- {100 * (r.get('mc_acc_se') or 0):.1f}"))
    text = "## Measured results\n\n" + _table(("Metric", "This file"), rows) + "\n" + _protocol_text(
        facts.protocol, r) + "\n"
    if facts.comparable:
        comp = []
        for p in sorted(facts.comparable, key=lambda x: x["size_bytes"]):
            d = r["kld"] - p["kld"]
            se = math.hypot(r.get("kld_se") or 0.0, p.get("kld_se") or 0.0)
            z = d / se if se else float("nan")
            verdict = ("lower" if d < 0 else "higher") + (" (beyond 2 SE)" if abs(z) > 2 else " (within 2 SE)")
            comp.append((p.get("label") or p["trial_id"], size_text(p["size_bytes"], unit), f"{p['bpw']:.3f}",
                         value_text(p["kld"], p.get("kld_se")), f"{d:+.5f} +/- {se:.5f}: {verdict}",
                         f"{100 * (facts.size_bytes - p['size_bytes']) / p['size_bytes']:+.1f}%"))
        text += ("\nAgainst llama.cpp's presets measured with the same evaluation (same text, tokens and reference; "
                 "the SE of each difference combines both SEs, an upper bound: the two were scored on the same "
                 "tokens):\n\n"
                 + _table(("Preset", "Size", "bpw", "KLD", "this file minus preset", "size vs preset"), comp,
                          "lrrrll"))
    return text


def _usage(facts: CardFacts) -> str:
    f = facts.file
    tag = re.sub(r"[^a-z0-9._-]+", "-", f.removesuffix(".gguf").lower()).strip("-") or "model"
    return (f"## Usage\n\n```bash\n# llama.cpp\nllama-server -m {f} -ngl 99 -c 4096\n\n"
            f"# ollama (the Modelfile beside this card)\nollama create {tag} -f Modelfile\nollama run {tag}\n\n"
            f"# LM Studio\nlms import {f}      # or put it in ~/.lmstudio/models/<publisher>/<repository>/\n```\n\n"
            f"```python\nfrom llama_cpp import Llama\n\nllm = Llama(model_path=\"{f}\", n_ctx=4096, n_gpu_layers=-1)\n"
            "llm.create_chat_completion(messages=[{\"role\": \"user\", \"content\": \"What is the capital of "
            "France?\"}])\n```\n" + (f"\nA split model: give the first part (`{f}`); keep all parts together.\n"
                                    if len(facts.parts) > 1 else ""))


def _reproduce(facts: CardFacts) -> str:
    imatrix = f" --imatrix {facts.imatrix['name']}" if facts.imatrix else ""
    text = ("## Reproduce\n\nThe recipe beside this file (`.recipe`) is a llama-quantize --tensor-type-file "
            f"(`grep -v '^#'`):\n\n```bash\n{facts.recipe_command}\n")
    if facts.surgery:
        sets = " ".join(f"--set '{name}={new}'" for name, _, new in facts.surgery)
        text += f"cerebellum-ray surgery OUT.gguf {sets}{imatrix} --out OUT.gguf   # what llama-quantize skips\n"
    routers = _all_routers_alike(facts)
    ik_routers = f" --ffn-gate-inp-type {ggml_type_name(routers)}" if routers else ""
    text += ("```\n\nThe same map for ik_llama.cpp (`--custom-q`, ggml type names"
             + ("; every router at one type: --ffn-gate-inp-type" if routers else "")
             + f"):\n\n```bash\nllama-quantize{imatrix}{ik_routers} --custom-q \"{facts.custom_q}\" SOURCE.gguf "
             f"OUT.gguf {facts.base_quant}\n```\n")
    inputs = facts.inputs
    text += "\n" + _table(("Provenance", ""), [
        ("source", f"{facts.metadata.get('general.name') or ''} (digest `{inputs.get('source_digest')}`)"),
        ("imatrix", f"`{facts.imatrix['name']}` (digest `{inputs.get('imatrix_digest')}`, "
                    f"{facts.imatrix['chunks']} chunks of {', '.join(facts.imatrix['datasets']) or 'unnamed text'})"
         if facts.imatrix else "none"),
        ("map digest", f"`{facts.row.get('map_hash')}`"),
        ("metadata", "no cerebellum.* keys (export --plain): provenance is this card" if facts.plain else
         "cerebellum.source_digest, imatrix_digest, map_digest, ... in the GGUF")])
    return text


def _all_routers_alike(facts: CardFacts) -> str | None:
    """The one type every recast router gets, when all routers (ffn_gate_inp.weight) share it: ik_llama.cpp's
    --ffn-gate-inp-type sets all of them (it cannot set one layer's)."""
    routers = {new for name, _, new in facts.surgery if name.endswith("ffn_gate_inp.weight")}
    n_routers = sum(1 for g in facts.groups if g["group"] == "router" for _ in range(g["count"]))
    changed = sum(1 for name, _, _ in facts.surgery if name.endswith("ffn_gate_inp.weight"))
    return next(iter(routers)) if len(routers) == 1 and changed == n_routers else None


def model_card(facts: CardFacts) -> str:
    """The README.md: front matter, then the sections of the seed card."""
    name = model_name(facts)
    intro = (f"# {name} — cerebellum-ray mixed-precision GGUF\n\n{CARD_MARKER}\n\nA mixed-precision GGUF of "
             f"{name}: every tensor group's precision chosen by measured KL divergence against the source, "
             f"{facts.bpw:.3f} bits per weight, {size_text(facts.size_bytes)}.\n")
    sections = [front_matter(facts) + "\n" + intro, _at_a_glance(facts), _how_made(facts), _precision_map(facts),
                _measured(facts), _usage(facts), _reproduce(facts),
                "## Credits\n\nQuantized with llama.cpp's quantizer (through llama-cpp-python) by cerebellum-ray's "
                "measured search (Optuna on Ray Tune).\n"]
    return "\n".join(sections)


# ---- ollama ------------------------------------------------------------------------------------------------------

_GEMMA3_TEMPLATE = ('{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
                    '{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user\n'
                    '{{ .Content }}<end_of_turn>\n'
                    '{{ if $last }}<start_of_turn>model\n{{ end }}\n'
                    '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}'
                    '{{ if not $last }}<end_of_turn>\n{{ end }}\n{{- end }}\n{{- end }}')
_GEMMA4_TEMPLATE = ('{{- if .System }}<|turn>system\n{{ .System }}<turn|>\n{{ end }}'
                    '{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
                    '{{- if eq .Role "user" }}<|turn>user\n{{ .Content }}<turn|>\n'
                    '{{ else if eq .Role "assistant" }}<|turn>model\n{{ .Content }}<turn|>\n{{ end }}'
                    '{{- if and $last (ne .Role "assistant") }}<|turn>model\n{{ end }}{{- end }}')
# chat-template families ollama does not always recognize from the GGUF: (marker in the template, TEMPLATE, stops)
_CHAT_FAMILIES = (("<|turn>", _GEMMA4_TEMPLATE, ("<turn|>",)),
                  ("<start_of_turn>", _GEMMA3_TEMPLATE, ("<end_of_turn>",)))


def modelfile(facts: CardFacts, num_ctx: int = 4096) -> str:
    """An ollama Modelfile for the file: FROM it, and for the Gemma chat formats the template and stop tokens
    (others: ollama takes the GGUF's own tokenizer.chat_template). Check with `ollama show NAME --modelfile`."""
    lines = [MODELFILE_MARKER, f"FROM ./{facts.file}"]
    template = str(facts.metadata.get("tokenizer.chat_template") or "")
    for marker, text, stops in _CHAT_FAMILIES:
        if marker in template:
            lines.append(f'TEMPLATE """{text}"""')
            lines += [f'PARAMETER stop "{s}"' for s in stops]
            break
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    if facts.metadata.get("general.license"):
        lines.append(f'LICENSE """{facts.metadata["general.license"]}"""')
    return "\n".join(lines) + "\n"
