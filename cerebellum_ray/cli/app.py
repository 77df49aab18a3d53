"""The `cerebellum-ray` entry point: parse (cli/table.py), run the command, turn every refusal into one line.

Heavy modules are imported inside each command, so `--help` stays instant. Every refusal of bad input is a
`CerebellumError` (or an OSError such as a full disk), printed as one line with exit status 2; SIGTERM ends a
command through the same clean-up path as an error (no half-written files), and a closed pipe (`| head`) ends it
quietly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ..core.errors import CerebellumError
from .options import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED
from .table import build_parser

__all__ = ["build_parser", "main"]


def _terminate(signum, frame):
    """SIGTERM: leave through the normal clean-up path (temporary files removed, nothing half-written)."""
    raise SystemExit(EXIT_TERMINATED)


def _run(args) -> int:
    try:
        return args.func(args)
    except CerebellumError as exc:
        print(f"cerebellum-ray {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"cerebellum-ray {args.command}: error: {_os_error_text(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc.strerror or exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if threading_is_main():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    except BrokenPipeError:  # `cerebellum-ray inspect M | head`: the reader is gone, which is not an error
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"cerebellum-ray {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
