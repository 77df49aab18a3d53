"""Quantize one tensor exactly as llama-quantize does, through ggml's own ggml_quantize_chunk.

Per tensor: the source rows are converted to float32 with ggml's own conversion (so a requantized tensor sees the
same floats llama-quantize sees), then quantized row range by row range on a thread pool, each range inside one
expert so that 3-D expert tensors get their own importance slice, and every range is checked with
ggml_validate_row_data. Rows are independent in every ggml quantizer, so the bytes do not depend on the split.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from ..core.errors import CerebellumError
from ..native import ggml as _ggml
from ..formats.ggml_types import GGMLType, ggml_type

# Rows per work item: about this many elements (1 MiB of float32), so that even a 2048x2048 tensor keeps all
# threads busy (llama-quantize uses 16384-element chunks).
CHUNK_ELEMENTS = 256 * 1024


class QuantizeError(CerebellumError):
    """A tensor that cannot be quantized as asked: the message names the tensor, the rule and the fix."""


@dataclass(frozen=True)
class QuantJob:
    """What to do with one tensor: its name (for messages), ggml shape, current and target type."""

    name: str
    shape: tuple[int, ...]
    src_type: str
    dst_type: str

    @property
    def n_per_row(self) -> int:
        return self.shape[0]

    @property
    def rows_per_expert(self) -> int:
        return int(np.prod(self.shape[1:2] or (1,)))

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[1:] or (1,)))

    @property
    def n_experts(self) -> int:
        return self.n_rows // self.rows_per_expert


def check_job(job: QuantJob, imatrix: np.ndarray | None) -> None:
    """Refuse, before any work, what ggml would abort on or silently get wrong."""
    dst = ggml_type(job.dst_type)
    if not dst.quantizable:
        raise QuantizeError(f"{job.name}: ggml cannot write type {dst.name}; choose a quantizable type")
    if len(job.shape) < 2 and job.dst_type != job.src_type:
        raise QuantizeError(
            f"{job.name}: 1-D tensors (norms, scales, biases) keep their type {job.src_type}; "
            f"asked for {job.dst_type}"
        )
    if not dst.fits_row(job.n_per_row):
        raise QuantizeError(
            f"{job.name}: rows of {job.n_per_row} elements are not a multiple of {dst.name}'s block of "
            f"{dst.block_size}; use a type with a smaller block (or ask for llama.cpp's fallback)"
        )
    if imatrix is not None and imatrix.size != job.n_per_row * job.n_experts:
        raise QuantizeError(
            f"{job.name}: importance vector has {imatrix.size} values, the tensor needs "
            f"{job.n_per_row} x {job.n_experts} experts = {job.n_per_row * job.n_experts}; "
            "the imatrix was computed for another model"
        )
    if dst.needs_imatrix and imatrix is None:
        raise QuantizeError(
            f"{job.name}: {dst.name} needs an importance matrix and none was given for this tensor; "
            "pass --imatrix FILE (made with llama-imatrix for this model) or choose another type"
        )


def _row_ranges(job: QuantJob, rows_per_chunk: int):
    """(first_row, n_rows) ranges covering all rows, never crossing an expert boundary."""
    for expert in range(job.n_experts):
        start = expert * job.rows_per_expert
        end = start + job.rows_per_expert
        for r in range(start, end, rows_per_chunk):
            yield r, min(rows_per_chunk, end - r)


def quantize_array(job: QuantJob, src: np.ndarray, imatrix: np.ndarray | None = None,
                   n_threads: int | None = None) -> np.ndarray:
    """quantize_tensor for data already in memory (`src`: the tensor's raw bytes, any dtype)."""
    raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
    row_bytes = ggml_type(job.src_type).row_bytes(job.n_per_row)
    if raw.nbytes != row_bytes * job.n_rows:
        raise QuantizeError(f"{job.name}: source holds {raw.nbytes} bytes, expected {row_bytes * job.n_rows}")
    return quantize_tensor(job, lambda first, n: raw[first * row_bytes : (first + n) * row_bytes], imatrix, n_threads)


def quantize_tensor(
    job: QuantJob,
    read_rows: Callable[[int, int], np.ndarray],
    imatrix: np.ndarray | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Quantize one tensor to job.dst_type; `read_rows(first_row, n_rows)` returns those rows' raw source bytes.

    Rows are read per work item, so peak memory is the output plus a few 1 MiB work buffers, not the source.
    Returns the new raw bytes (uint8). `imatrix`, when given, holds n_per_row values per expert, concatenated.
    """
    check_job(job, imatrix)
    src_t: GGMLType = ggml_type(job.src_type)
    dst_t: GGMLType = ggml_type(job.dst_type)
    dst_row_bytes = dst_t.row_bytes(job.n_per_row)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(job.n_experts, job.n_per_row)

    out = np.empty(dst_row_bytes * job.n_rows, dtype=np.uint8)
    _ggml.quantize_init(dst_t.id)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // job.n_per_row)

    def work(first_row: int, n_rows: int) -> None:
        raw = read_rows(first_row, n_rows)
        if src_t.name == "F32":
            f32 = raw.view(np.float32).reshape(n_rows, job.n_per_row)
        else:
            f32 = np.empty((n_rows, job.n_per_row), dtype=np.float32)
            _ggml.to_float(src_t.id, raw, f32.size, f32)
        dst = out[first_row * dst_row_bytes : (first_row + n_rows) * dst_row_bytes]
        weights = None if imatrix is None else imatrix[first_row // job.rows_per_expert]
        written = _ggml.quantize_rows(dst_t.id, f32, dst, weights)
        if written != dst.nbytes or not _ggml.validate_rows(dst_t.id, dst):
            raise QuantizeError(
                f"{job.name}: ggml produced invalid {dst_t.name} data for rows {first_row}..{first_row + n_rows} "
                "(NaN or inf in the source or the importance matrix?)"
            )

    ranges = list(_row_ranges(job, rows_per_chunk))
    threads = n_threads or os.cpu_count() or 1
    if threads <= 1 or len(ranges) == 1:
        for r in ranges:
            work(*r)
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(ranges))) as pool:
            for fut in [pool.submit(work, *r) for r in ranges]:
                fut.result()
    return out


__all__ = ["CHUNK_ELEMENTS", "QuantJob", "QuantizeError", "check_job", "quantize_array", "quantize_tensor"]
