"""The search strategies by name: `search --strategy NAME` runs `STRATEGIES[NAME]` on a prepared `StudyRun`.

A strategy is a function of a StudyRun returning its SearchResult; `check` refuses options it cannot run with before
the study is prepared (preparing computes the reference). Adding one is adding an entry here.

The table is data: each function is named by "module:function" and imported when its strategy runs, so the command
line can list the strategies (names and summaries for `--help`) without importing Ray, Optuna or llama.cpp.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import CerebellumError

if TYPE_CHECKING:
    from .run import SearchOptions, SearchResult, StudyRun


class StrategyError(CerebellumError):
    """A strategy name that is not in the registry; the message lists the strategies."""


@dataclass(frozen=True)
class Strategy:
    name: str
    runs: str  # "module:function", the function a StudyRun -> SearchResult
    summary: str  # one line for people
    checks: str | None = None  # "module:function" refusing options (SearchOptions) before anything is prepared

    @property
    def run(self) -> Callable[[StudyRun], SearchResult]:
        return _resolve(self.runs)

    @property
    def check(self) -> Callable[[SearchOptions], None] | None:
        return _resolve(self.checks) if self.checks else None


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    if module.startswith("."):
        from ..native.llama import llama_cpp  # noqa: F401  (first: the strategies load numpy)

        module = __package__ + module
    return getattr(importlib.import_module(module), name)


# In the order the command line lists them (the recommended one first).
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("guided", ".guided:run_guided",
             "prior, sensitivities, a surrogate and an exact budget solver, then NSGA-II"),
    Strategy("optuna", ".search:optuna_search", "Optuna's NSGA-II or TPE (the space's search.sampler)"),
    Strategy("ablation", ".ablation:run_ablation", "the model card's ablation procedure from the space's base preset"),
    Strategy("presets", ".search:run_presets", "llama.cpp presets (--presets) scored as reference points"),
    Strategy("fixed", ".search:run_fixed", "one precision map file (--map) scored as a reference point",
             checks=".search:check_fixed"),
)}


def strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; strategies: {', '.join(STRATEGIES)}") from None


def run_search(opts: SearchOptions) -> SearchResult:
    """Run (or continue) the study `opts` describes with its strategy: checked, prepared, run."""
    chosen = strategy(opts.strategy)
    if chosen.check is not None:
        chosen.check(opts)
    from .run import StudyRun

    return chosen.run(StudyRun.prepare(opts))


__all__ = ["STRATEGIES", "Strategy", "StrategyError", "run_search", "strategy"]
