"""The inputs a study measured: its source and imatrix, found by default and checked by digest.

Every trial's row records the digests of what its GGUF was built from (`source_digest`, `imatrix_digest`), and the
study's record (<store>/_studies/<study>.json, written by its search) their paths and digests. Whatever rebuilds a
measured map (export, verify, solve --verify) takes the inputs from there, and refuses a --source or --imatrix whose
digest differs, naming both digests, so the file a user takes home is the file that was scored. Another path with
the same digest (a copy, the other imatrix format) is accepted.

    row digests (or the record's) ──► expected ──┐
    --source / --imatrix (or the record's paths) ─┴─► digests compared ──► MeasuredInputs (paths, loaded imatrix)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError

__all__ = ["InputsError", "MeasuredInputs", "measured_inputs", "study_record"]

NO_IMATRIX = "none"  # the digest builds record without an imatrix (build.Provenance)


class InputsError(CerebellumError):
    """A source or imatrix that is not the one a trial was measured with (or none to be found)."""


@dataclass(frozen=True)
class MeasuredInputs:
    """The files to rebuild a study's maps from, checked against what its trials were built from."""

    study: str
    source: str
    source_digest: str | None  # what the trials were built from; None: not recorded (a study of an older version)
    imatrix_path: str | None
    imatrix: Any  # formats.imatrix.Imatrix, or None
    imatrix_digest: str | None  # NO_IMATRIX, a digest, or None when not recorded

    def as_dict(self) -> dict[str, Any]:
        """Paths and digests (for cards and --json)."""
        return {"source": os.path.abspath(self.source), "source_digest": self.source_digest,
                "imatrix": os.path.abspath(self.imatrix_path) if self.imatrix_path else None,
                "imatrix_digest": self.imatrix_digest or (self.imatrix.digest if self.imatrix else NO_IMATRIX)}


def study_record(store_dir: str | os.PathLike, study: str) -> dict[str, Any] | None:
    """The study's record as a dict, or None for a study stored before records were written (the one place this
    package reads it outside study/)."""
    from ..study.run import StudyRecord, study_record_path

    if not study_record_path(store_dir, study).exists():
        return None
    return StudyRecord.load(store_dir, study).as_dict()


def measured_inputs(store_dir: str | os.PathLike, study: str, row: Mapping[str, Any] | None = None, *,
                    source: str | None = None, imatrix: str | None = None,
                    cache_dir: str | None = None) -> MeasuredInputs:
    """The source and imatrix `row` (a trial of `study`; None: the study's latest) was built from: `source` and
    `imatrix` when given, else the paths the study recorded; refused (InputsError, both digests named) when a
    digest differs from the one the row or the record holds."""
    record = study_record(store_dir, study) or {}
    what = f"trial {row['trial_id']} of study {study!r}" if row and row.get("trial_id") else f"study {study!r}"
    source_path = _source(record, what, source, store_dir)
    expected_source = (row or {}).get("source_digest") or record.get("source_digest")
    actual_source = None
    if expected_source:
        actual_source = _source_digest(source_path, cache_dir or record.get("cache_dir"))
        if actual_source != expected_source:
            named = "--source " + source if source else f"the study's source {source_path}"
            raise InputsError(f"{named}: its digest is {actual_source}, but {what} was built from a source with "
                              f"digest {expected_source} (recorded: {record.get('source') or 'no path'}): give "
                              "--source the model the study ran on (a copy with the same digest will do)")
    expected_imatrix = (row or {}).get("imatrix_digest") or record.get("imatrix_digest")
    imatrix_path, loaded = _imatrix(record, what, imatrix, expected_imatrix)
    return MeasuredInputs(study=study, source=source_path, source_digest=expected_source or actual_source,
                          imatrix_path=imatrix_path, imatrix=loaded,
                          imatrix_digest=expected_imatrix or (loaded.digest if loaded else None))


def _source(record: Mapping[str, Any], what: str, given: str | None, store_dir) -> str:
    if given:
        return given
    recorded = record.get("source")
    if not recorded:
        raise InputsError(f"{what}: {store_dir} holds no record of its source (studies of older versions): give "
                          "--source, the model the study ran on")
    if not Path(recorded).exists():
        raise InputsError(f"{what}: the source it ran on, {recorded}, is gone (digest "
                          f"{record.get('source_digest') or 'not recorded'}): give --source with a file of that digest")
    return str(recorded)


def _source_digest(path: str, cache_dir: str | None) -> str:
    from ..quant.build import source_digest
    from ..quant.tensor_cache import TensorCache

    return source_digest(path, TensorCache(cache_dir))


def _imatrix(record: Mapping[str, Any], what: str, given: str | None, expected: str | None):
    """(path, loaded imatrix) to build with: the given one or the recorded one, its digest checked."""
    from ..formats.imatrix import load_imatrix

    if expected == NO_IMATRIX:
        if given:
            digest = load_imatrix(given).digest
            raise InputsError(f"--imatrix {given}: its digest is {digest}, but {what} was built without an imatrix "
                              f"(digest {NO_IMATRIX}): leave --imatrix out")
        return None, None
    recorded = record.get("imatrix")
    path = given or recorded
    if path is None:
        if expected:
            raise InputsError(f"{what} was built with the imatrix of digest {expected}, and no path of it is "
                              "recorded: give --imatrix FILE with that digest")
        return None, None  # an older study that recorded nothing: build as told
    if not Path(path).exists() and not given:
        raise InputsError(f"{what} was built with the imatrix of digest {expected or 'not recorded'}, recorded at "
                          f"{recorded}, which is gone: give --imatrix FILE with that digest")
    loaded = load_imatrix(path)
    if expected and loaded.digest != expected:
        named = "--imatrix " + given if given else f"the study's imatrix {path}"
        raise InputsError(f"{named}: its digest is {loaded.digest}, but {what} was built with the imatrix of digest "
                          f"{expected} (recorded: {recorded or 'no path'}): give --imatrix the imatrix the study used "
                          "(a file with the same digest will do)")
    if not expected and given and recorded and Path(recorded).exists():  # an older record: compare the files
        theirs = load_imatrix(recorded).digest
        if theirs != loaded.digest:
            raise InputsError(f"--imatrix {given}: its digest is {loaded.digest}, but {what} recorded the imatrix "
                              f"{recorded} of digest {theirs}: give that one (or a file with the same digest)")
    return str(path), loaded
