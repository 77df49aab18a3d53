"""What every command shares: the `Command` record of the command table, option types that refuse a bad value
naming the option, the shared option sets (argparse parents: --json, --imatrix, --cache-dir, --store, --study), and
the output helpers.

Nothing heavy is imported here: building the whole parser must stay instant (`--help`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError
from ..core.units import human_bytes as human

__all__ = [
    "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_NO_SANDBOX", "EXIT_TERMINATED", "Command", "Parser",
    "add_split_option", "cache_dir_option", "cell", "context_size", "cpus", "fraction_of_gpus", "human",
    "imatrix_option", "int_at_least", "json_option", "load_imatrix_arg", "non_negative", "number", "positive",
    "print_json", "read_text_file", "seconds", "split_size", "stdout_to_stderr", "store_option", "studies_option",
    "study_option"
]

EXIT_BAD_INPUT = 2
EXIT_NO_SANDBOX = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


@dataclass(frozen=True)
class Command:
    """One row of the command table: its name and help, the options only it has, the shared option sets it takes
    (argparse parents), and the function that runs it (args -> exit status)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    shared: tuple[argparse.ArgumentParser, ...] = ()


class Parser(argparse.ArgumentParser):
    """argparse with its refusals as one line (no usage block): 'cerebellum-ray score: error: argument --ctx: ...'."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- option types: argparse refuses a bad value naming the option -------------------------------------------------


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def number(low: float, high: float, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high or (low_open and value == low):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if low_open else '>='} {low:g} and <= {high:g}, got {text}")
        return value

    return parse


def context_size(text: str) -> int:
    value = int_at_least(4)(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"must be even (the second half of each context is scored), got {value}")
    return value


positive = int_at_least(1)
non_negative = int_at_least(0)
fraction_of_gpus = number(0.0, 1024.0)
cpus = number(0.0, 1024.0, low_open=True)
seconds = number(0.0, 3600.0, low_open=True)


# ---- shared option sets (argparse parents) --------------------------------------------------------------------------


def _option_set(*flags: str, **kwargs) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(*flags, **kwargs)
    return parent


def json_option(help: str | None = None) -> argparse.ArgumentParser:
    return _option_set("--json", action="store_true", help=help)


def imatrix_option(help: str) -> argparse.ArgumentParser:
    return _option_set("--imatrix", help=help)


def cache_dir_option(help: str) -> argparse.ArgumentParser:
    return _option_set("--cache-dir", help=help)


def store_option(help: str | None = None) -> argparse.ArgumentParser:
    return _option_set("--store", required=True, help=help)


def study_option(help: str | None = None) -> argparse.ArgumentParser:
    """One study, required."""
    return _option_set("--study", required=True, help=help)


def studies_option(help: str) -> argparse.ArgumentParser:
    """Studies to include (repeatable; none given: all)."""
    return _option_set("--study", action="append", help=help)


def add_split_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-max-size", metavar="SIZE",
                   help="write a split model, as llama-gguf-split --split-max-size SIZE cuts it (10G: 10 * 10**9 "
                        "bytes of tensor data per part; 9.5GiB works too): OUT-00001-of-0000N.gguf, ...; llama.cpp "
                        "loads the first part")


def split_size(args) -> int | None:
    from ..formats.gguf_io import parse_split_size

    return parse_split_size(args.split_max_size) if getattr(args, "split_max_size", None) else None


# ---- reading and printing -------------------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


def cell(v) -> str:
    """A table cell: 5 significant digits, a float that is noise around 0 (the reference's KLD, -3e-10) as 0."""
    from ..core.units import near_zero

    if v is None:
        return "-"
    if isinstance(v, float):
        return "0" if near_zero(v) else f"{v:.5g}"
    return str(v)


def load_imatrix_arg(args):
    if not args.imatrix:
        return None
    from ..formats.imatrix import load_imatrix

    return load_imatrix(args.imatrix)


def read_text_file(path: str, what: str) -> str:
    p = Path(path)
    if p.is_dir():
        raise CerebellumError(f"{path}: is a directory, not a {what}")
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CerebellumError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as exc:
        raise CerebellumError(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@contextlib.contextmanager
def stdout_to_stderr(active: bool):
    """With --json, stdout carries only the JSON document: everything Ray and Tune print goes to stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
