"""The search strategies by name: `search --strategy NAME` runs `STRATEGIES[NAME]` on a prepared `StudyRun`.

A strategy is a function of a StudyRun returning its SearchResult; `check` refuses options it cannot run with before
the study is prepared (preparing computes the reference). Adding one is adding an entry here.
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import CerebellumError
from .ablation import run_ablation
from .guided import run_guided
from .run import SearchOptions, SearchResult, StudyRun
from .search import check_fixed, optuna_search, run_fixed, run_presets


class StrategyError(CerebellumError):
    """A strategy name that is not in the registry; the message lists the strategies."""


@dataclass(frozen=True)
class Strategy:
    name: str
    run: Callable[[StudyRun], SearchResult]
    summary: str  # one line for people
    check: Callable[[SearchOptions], None] | None = None  # refuses options before anything is prepared


# In the order the command line lists them (the recommended one first).
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("guided", run_guided, "prior, sensitivities, a surrogate and an exact budget solver, then NSGA-II"),
    Strategy("optuna", optuna_search, "Optuna's NSGA-II or TPE (the space's search.sampler)"),
    Strategy("ablation", run_ablation, "the model card's ablation procedure from the space's base preset"),
    Strategy("presets", run_presets, "llama.cpp presets (--presets) scored as reference points"),
    Strategy("fixed", run_fixed, "one precision map file (--map) scored as a reference point", check=check_fixed),
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
    return chosen.run(StudyRun.prepare(opts))


__all__ = ["STRATEGIES", "Strategy", "StrategyError", "run_search", "strategy"]
