"""Export: the chosen trial's map built from the inputs it was measured with, with a recipe and the cards people
publish.

    FINAL.gguf        the map, built by the byte-exact builder from the study's source and imatrix (checked by
                      digest: another imatrix or source is refused, naming both digests), so its tensors are the
                      bytes the trial scored; provenance in its metadata, or none with `plain` (laid out as
                      llama-quantize writes it: for a map llama-quantize can express, its file byte for byte)
    FINAL.recipe      llama-quantize --tensor-type-file lines for every tensor it can set, then, as `#` comment
                      lines, the llama-quantize command (with the imatrix), what llama-quantize cannot do (e.g.
                      router types) as `cerebellum-ray surgery` --set arguments, and the same map as one
                      ik_llama.cpp --custom-q argument. `grep -v '^#' FINAL.recipe` is a valid --tensor-type-file.
    FINAL.card.json   the map summarized by group (as in the model card's "Final Precision Map" table), the metrics
                      with standard errors, and provenance (paths and digests).
    README.md         the Hugging Face model card (card.py), beside the GGUF
    Modelfile         for `ollama create NAME -f Modelfile`

They appear together or not at all (atomic.atomic_group), never replace the source, the imatrix or a file of the
store; a README.md or Modelfile that an earlier export did not write is refused (export into the folder you publish).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.compat import former_names
from ..core.errors import CerebellumError
from ..core import store
from ..quant.build import build_into, output_paths
from ..formats.catalog import layer_ranges, load_catalog
from ..core.atomic import atomic_group, refuse_store_files
from ..formats.precision_map import PrecisionMap, by_group, not_expressible, to_tensor_type_lines
from .card import CARD_MARKER, MODELFILE_MARKER, CardFacts, CardOptions, custom_q, model_card, modelfile
from .inputs import MeasuredInputs, measured_inputs, study_record

__all__ = ["ExportError", "METRIC_COLUMNS", "export", "pick_row", "recipe_base", "recipe_text"]

METRIC_COLUMNS = ("size_bytes", "bpw", "ppl", "ppl_se", "kld", "kld_se", "kld_median", "kld_p90", "kld_p99",
                  "kld_p999", "kld_max", "same_top", "same_top_se", "rms_dp", "rms_dp_se", "humaneval",
                  "humaneval_se", "mc_acc", "mc_acc_se", "chunks_done", "n_chunks")
_FALLBACK_FTYPE = "Q8_0"  # llama-quantize's file type for a map whose base is no quantized preset


class ExportError(CerebellumError):
    pass


def pick_row(store_dir: str, studies: list[str] | None, trial: str | None = None, pick: str | None = None,
             max_size: int | None = None) -> dict[str, Any]:
    """The stored trial to export: by id, the knee of the (size, KLD) front, or the best KLD within a size."""
    rows = [r for r in store.rows(store_dir, studies or None) if r["status"] == "complete" and r["map"]]
    if not rows:
        raise ExportError(f"no complete trials in {store_dir}" + (f" for studies {studies}" if studies else ""))
    if trial:
        found = [r for r in rows if r["trial_id"] == trial or r["label"] == trial]
        if not found:
            raise ExportError(f"no complete trial {trial!r} in {store_dir}")
        return found[0]
    if max_size is not None:
        fitting = [r for r in rows if r["size_bytes"] <= max_size and r["kld"] is not None]
        if not fitting:
            smallest = min(r["size_bytes"] for r in rows)
            raise ExportError(f"no trial fits {max_size} bytes (the smallest is {smallest})")
        return min(fitting, key=lambda r: (r["kld"], r["size_bytes"]))
    if pick == "knee":
        from ..predict.fronts import compute_fronts, knee_point

        search = [r for r in rows if r["strategy"] not in store.REFERENCE_STRATEGIES] or rows
        fronts = compute_fronts(search, ["size", "kld"], group_by="study")
        best = max(fronts, key=lambda f: f.hypervolume_fraction)
        return knee_point(best)
    raise ExportError("choose the trial: --trial ID, --pick knee or --max-size SIZE")


def recipe_base(pmap: PrecisionMap) -> str:
    """The llama.cpp preset the recipe quantizes with (its general.file_type): the map's base when it is a quantized
    preset (llama-quantize applies --tensor-type only over those), else Q8_0; every tensor's type is in the recipe's
    lines, so the preset decides nothing else."""
    from ..formats.ggml_types import FILE_TYPES

    return pmap.base if pmap.base in FILE_TYPES and pmap.base.startswith(("Q", "IQ", "TQ")) else _FALLBACK_FTYPE


def recipe_text(pmap: PrecisionMap, catalog, out_name: str, imatrix_name: str | None = None,
                imatrix_digest: str | None = None) -> str:
    lines = to_tensor_type_lines(pmap, catalog, only_changed=False)
    extra = not_expressible(pmap, catalog)
    text = lines
    ftype = recipe_base(pmap)
    with_imatrix = f"--imatrix {imatrix_name} " if imatrix_name else ""
    text += (f"# cerebellum-ray recipe for {out_name}; base {pmap.base}; map digest {pmap.digest}\n"
             f"# llama-quantize: grep -v '^#' {out_name}.recipe > types.txt; llama-quantize --allow-requantize "
             f"{with_imatrix}--tensor-type-file types.txt SOURCE.gguf OUT.gguf {ftype}\n")
    if imatrix_name:
        text += (f"# the imatrix is the study's (vector digest {imatrix_digest}); run llama-quantize in its folder, "
                 f"so that quantize.imatrix.file reads {imatrix_name} (as export --plain writes it)\n")
    if extra:
        sets = " ".join(f"--set '{name}={new}'" for name, _, new in extra)
        text += f"# llama-quantize cannot set {len(extra)} tensor(s); afterwards run:\n"
        for name, old, new in extra:
            text += f"#   surgery: {name}: {old} -> {new}\n"
        text += f"# cerebellum-ray surgery OUT.gguf {sets}{' --imatrix ' + imatrix_name if imatrix_name else ''} " \
                "--out OUT.gguf\n"
    text += ("# ik_llama.cpp (one --custom-q argument, ggml type names; it also cannot set single routers):\n"
             f"# llama-quantize {with_imatrix}--custom-q \"{custom_q(lines)}\" SOURCE.gguf OUT.gguf {ftype}\n")
    return text


def export(store_dir: str, source: str | None, out: str, studies: list[str] | None = None, trial: str | None = None,
           pick: str | None = None, max_size: int | None = None, imatrix_path: str | None = None,
           cache_dir: str | None = None, split_max_bytes: int | None = None, plain: bool = False,
           card: CardOptions | None = None) -> dict[str, Any]:
    """Build the chosen trial's map from the source and imatrix it was measured with (`source`, `imatrix_path`:
    None for the study's; another file must have the same digest) into OUT, with recipe, JSON card, README.md
    and Modelfile, all committed together. `plain`: no cerebellum.* keys, llama-quantize's layout."""
    from ..quant.build import PlainFile
    from ..quant.tensor_cache import TensorCache

    row = pick_row(store_dir, studies, trial, pick, max_size)
    inputs = measured_inputs(store_dir, row["study"], row, source=source, imatrix=imatrix_path, cache_dir=cache_dir)
    catalog = load_catalog(inputs.source)
    missing = [n for n in catalog.by_name if n not in row["map"]]
    if missing or len(row["map"]) != len(catalog.tensors):
        raise ExportError(f"trial {row['trial_id']}'s map does not fit {inputs.source} (e.g. {missing[:1]}): "
                          "export from the source the study was run on")
    record = study_record(store_dir, row["study"]) or {}
    space = _study_space(record, catalog)
    types = {t.name: row["map"][t.name] for t in catalog.tensors}
    pmap = PrecisionMap(types=types, base=_base_of(row, space))
    imatrix_name = Path(inputs.imatrix_path).name if inputs.imatrix_path else None
    layout = PlainFile(imatrix_name=imatrix_name) if plain else None
    built = PrecisionMap(types=types, base=recipe_base(pmap)) if plain else pmap  # general.file_type = the recipe's

    out_path = Path(out)
    stem = out_path.with_suffix("")
    ggufs = output_paths(inputs.source, built, out_path, split_max_bytes, inputs.imatrix, layout)  # OUT, or parts
    folder = out_path.parent
    outputs = [*ggufs, Path(f"{stem}.recipe"), Path(f"{stem}.card.json"), folder / "README.md", folder / "Modelfile"]
    for path in outputs:
        refuse_store_files(path, store_dir)
    for path, marker in ((folder / "README.md", CARD_MARKER), (folder / "Modelfile", MODELFILE_MARKER)):
        _refuse_foreign(path, marker)
    cache = TensorCache(cache_dir or record.get("cache_dir")) if (cache_dir or record.get("cache_dir")) else None
    with atomic_group(outputs, inputs={"source model": inputs.source, "imatrix": inputs.imatrix_path}) as temps:
        *gguf_temps, recipe, card_json, readme, ollama = temps
        report = build_into(inputs.source, built, gguf_temps, split_max_bytes, imatrix=inputs.imatrix, cache=cache,
                            plain=layout)
        recipe_file = recipe_text(pmap, catalog, stem.name, imatrix_name, inputs.as_dict()["imatrix_digest"])
        recipe.write_text(recipe_file)
        card_data = _card(row, catalog, pmap, report, ggufs, inputs.source, inputs, plain)
        card_json.write_text(json.dumps(card_data, indent=1, default=str) + "\n")
        facts = _card_facts(store_dir, row, catalog, pmap, report, ggufs, inputs, record, space, plain,
                            card or CardOptions())
        readme.write_text(model_card(facts))
        ollama.write_text(modelfile(facts, num_ctx=_num_ctx(space)))
    return {"out": str(ggufs[0]), "parts": [str(p) for p in ggufs], "recipe": str(outputs[-4]),
            "card": str(outputs[-3]), "readme": str(outputs[-2]), "modelfile": str(outputs[-1]), "row": row,
            "file_size": report.file_size, "map": pmap, "plain": plain, "inputs": inputs.as_dict()}


def _refuse_foreign(path: Path, marker: str) -> None:
    """A README.md or Modelfile that no export wrote is someone's own file: never replaced."""
    if not path.exists():
        return
    try:
        ours = marker in path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        ours = False
    if not ours:
        raise ExportError(f"{path} exists and was not written by cerebellum-ray export: export into the folder you "
                          "publish (a new one, e.g. --out release/MODEL.gguf), or move that file away")


def _study_space(record: Mapping[str, Any], catalog):
    """The study's search space on the source (with its recorded base), or None when it cannot be read."""
    if not record.get("space_file"):
        return None
    try:
        from ..formats.space import load_space
        from ..study.run import with_base

        space = load_space(record["space_file"], catalog)
        return with_base(space, catalog, record["base"]) if record.get("base") else space
    except (CerebellumError, OSError):
        return None


def _base_of(row: dict[str, Any], space=None) -> str:
    """The base the trial's map was resolved from (what its build recorded as cerebellum.map_base): a preset row's
    preset, else the study's space base."""
    params = row.get("params")
    if isinstance(params, str) and params.startswith("{"):
        base = json.loads(params).get("base")
        if isinstance(base, str):
            return base
    if space is not None and row.get("strategy") not in store.REFERENCE_STRATEGIES:
        spec = space.base
        if spec.like:
            return f"like:{Path(spec.like).name}"
        return spec.base or "source"
    return f"trial:{row['trial_id']}"


def _num_ctx(space) -> int:
    return max(4096, space.evaluation.ctx) if space is not None else 4096


def _card(row, catalog, pmap: PrecisionMap, report, ggufs: list[Path], source: str,
          inputs: MeasuredInputs | None = None, plain: bool = False) -> dict[str, Any]:
    return {
        "file": ggufs[0].name, **({"parts": [p.name for p in ggufs]} if len(ggufs) > 1 else {}),
        "size_bytes": report.file_size, "bits_per_weight": report.bits_per_weight,
        "trial": {k: row[k] for k in ("study", "trial_id", "strategy", "label", "eval_hash", "map_hash")},
        "metrics": {k: row.get(k) for k in METRIC_COLUMNS if row.get(k) is not None},
        "precision_map_by_group": _group_table(catalog, pmap),
        "llama_quantize_cannot_set": [{"tensor": n, "from": a, "to": b} for n, a, b in not_expressible(pmap, catalog)],
        "provenance": {**vars(report.provenance), "source": os.path.abspath(source),
                       **({"inputs": inputs.as_dict()} if inputs is not None else {}),
                       "in_file": not plain, "plain": plain,
                       "versions": json.loads(row["versions"]) if row.get("versions") else None},
    }


def _group_table(catalog, pmap: PrecisionMap) -> list[dict[str, Any]]:
    """Rows like the card's table: group, type, count, layers."""
    layers: dict[tuple[str, str], list[int]] = {}
    for t in catalog.tensors:
        layers.setdefault((t.group, pmap.types[t.name]), []).append(-1 if t.layer is None else t.layer)
    out = []
    for (group, ty), ls in sorted(layers.items()):
        known = sorted(x for x in ls if x >= 0)
        out.append({"group": group, "type": ty, "count": len(ls), "layers": layer_ranges(known) if known else ""})
    counts = by_group(catalog, pmap)
    assert sum(sum(c.values()) for c in counts.values()) == len(catalog.tensors)
    return out


def _card_facts(store_dir, row, catalog, pmap: PrecisionMap, report, ggufs: list[Path], inputs: MeasuredInputs,
                record: Mapping[str, Any], space, plain: bool, options: CardOptions) -> CardFacts:
    """What the model card says, from the store (the trial's study, presets of the same evaluation) and the
    study's record and space."""
    all_rows = store.rows(store_dir)
    study_rows = [r for r in all_rows if r["study"] == row["study"]]
    comparable = [r for r in all_rows if r["strategy"] == "preset" and r["status"] == "complete"
                  and r.get("kld") is not None and r["eval_hash"] == row["eval_hash"]
                  and r["trial_id"] != row["trial_id"]]
    lines = to_tensor_type_lines(pmap, catalog, only_changed=False)
    ftype = recipe_base(pmap)
    im = inputs.imatrix
    imatrix_name = Path(inputs.imatrix_path).name if inputs.imatrix_path else None
    return CardFacts(
        file=ggufs[0].name, parts=tuple(p.name for p in ggufs), size_bytes=report.file_size,
        bpw=report.bits_per_weight, n_weights=catalog.n_elements, arch=catalog.arch, metadata=dict(catalog.kv),
        row=row, groups=_group_table(catalog, pmap), base_quant=ftype,
        recipe_command=(f"grep -v '^#' {Path(ggufs[0]).with_suffix('').name}.recipe > types.txt\nllama-quantize "
                        f"--allow-requantize {'--imatrix ' + imatrix_name + ' ' if imatrix_name else ''}"
                        f"--tensor-type-file types.txt SOURCE.gguf OUT.gguf {ftype}"),
        custom_q=custom_q(lines), surgery=tuple(not_expressible(pmap, catalog)), inputs=inputs.as_dict(),
        imatrix=({"name": imatrix_name, "datasets": list(im.datasets), "chunks": im.chunk_count}
                 if im is not None else None),
        protocol=_protocol(record, space, inputs), study_rows=study_rows, comparable=comparable,
        family_groups=_family_groups(space, catalog), candidates=_candidates(space, catalog),
        front=_front_position(study_rows, row), plain=plain,
        versions=json.loads(row["versions"]) if row.get("versions") else {}, options=options)


def _protocol(record: Mapping[str, Any], space, inputs: MeasuredInputs) -> dict[str, Any] | None:
    if space is None:
        return None
    ev = space.evaluation
    text = (f"`{Path(ev.text).name}`" if ev.text else "cerebellum-ray's built-in evaluation text")
    if getattr(ev, "chat_text", None):
        text = f"the conversations of `{Path(ev.chat_text).name}` through the model's chat template"
    reference = record.get("reference") or inputs.source
    return {"ctx": ev.ctx, "chunks": ev.chunks, "top_k": ev.top_k, "tail_samples": ev.tail_samples, "text": text,
            "reference": "the source model" if reference == inputs.source else f"`{Path(reference).name}`"}


def _family_groups(space, catalog) -> dict[str, list[str]]:
    """Which tensor groups each dimension family of the space covers (what a 'group NAME=TYPE' move changed)."""
    if space is None:
        return {}
    out: dict[str, list[str]] = {}
    for d in space.dimensions:
        groups = out.setdefault(d.dimension, [])
        for t in d.tensors:
            if catalog[t].group not in groups:
                groups.append(catalog[t].group)
    return out


def _candidates(space, catalog) -> dict[str, list[str]]:
    """The types the space searched for each tensor group."""
    out: dict[str, list[str]] = {}
    for d in space.dimensions if space is not None else ():
        for t in d.tensors:
            types = out.setdefault(catalog[t].group, [])
            types += [ty for ty in d.types if ty not in types]
    return out


def _front_position(rows, row) -> dict[str, Any] | None:
    from ..predict.fronts import compute_fronts, knee_point

    search = [r for r in rows if r["strategy"] not in store.REFERENCE_STRATEGIES]
    try:
        fronts = compute_fronts(search, ["size", "kld"])
    except ValueError:
        return None
    if not fronts or not fronts[0].points:
        return None
    f = fronts[0]
    ids = {p["trial_id"] for p in f.points}
    return {"n_points": len(f.points), "n_trials": len(f.points) + len(f.dominated),
            "knee": knee_point(f)["trial_id"], "member": row["trial_id"] in ids,
            "hypervolume_fraction": f.hypervolume_fraction}


__getattr__ = former_names(__name__, {"build": "cerebellum_ray.quant.build:build"})
