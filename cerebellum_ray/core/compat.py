"""Names a module no longer defines, still resolvable from it: old imports and pickled Ray Tune / Optuna state
(which names functions and classes by module and attribute) keep working after a rename or a move.

A module lists its former names and where each lives now, and installs the lookup as its `__getattr__` (PEP 562:
called only for names the module does not have):

    __getattr__ = compat.former_names(__name__, {"read_study": "cerebellum_ray.study.run:read_record_dict"})

A target is imported when the name is first asked for, so a former name may point into a module that imports this
one (no import cycle at load time). The former names are not part of the module's API: new code uses the targets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def former_names(module: str, targets: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` resolving each former name to its target: "package.module:attribute", or
    "package.module" for a module."""
    table = dict(targets)

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, _, attr = target.partition(":")
        found = importlib.import_module(where)
        return getattr(found, attr) if attr else found

    return __getattr__


__all__ = ["former_names"]
