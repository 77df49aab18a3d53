"""The one error base class: every refusal of bad input is a `CerebellumError`, and the CLI prints it as one line.

Each stage keeps its own subclass (``GGUFError``, ``MapError``, ``SpaceError``, ``BuildError``, ...) so that callers
can tell them apart; their messages name the file or tensor, the value, the rule it broke and the way out.
Anything else that escapes a command is a bug and keeps its traceback. Subclassing ValueError keeps older callers'
``except ValueError`` working.
"""

from __future__ import annotations


class CerebellumError(ValueError):
    """Bad input refused (nothing written): the message says what, where, which rule and how to fix it.

    The message is kept on one line: line breaks inside it (a key or tensor name read from a hostile file may hold
    them) are shown escaped.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


__all__ = ["CerebellumError", "one_line"]
