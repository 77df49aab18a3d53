"""The cerebellum-ray command line: the command table (table.py), one module per command group (cmd_*.py), shared
options (options.py), the entry point (app.py).

Imports nothing eagerly (``--help`` stays instant; llama_cpp must load before numpy). ``main`` is the console entry
point; every other name of the old ``cerebellum_ray.cli`` module (``build_parser``, ``cmd_*``, ...) resolves lazily
from the module that now holds it.
"""

from __future__ import annotations

_MODULES = ("app", "table", "options", "cmd_models", "cmd_evaluate", "cmd_study", "cmd_results")
_RENAMED = {  # old private name in cli.py -> its name now
    "_Parser": "Parser", "_print_json": "print_json", "_int_at_least": "int_at_least", "_number": "number",
    "_context_size": "context_size", "_positive": "positive", "_non_negative": "non_negative",
    "_fraction_of_gpus": "fraction_of_gpus", "_cpus": "cpus", "_seconds": "seconds", "_human": "human",
    "_split_size": "split_size", "_add_split_option": "add_split_option", "_load_imatrix": "load_imatrix_arg",
    "_stdout_to_stderr": "stdout_to_stderr", "_read_text_file": "read_text_file", "_cell": "cell",
}


def main(argv: list[str] | None = None) -> int:
    from .app import main as run

    return run(argv)


def __getattr__(name: str):
    import importlib

    wanted = _RENAMED.get(name, name)
    for module in _MODULES:
        found = getattr(importlib.import_module(f"{__name__}.{module}"), wanted, None)
        if found is not None:
            return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
