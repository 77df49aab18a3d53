"""Numbers as people write and read them: sizes ('11.7GB', '500MiB', '20G' in; '1.25 GiB' out, and the decimal unit
a model's sizes read best in), measured values with their standard errors (a value indistinguishable from 0 reads
0), and changes against a base (absolute when the base is ~0: a relative change against 0 means nothing)."""

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


DECIMAL_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0))


def size_unit(largest: float) -> tuple[str, float]:
    """(unit, bytes per unit): the decimal unit in which sizes up to `largest` bytes read best, the largest unit
    they are at least 1 of (GB for a 12 GB model, MB for a 5 MB one: never 0.005 GB)."""
    for unit, scale in DECIMAL_UNITS:
        if abs(largest) >= scale:
            return unit, scale
    return "B", 1.0


def size_text(n_bytes: float, unit: tuple[str, float] | None = None, digits: int = 3) -> str:
    """'11.7 GB', '5.24 MB': `digits` significant digits in `unit` (default: the size's own, size_unit)."""
    name, scale = unit or size_unit(n_bytes)
    return f"{n_bytes / scale:.{digits}g} {name}"


# a measured value this close to 0 is float noise (the KLD of the reference against itself reads -3e-10)
ZERO = 1e-9
# a base this close to 0 is the reference itself: changes against it are shown as differences (ablation's rule)
BASE_ZERO = 1e-6


def near_zero(value: float, se: float | None = None, n_se: float = 1.0, floor: float = ZERO) -> bool:
    """Whether `value` cannot be told from 0: within `n_se` standard errors of it, or below `floor`."""
    return abs(value) <= max(floor, n_se * abs(se or 0.0))


def value_text(value: float | None, se: float | None = None, digits: int = 5, pm: str = "+/-") -> str:
    """'0.01234 +/- 0.00012' (`digits` decimals); a value indistinguishable from 0 as '0 +/- 3e-10' (never
    '-0.00000' or '-3.0435e-10'); None as '-'."""
    if value is None:
        return "-"
    if near_zero(value, se):
        return "0" + (f" {pm} {abs(se):.2g}" if se else "")
    return f"{value:.{digits}f}" + (f" {pm} {se:.{digits}f}" if se is not None else "")


def change_text(value: float, base: float, base_se: float | None = None, digits: int = 5) -> str:
    """`value` against `base`: '+12.3%', or the absolute difference '+0.01234 (absolute)' when the base cannot be
    told from 0 (within 2 standard errors, or below BASE_ZERO)."""
    if near_zero(base, base_se, n_se=2.0, floor=BASE_ZERO):
        return f"{value - base:+.{digits}f} (absolute)"
    return f"{100 * (value - base) / base:+.1f}%"


def relative_change(value: float, base: float, base_se: float | None = None) -> float | None:
    """(value - base) / base, or None when the base cannot be told from 0 (see change_text)."""
    if near_zero(base, base_se, n_se=2.0, floor=BASE_ZERO):
        return None
    return (value - base) / base


__all__ = ["BASE_ZERO", "DECIMAL_UNITS", "SIZE_UNITS", "SizeError", "ZERO", "change_text", "human_bytes",
           "near_zero", "parse_size", "relative_change", "size_text", "size_unit", "value_text"]
