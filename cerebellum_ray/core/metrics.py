"""Every metric a study measures, defined once: its name, the store column(s) it lives in, which way is better,
how people read it, and whether a space may optimize it.

Everything else derives from `METRICS`: the space schema's list of objectives (`core.schema`), a space's
directions (`formats.space`), the values a trial reports to Ray Tune and Optuna (`study.trial`), the objective
vectors read back from stored rows for known results and warm starts (`study.search`), the fronts' columns and
directions (`predict.fronts`), axis labels and units (`results.plots`) and the command line's metric choices.

Names and columns differ where the store keeps a raw quantity: `size` is `size_bytes` (reported and told to
Optuna in GB, the column divided by `report_divisor`), `mc` is `mc_acc`, `speed` is `pp_tokens_per_s` (the
prompt-processing tokens per second measured while the text was scored). A trial's reports and its stored row
both hold every metric under its name (`named_values`), so a row read back gives the same objective vector the
trial reported (`objective_values`).

Standard library only: the command line imports it for `--help`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CerebellumError

DIRECTIONS = ("min", "max")
# display unit -> factor from the stored value (bytes, fraction) to the displayed one. Units not listed: 1.
UNIT_SCALE: dict[str, float] = {"GB": 1e-9, "%": 100.0}


class MetricError(CerebellumError):
    """A metric name that is not in the registry, or not allowed where it was given; the message lists the
    choices."""


@dataclass(frozen=True)
class Metric:
    """One measured quantity of a trial (see the module docstring)."""

    name: str  # what spaces, the command line, trial reports and Optuna call it
    column: str  # the result store's column holding it (core.store.COLUMNS)
    direction: str  # "min" or "max": which way is better
    label: str  # an axis label for people
    unit: str = ""  # the display unit (UNIT_SCALE converts the stored value to it)
    se_column: str | None = None  # the store column of its standard error, where it has one
    objective: bool = False  # a space may list it under `objectives`
    size_axis: bool = False  # a measure of the file's size (size, bpw): fronts of two qualities show it as colour
    running: bool = False  # reported after every chunk with its running standard error (early stopping watches it)
    needs: str | None = None  # what the evaluation must score besides the text: "code" (corpus), "humaneval", "mc"
    report_divisor: float = 1.0  # value under `name` in a trial's reports (and told to Optuna) = column / this

    @property
    def late(self) -> bool:
        """Scored once per trial, after the text (code corpus, HumanEval, MC): None in the running reports."""
        return self.needs is not None

    @property
    def sign(self) -> float:
        """+1 for "min", -1 for "max": multiplying by it makes smaller better."""
        return 1.0 if self.direction == "min" else -1.0

    @property
    def display_scale(self) -> float:
        return UNIT_SCALE.get(self.unit, 1.0)

    def stored(self, row: Mapping[str, Any]) -> float | None:
        """The row's stored value (column units), or None when it is missing or NaN."""
        return _finite(row.get(self.column))

    def stored_se(self, row: Mapping[str, Any]) -> float | None:
        """The row's stored standard error, or None (missing, NaN, or a metric without one)."""
        return _finite(row.get(self.se_column)) if self.se_column else None

    def value(self, row: Mapping[str, Any]) -> float | None:
        """The value under `name` (the unit trials report and Optuna is told) from a store row or a trial report
        that holds the column; None when the column is missing."""
        v = self.stored(row)
        return None if v is None else v / self.report_divisor


def _finite(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return None if math.isnan(v) else v


# The registry, in the order the command line lists it (`pareto --x` choices). Every entry's column is a column of
# core.store.COLUMNS (tests/test_metrics.py checks it).
METRICS: tuple[Metric, ...] = (
    Metric("size", "size_bytes", "min", "file size", "GB", objective=True, size_axis=True, report_divisor=1e9),
    Metric("bpw", "bpw", "min", "bits per weight", "bpw", objective=True, size_axis=True),
    Metric("kld", "kld", "min", "mean KL divergence vs reference", "nats", se_column="kld_se", objective=True,
           running=True),
    Metric("kld_p999", "kld_p999", "min", "99.9th percentile KL divergence", "nats"),
    Metric("same_top", "same_top", "max", "same top token as the reference", "%", se_column="same_top_se"),
    Metric("ppl", "ppl", "min", "perplexity", "", se_column="ppl_se", objective=True, running=True),
    Metric("kld_code", "kld_code", "min", "mean KL divergence on code", "nats", se_column="kld_code_se",
           objective=True, needs="code"),
    Metric("ppl_code", "ppl_code", "min", "perplexity on code", "", se_column="ppl_code_se", objective=True,
           needs="code"),
    Metric("humaneval", "humaneval", "max", "HumanEval pass@1", "%", se_column="humaneval_se", objective=True,
           needs="humaneval"),
    Metric("mc", "mc_acc", "max", "multiple-choice accuracy", "%", se_column="mc_acc_se", objective=True, needs="mc"),
    # `speed` keeps the meaning it always had: tokens per second of the scoring pass over the evaluation text (the
    # trial's own context and batch), not a standard benchmark
    Metric("speed", "pp_tokens_per_s", "max", "prompt processing speed", "tokens/s", objective=True),
    Metric("gen_speed", "gen_tokens_per_s", "max", "generation speed", "tokens/s"),
    # Benchmark speeds measured as llama-bench measures them go here, once the store has their columns:
    #   Metric("pp_speed", "pp512_tokens_per_s", "max", "prompt processing (pp512)", "tokens/s", objective=True),
    #   Metric("tg_speed", "tg128_tokens_per_s", "max", "token generation (tg128)", "tokens/s", objective=True),
    # (a column in core.store.COLUMNS, the measurement in the trial; everything else follows from the entry)
)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
OBJECTIVE_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS if m.objective)
SIZE_AXES: tuple[str, ...] = tuple(m.name for m in METRICS if m.size_axis)
LATE_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS if m.late)


def metric(name: str, *, objective: bool = False) -> Metric:
    """The registered metric `name`; MetricError naming the choices when there is none (or, with `objective`,
    when it may not be a space's objective)."""
    return check((name,), objective=objective)[0]


def check(names: Iterable[str], *, objective: bool = False, what: str = "metric") -> tuple[Metric, ...]:
    """The metrics of `names`, in order; MetricError for the first unknown one (`objective`: for the first that
    may not be an objective), listing the choices."""
    choices = OBJECTIVE_NAMES if objective else NAMES
    out = []
    for name in names:
        if name not in choices:
            raise MetricError(f"unknown {what} {name!r}; choose from {', '.join(choices)}")
        out.append(BY_NAME[name])
    return tuple(out)


def directions(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(m.direction for m in check(names))


def columns(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(m.column for m in check(names))


def objective_values(row: Mapping[str, Any], names: Sequence[str]) -> list[float] | None:
    """The objective vector of a store row (or a trial report), each value in the unit trials report; None when
    the row lacks any of them."""
    values = [m.value(row) for m in check(names)]
    return None if any(v is None for v in values) else [float(v) for v in values]


def named_values(row: Mapping[str, Any]) -> dict[str, float]:
    """Every metric the row holds, under its name (size in GB, mc from mc_acc, speed from pp_tokens_per_s, ...):
    what a trial adds to the store columns it reports, and what a stored row gives back to Tune."""
    out = {}
    for m in METRICS:
        v = m.value(row)
        if v is not None:
            out[m.name] = v
    return out


__all__ = [
    "BY_NAME", "DIRECTIONS", "LATE_NAMES", "METRICS", "Metric", "MetricError", "NAMES", "OBJECTIVE_NAMES", "SIZE_AXES",
    "UNIT_SCALE", "check", "columns", "directions", "metric", "named_values", "objective_values",
]
