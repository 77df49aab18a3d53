"""The command table: every `cerebellum-ray` command in the order `--help` lists them, and the parser built from it.

Each command module declares its commands (`COMMANDS`: name, help, its own options, the shared option sets it takes,
the function that runs it); nothing else knows how a command is parsed.
"""

from __future__ import annotations

import argparse

from . import cmd_evaluate, cmd_models, cmd_results, cmd_study
from .options import Command, Parser

__all__ = ["COMMANDS", "ORDER", "build_parser"]

ORDER = ("inspect", "map", "build", "imatrix", "make-tiny", "score", "search", "pareto", "prior", "solve", "export",
         "verify", "report", "surgery", "humaneval-check", "demo")


def _commands() -> tuple[Command, ...]:
    by_name = {c.name: c for module in (cmd_models, cmd_evaluate, cmd_study, cmd_results) for c in module.COMMANDS}
    unlisted = sorted(set(by_name) - set(ORDER))
    if unlisted:
        raise AssertionError(f"commands missing from the table's ORDER: {unlisted}")
    return tuple(by_name[name] for name in ORDER)


COMMANDS = _commands()


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="cerebellum-ray",
                    description="Find the best mixed-precision GGUF quantization of a model by measurement.")
    parser.add_argument("--version", action="version", version=f"cerebellum-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description,
                           parents=list(command.shared))
        command.arguments(p)
        p.set_defaults(func=command.run)
    return parser
