"""Sizes as people write and read them: '11.7GB', '500MiB', '20G' in; '1.25 GiB' out."""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import CerebellumError

SIZE_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
              "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class SizeError(CerebellumError):
    """A size that cannot be read (the message names the option or key)."""


def parse_size(value: Any, where: str) -> int:
    """Bytes from a number or a string with a unit (B, KB, MB, GB, TB decimal; KiB.. binary; K, M, G, T binary).
    Refuses anything else, and sizes that are not positive."""
    if isinstance(value, bool):
        raise SizeError(f"{where}: {value!r} is not a size (e.g. 11.7GB, 500MiB, 123456)")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(value))
        unit = (m.group(2) or "B").upper() if m else ""
        if not m or unit not in SIZE_UNITS:
            raise SizeError(f"{where}: {value!r} is not a size (e.g. 11.7GB, 500MiB, 123456)")
        size = float(m.group(1)) * SIZE_UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise SizeError(f"{where}: {value!r} is not a positive size")
    return int(size)


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


__all__ = ["SIZE_UNITS", "SizeError", "human_bytes", "parse_size"]
