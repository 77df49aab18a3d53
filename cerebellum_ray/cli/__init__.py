"""The cerebellum-ray command line.

Imports nothing eagerly (``--help`` stays instant; llama_cpp must load before numpy). ``main`` is the console entry
point; every other name of the old ``cerebellum_ray.cli`` module (``build_parser``, ``cmd_*``, ...) resolves lazily
from the module that now holds it.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from .app import main as run

    return run(argv)


def __getattr__(name: str):
    import importlib

    app = importlib.import_module(f"{__name__}.app")
    try:
        return getattr(app, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
