"""Export: the chosen trial's map built from the full-precision source, with a recipe and a card.

    FINAL.gguf        the map, built by the byte-exact builder (provenance in its metadata)
    FINAL.recipe      llama-quantize --tensor-type-file lines for every tensor it can set, then, as `#` comment
                      lines, what llama-quantize cannot do (e.g. router types) as `cerebellum-ray surgery` --set
                      arguments. `grep -v '^#' FINAL.recipe` is a valid --tensor-type-file.
    FINAL.card.json   the map summarized by group (as in the model card's "Final Precision Map" table), the metrics
                      with standard errors, and provenance.

The three files appear together or not at all (atomic.atomic_group), never replace the source, the imatrix or a
file of the store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.compat import former_names
from ..core.errors import CerebellumError
from ..core import store
from ..quant.build import build_into, output_paths
from ..formats.catalog import layer_ranges, load_catalog
from ..core.atomic import atomic_group, refuse_store_files
from ..formats.precision_map import PrecisionMap, by_group, not_expressible, to_tensor_type_lines

METRIC_COLUMNS = ("size_bytes", "bpw", "ppl", "ppl_se", "kld", "kld_se", "kld_median", "kld_p90", "kld_p99",
                  "kld_p999", "kld_max", "same_top", "same_top_se", "rms_dp", "rms_dp_se", "humaneval",
                  "humaneval_se", "mc_acc", "mc_acc_se", "chunks_done", "n_chunks")


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


def recipe_text(pmap: PrecisionMap, catalog, out_name: str) -> str:
    lines = to_tensor_type_lines(pmap, catalog, only_changed=False)
    extra = not_expressible(pmap, catalog)
    text = lines
    ftype = pmap.base if pmap.base.startswith(("Q", "IQ")) else "Q8_0"
    text += (f"# cerebellum-ray recipe for {out_name}; base {pmap.base}; map digest {pmap.digest}\n"
             f"# llama-quantize: grep -v '^#' {out_name}.recipe > types.txt; llama-quantize --allow-requantize "
             f"--tensor-type-file types.txt SOURCE.gguf OUT.gguf {ftype}\n")
    if extra:
        sets = " ".join(f"--set '{name}={new}'" for name, _, new in extra)
        text += f"# llama-quantize cannot set {len(extra)} tensor(s); afterwards run:\n"
        for name, old, new in extra:
            text += f"#   surgery: {name}: {old} -> {new}\n"
        text += f"# cerebellum-ray surgery OUT.gguf {sets} --out OUT.gguf\n"
    return text


def export(store_dir: str, source: str, out: str, studies: list[str] | None = None, trial: str | None = None,
           pick: str | None = None, max_size: int | None = None, imatrix_path: str | None = None,
           cache_dir: str | None = None, split_max_bytes: int | None = None) -> dict[str, Any]:
    row = pick_row(store_dir, studies, trial, pick, max_size)
    catalog = load_catalog(source)
    missing = [n for n in catalog.by_name if n not in row["map"]]
    if missing or len(row["map"]) != len(catalog.tensors):
        raise ExportError(f"trial {row['trial_id']}'s map does not fit {source} (e.g. {missing[:1]}): "
                          "export from the source the study was run on")
    pmap = PrecisionMap(types={t.name: row["map"][t.name] for t in catalog.tensors},
                        base=_base_of(row))
    imatrix = None
    if imatrix_path:
        from ..formats.imatrix import load_imatrix

        imatrix = load_imatrix(imatrix_path)
    from ..quant.tensor_cache import TensorCache

    out_path = Path(out)
    stem = out_path.with_suffix("")
    ggufs = output_paths(source, pmap, out_path, split_max_bytes, imatrix)  # OUT, or its parts
    outputs = [*ggufs, Path(f"{stem}.recipe"), Path(f"{stem}.card.json")]
    for path in outputs:
        refuse_store_files(path, store_dir)
    cache = TensorCache(cache_dir) if cache_dir else None
    with atomic_group(outputs, inputs={"source model": source, "imatrix": imatrix_path}) as temps:
        *gguf_temps, recipe, card = temps
        report = build_into(source, pmap, gguf_temps, split_max_bytes, imatrix=imatrix, cache=cache)
        recipe.write_text(recipe_text(pmap, catalog, stem.name))
        card.write_text(json.dumps(_card(row, catalog, pmap, report, ggufs, source), indent=1, default=str) + "\n")
    return {"out": str(ggufs[0]), "parts": [str(p) for p in ggufs], "recipe": str(outputs[-2]),
            "card": str(outputs[-1]), "row": row, "file_size": report.file_size, "map": pmap}


def _card(row, catalog, pmap: PrecisionMap, report, ggufs: list[Path], source: str) -> dict[str, Any]:
    return {
        "file": ggufs[0].name, **({"parts": [p.name for p in ggufs]} if len(ggufs) > 1 else {}),
        "size_bytes": report.file_size, "bits_per_weight": report.bits_per_weight,
        "trial": {k: row[k] for k in ("study", "trial_id", "strategy", "label", "eval_hash", "map_hash")},
        "metrics": {k: row.get(k) for k in METRIC_COLUMNS if row.get(k) is not None},
        "precision_map_by_group": _group_table(catalog, pmap),
        "llama_quantize_cannot_set": [{"tensor": n, "from": a, "to": b} for n, a, b in not_expressible(pmap, catalog)],
        "provenance": {**vars(report.provenance), "source": os.path.abspath(source),
                       "versions": json.loads(row["versions"]) if row.get("versions") else None},
    }


def _base_of(row: dict[str, Any]) -> str:
    params = row.get("params")
    if isinstance(params, str) and params.startswith("{"):
        base = json.loads(params).get("base")
        if isinstance(base, str):
            return base
    return f"trial:{row['trial_id']}"


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


__all__ = ["ExportError", "METRIC_COLUMNS", "export", "pick_row", "recipe_text"]

__getattr__ = former_names(__name__, {"build": "cerebellum_ray.quant.build:build"})
