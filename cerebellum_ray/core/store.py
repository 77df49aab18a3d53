"""The result store: one Parquet file per finished trial in one directory, one schema.

The directory is a Parquet dataset readable by pyarrow (`pyarrow.dataset.dataset(DIR)`), DuckDB
(`SELECT * FROM 'DIR/*.parquet'`) and Polars (`pl.scan_parquet('DIR/*.parquet')`). A row is written to a temporary
file and renamed into place, so a reader never sees half a row, and its file name is derived from (study, trial
id), so writing a trial twice replaces it instead of duplicating it. Pareto fronts, reports and export read only
this store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path

_F = pa.float64()

# Rows of these strategies are reference points (llama.cpp presets, fixed maps, the reference model), not searches.
REFERENCE_STRATEGIES = ("preset", "fixed", "reference")

# The one schema: every column, its type and its meaning (search_spaces/README.md documents it for users).
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("study", pa.string(), "study name"),
    ("trial_id", pa.string(), "Ray Tune trial id (or a name for reference rows)"),
    ("strategy", pa.string(), "optuna | guided | ablation | solve | preset | reference | fixed"),
    ("status", pa.string(), "complete | pruned | failed | infeasible | duplicate"),
    ("error", pa.string(), "error message of a failed trial"),
    ("label", pa.string(), "a human name: preset name, ablation step, ..."),
    ("map", pa.map_(pa.string(), pa.string()), "every tensor -> ggml type"),
    ("map_hash", pa.string(), "sha256 of the sorted map (PrecisionMap.digest)"),
    ("params", pa.string(), "the search point as JSON"),
    ("optuna_trial", pa.int32(), "number of the Optuna trial that proposed it (optuna strategy)"),
    ("phase", pa.string(), "what proposed it within its strategy (guided: sensitivity | solved | explore | nsga2)"),
    ("predicted_kld", _F, "the surrogate's KLD for this map, predicted before the trial ran (guided, solve)"),
    ("predicted_kld_se", _F, "the standard error of that prediction"),
    ("n_changed", pa.int32(), "tensors whose type differs from the space's base map"),
    ("size_bytes", pa.int64(), "exact file size of the built GGUF"),
    ("bpw", _F, "bits per weight of the tensor data"),
    ("ppl", _F, "perplexity"), ("ppl_se", _F, "its standard error"),
    ("kld", _F, "mean KL divergence vs the reference (top K exact, the rest sampled: unbiased)"),
    ("kld_se", _F, "its standard error"),
    ("kld_median", _F, ""), ("kld_p90", _F, ""), ("kld_p99", _F, ""), ("kld_p999", _F, ""), ("kld_max", _F, ""),
    ("same_top", _F, "share of positions whose top token equals the reference's"), ("same_top_se", _F, ""),
    ("rms_dp", _F, "RMS of p(target) - p_ref(target)"), ("rms_dp_se", _F, ""),
    ("kld_code", _F, "mean KL divergence on the code corpus"), ("kld_code_se", _F, ""),
    ("same_top_code", _F, "same-top share on the code corpus"),
    ("ppl_code", _F, "perplexity on the code corpus"), ("ppl_code_se", _F, ""),
    ("humaneval", _F, "HumanEval pass@1 on the subset"), ("humaneval_se", _F, ""),
    ("humaneval_n", pa.int32(), "HumanEval problems scored (164: the whole set)"),
    ("humaneval_loops", _F, "share of completions stuck in a repetition loop"),
    ("humaneval_delta", _F, "pass@1 minus the reference model's on the same problems"),
    ("humaneval_delta_se", _F, "paired standard error of humaneval_delta"),
    ("humaneval_mcnemar_p", _F, "exact McNemar p-value of the paired comparison with the reference"),
    ("mc_acc", _F, "multiple-choice accuracy (all files pooled)"), ("mc_acc_se", _F, ""),
    ("chunks_done", pa.int32(), "text chunks scored (less than n_chunks for a pruned trial)"),
    ("n_chunks", pa.int32(), "text chunks of the evaluation"),
    ("eval_hash", pa.string(), "digest of the evaluation settings (text, context, chunks, K, reference)"),
    ("source_digest", pa.string(), "the source the trial's GGUF was built from (cerebellum.source_digest)"),
    ("imatrix_digest", pa.string(), "the importance matrix it was built with (its vectors' digest; none: without)"),
    ("pp_tokens_per_s", _F, "prompt-processing tokens per second while scoring the text (objective `speed`)"),
    ("gen_tokens_per_s", _F, "generation tokens per second (HumanEval), when it generated"),
    ("device", pa.string(), "what scored it: CPU, or the GPU's name"),
    ("build_s", _F, "seconds to build the GGUF"), ("load_s", _F, "seconds to load it"),
    ("score_s", _F, "seconds to score it"),
    ("node", pa.string(), "host (and Ray node) that ran the trial"),
    ("gpu_ids", pa.string(), "CUDA_VISIBLE_DEVICES of the trial"),
    ("gpus", _F, "GPU share the trial held (--gpus-per-trial)"),
    ("versions", pa.string(), "JSON of package versions"),
    ("started_at", pa.timestamp("us", tz="UTC"), ""), ("finished_at", pa.timestamp("us", tz="UTC"), ""),
)
SCHEMA = pa.schema([(name, typ) for name, typ, _ in COLUMNS])
FLOAT_COLUMNS = tuple(name for name, typ, _ in COLUMNS if typ == _F)


def safe_name(name: str) -> str:
    """A file name for `name`: its safe characters (at most 80) and a digest of the whole (never two names alike)."""
    return f"{_safe(name)[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _file_name(study: str, trial_id: str) -> str:
    safe = _safe(f"{study}__{trial_id}")
    return f"{safe[:80]}-{hashlib.sha256(f'{study}/{trial_id}'.encode()).hexdigest()[:12]}.parquet"


def _files(store_dir: str | os.PathLike, studies: Iterable[str] | None) -> list[Path]:
    """The row files that can hold rows of `studies` (all files when None): a row's file name starts with its
    sanitized study name (a superset: the rows are still filtered by their study column), unless the name is too
    long to show in the file name's first 80 characters."""
    files = sorted(Path(store_dir).glob("*.parquet"))
    if studies is None:
        return files
    prefixes = [_safe(f"{s}__") for s in studies]
    if any(len(p) > 80 for p in prefixes):
        return files
    return [f for f in files if f.name.startswith(tuple(prefixes))]


def normalize_row(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown store columns {sorted(unknown)}")
    out = {name: row.get(name) for name in SCHEMA.names}
    if isinstance(out["map"], Mapping):
        out["map"] = list(out["map"].items())
    for key in ("params", "versions"):
        if out[key] is not None and not isinstance(out[key], str):
            out[key] = json.dumps(out[key], sort_keys=True, default=str)
    for key in ("started_at", "finished_at"):
        if isinstance(out[key], (int, float)):
            out[key] = datetime.fromtimestamp(out[key], tz=timezone.utc)
    return out


def append(store_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """Write one row atomically (temporary file + rename); the same (study, trial_id) replaces its row."""
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([normalize_row(row)], schema=SCHEMA)
    path = row_path(store, str(row["study"]), str(row["trial_id"]))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def row_path(store_dir: str | os.PathLike, study: str, trial_id: str) -> Path:
    return Path(store_dir) / _file_name(study, trial_id)


def read_row(store_dir: str | os.PathLike, study: str, trial_id: str) -> dict[str, Any] | None:
    path = row_path(store_dir, study, trial_id)
    if not path.exists():
        return None
    row = pq.read_table(path, schema=SCHEMA).to_pylist()[0]
    row["map"] = dict(row["map"]) if row["map"] is not None else None
    return row


def read(store_dir: str | os.PathLike, studies: Iterable[str] | None = None) -> pa.Table:
    """All rows (optionally of some studies) as one Arrow table with the store's schema."""
    studies = None if studies is None else list(studies)
    files = _files(store_dir, studies)
    if not files:
        return SCHEMA.empty_table()
    import pyarrow.dataset as ds

    table = ds.dataset([str(f) for f in files], format="parquet", schema=SCHEMA).to_table()
    if studies is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table["study"], value_set=pa.array(list(studies), pa.string())))
    return table


def rows(store_dir: str | os.PathLike, studies: Iterable[str] | None = None) -> list[dict[str, Any]]:
    out = read(store_dir, studies).to_pylist()
    for r in out:
        if r["map"] is not None:
            r["map"] = dict(r["map"])
    return out


__all__ = [
    "COLUMNS", "FLOAT_COLUMNS", "REFERENCE_STRATEGIES", "SCHEMA", "append", "normalize_row", "read", "read_row",
    "row_path", "rows", "safe_name"
]
