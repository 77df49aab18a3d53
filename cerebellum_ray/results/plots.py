"""Pictures of Pareto fronts: a PNG (matplotlib) and an offline HTML page (plotly). Only drawing happens here; every
number comes from the `Front` records of predict/fronts.py, every label, unit and direction from the metric registry
(core/metrics.py). Neither back end is imported until a plot is asked for.

Both pictures show the first two objectives as x and y. A third objective is the markers' colour in the PNG (a
colour bar) and a third axis in the HTML page; `colour` paints a two-objective plot by a metric that is not an
objective (size as colour on a PPL-vs-code front).

Both mark each front's knee (fronts.knee_point, the row `export --pick knee` takes), name every front point by its
trial id (in the HTML a legend entry and a button turn the names off), draw dominated trials as open markers that
stay readable, and give sizes in the unit the model's size reads in (MB for a 5 MB model, GB for 12 GB).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import metrics
from ..core.compat import former_names
from ..core.units import size_unit
from ..predict.fronts import Front, check_front_objectives, knee_point, order_front, rows_as_dicts

__all__ = ["html_figure", "plot_html", "plot_png", "png_figure"]


_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22"]
_MARKERS_MPL = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
_MARKERS_PLOTLY = ["circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "triangle-left",
                   "triangle-right", "hexagon"]
_MARKERS_PLOTLY_3D = ["circle", "square", "diamond", "cross", "x", "circle-open", "square-open", "diamond-open"]
_REFERENCE_COLOUR = "#222222"
_KNEE_COLOUR = "#000000"
_DOMINATED_ALPHA = 0.55  # open markers at this opacity: visible, and still plainly behind the front

Units = Mapping[str, tuple[str, float]]  # metric -> (display unit, factor from the stored value); others: registry's


# ---------------------------------------------------------------------------------------------------------------
# What both back ends show
# ---------------------------------------------------------------------------------------------------------------

def _units(rows: Sequence[Mapping]) -> dict[str, tuple[str, float]]:
    """Display units that follow the rows: sizes in the decimal unit the largest size shown reads in (GB for a
    12 GB model, MB for a 5 MB one, never 0.005 GB); every other metric as the registry has it."""
    sizes = [float(r["size_bytes"]) for r in rows if r.get("size_bytes")]
    if not sizes:
        return {}
    unit, scale = size_unit(max(sizes))
    return {"size": (unit, 1.0 / scale)}


def _unit(name: str, units: Units | None) -> tuple[str, float]:
    m = metrics.metric(name)
    return (units or {}).get(name, (m.unit, m.display_scale))


def _axis_label(name: str, log: bool = False, direction: bool = True, units: Units | None = None) -> str:
    m = metrics.metric(name)
    unit = _unit(name, units)[0]
    text = f"{m.label} ({unit})" if unit and unit != m.label else m.label
    text += ", log scale" if log else ""
    if not direction:
        return text
    return text + (" — lower is better" if m.direction == "min" else " — higher is better")


def _log_ticks(values: np.ndarray) -> list[float]:
    """1-2-5 steps covering the positive `values` (plotly labels log axes with bare digits otherwise)."""
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return []
    lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
    ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 2, 5)]
    return [t for t in ticks if values.min() / 2.5 <= t <= values.max() * 2.5]


def _display(rows: Sequence[Mapping], name: str, units: Units | None = None) -> np.ndarray:
    """Metric `name` of rows in display units (`units`, else the registry's); missing values as NaN."""
    m = metrics.metric(name)
    scale = _unit(name, units)[1]
    return np.array([np.nan if r.get(m.column) is None else float(r[m.column]) * scale for r in rows], dtype=float)


def _point_name(row: Mapping) -> str:
    """What a front point is called on a plot: its trial id (what export --trial takes)."""
    return str(row.get("trial_id") or row.get("label") or "")


def _knee(front: Front) -> Mapping | None:
    return knee_point(front) if front.points else None


def _legend_name(front: Front) -> str:
    n_all = len(front.points) + len(front.dominated)
    return f"{front.study}: {len(front.points)} of {n_all}, HV {front.hypervolume_fraction:.3f}"


def _reference_name(row: Mapping) -> str:
    return str(row.get("label") or row.get("trial_id") or "reference")


def _check_plot_args(fronts: Sequence[Front], objectives: Sequence[str] | None) -> tuple[str, ...]:
    if not fronts:
        raise ValueError("nothing to plot: fronts is empty.")
    objectives = check_front_objectives(objectives if objectives is not None else fronts[0].objectives)
    for f in fronts:
        if f.objectives != objectives:
            raise ValueError(f"front {f.study!r} has objectives {f.objectives}, the plot asks for {objectives}.")
    if len(objectives) > 3:
        raise ValueError(f"plots show 2 or 3 objectives, but got {list(objectives)}.")
    return objectives


def _log_axes(names: Sequence[str], log_scale: Collection[str], rows: Sequence[Mapping]) -> dict[str, bool]:
    """Which of `names` get a log axis: asked for, and every value to show is positive."""
    out = {}
    for name in names:
        values = _display(rows, name)
        values = values[~np.isnan(values)]
        out[name] = name in log_scale and values.size > 0 and bool((values > 0).all())
    return out


def _title(fronts: Sequence[Front], objectives: Sequence[str]) -> str:
    label = [metrics.metric(o).label for o in objectives]
    text = f"Pareto fronts per {fronts[0].group_by}: {label[0]} / {label[1]}"
    return text + (f" (colour: {label[2]})" if len(objectives) == 3 else "")


def _split_off_scale(refs: list[dict], fronts: Sequence[Front], objectives: Sequence[str],
                     log_scale: Collection[str]) -> tuple[list[dict], list[str]]:
    """Reference rows that would stretch a log axis by more than 100x below every trial (e.g. the reference model
    itself, KLD ~0) are left off the plot and named in the caption instead."""
    off = []
    trials = [r for f in fronts for r in (*f.points, *f.dominated)]
    for o in objectives:
        if o not in log_scale:
            continue
        col = metrics.metric(o).column
        values = [r[col] for r in trials if r.get(col) is not None and r[col] > 0]
        if not values:
            continue
        floor = min(values) / 100
        for r in refs:
            if r.get(col) is not None and r[col] < floor:
                off.append(f"{_reference_name(r)} ({o} {r[col]:.2g})")
    names = {x.split(" (")[0] for x in off}
    shown = [r for r in refs if _reference_name(r) not in names]
    return shown, off


def _hv_note(fronts: Sequence[Front], off_scale: Sequence[str] = (), units: Units | None = None) -> str:
    """One line saying what HV means, with the actual reference point in display units."""
    f = fronts[0]
    ref = ", ".join(f"{v * _unit(o, units)[1]:.4g} {_unit(o, units)[0]}".strip()
                    for o, v in zip(f.objectives, f.reference_point))
    skipped = sum(x.n_skipped for x in fronts)
    return (f"HV = share of the box from the best value of each objective to the reference point ({ref}; "
            "by default the worst value + 10% of the range) that a front dominates."
            + (f" {skipped} rows not complete or missing an objective are left out." if skipped else "")
            + (f" Off scale, not drawn: {', '.join(off_scale)}." if off_scale else ""))


def _write_atomically(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, then move it into place (atomic.atomic_path; a missing
    directory is refused, not created)."""
    from ..core.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        write(str(tmp))
    return path


def _step_order(front: Front, x_name: str, y_name: str) -> list[int]:
    """Front point indices along x from best to worst: drawn as a post-step, the line is the attainment boundary."""
    xy = np.c_[_display(front.points, x_name), _display(front.points, y_name)]
    return [int(k) for k in order_front(xy, metrics.directions((x_name, y_name)))]


def _in_step_order(front: Front, x_name: str, y_name: str) -> list[dict]:
    return [front.points[k] for k in _step_order(front, x_name, y_name)]


def _plot_inputs(fronts, reference_rows, objectives, log_scale):
    """(objectives, reference rows drawn, reference rows off a log scale, every row drawn, display units) for both
    plotters."""
    objectives = _check_plot_args(fronts, objectives)
    refs, off_scale = _split_off_scale(rows_as_dicts(reference_rows or []), fronts, objectives, log_scale)
    shown = [r for f in fronts for r in (*f.points, *f.dominated)] + refs
    return objectives, refs, off_scale, shown, _units(shown)


@dataclass(frozen=True)
class _ColourScale:
    """Markers filled by a metric's value (display units) from `low` to `high` (None: no row shown has it)."""

    metric: str
    low: float | None
    high: float | None

    @property
    def lower_is_better(self) -> bool:
        return metrics.metric(self.metric).direction == "min"


def _colour_scale(rows: Sequence[Mapping], name: str | None, units: Units | None = None) -> _ColourScale | None:
    if not name:
        return None
    values = _display(rows, name, units)
    values = values[~np.isnan(values)]
    if not values.size:
        return _ColourScale(name, None, None)
    return _ColourScale(name, float(values.min()), float(values.max()))


# ---------------------------------------------------------------------------------------------------------------
# PNG (matplotlib, Agg canvas, no pyplot state)
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _MplPaint:
    """A colour scale as matplotlib takes it; one norm shared by every scatter and the colour bar."""

    metric: str
    norm: Any  # matplotlib.colors.Normalize
    cmap: str


def _mpl_paint(scale: _ColourScale | None) -> _MplPaint | None:
    if scale is None:
        return None
    from matplotlib.colors import Normalize

    norm = Normalize(vmin=scale.low, vmax=scale.high) if scale.low is not None else Normalize(0, 1)
    return _MplPaint(scale.metric, norm, "viridis_r" if scale.lower_is_better else "viridis")  # bright = better


def plot_png(
    fronts: Sequence[Front],
    reference_rows: Any,
    path: str | os.PathLike,
    objectives: Sequence[str] | None = None,
    log_scale: Collection[str] = ("kld",),
    title: str | None = None,
    size_inches: tuple[float, float] = (11.0, 7.0),
    dpi: int = 120,
    colour: str | None = None,
) -> Path:
    """Draw fronts (and labelled reference rows such as llama.cpp presets) to a PNG with matplotlib (Agg).

    Two objectives: x = first, y = second; each front a coloured step line with its own marker, its points named by
    trial id, its knee ringed, its dominated rows as open markers. Three: the same 2-D projection of the first two,
    the third as marker colour (colour bar); each front keeps its marker and an edge in its colour. `colour` (a
    registered metric, e.g. "bpw") colours the markers of a two-objective plot the same way without being an
    objective. Objectives in `log_scale` get a log axis when all values shown are positive. Written atomically;
    returns the path.
    """
    fig = png_figure(fronts, reference_rows, objectives, log_scale, title, size_inches, dpi, colour)
    return _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


def png_figure(fronts: Sequence[Front], reference_rows: Any, objectives: Sequence[str] | None = None,
               log_scale: Collection[str] = ("kld",), title: str | None = None,
               size_inches: tuple[float, float] = (11.0, 7.0), dpi: int = 120, colour: str | None = None):
    """The matplotlib Figure plot_png saves."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    objectives, refs, off_scale, shown, units = _plot_inputs(fronts, reference_rows, objectives, log_scale)
    x_name, y_name = objectives[0], objectives[1]
    logs = _log_axes(objectives[:2], log_scale, shown)
    paint = _mpl_paint(_colour_scale(shown, objectives[2] if len(objectives) == 3 else colour, units))

    fig = Figure(figsize=size_inches, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    handles, point_labels, knee_labels = [], [], []
    for i, front in enumerate(fronts):
        handle, names, knee = _png_front(ax, front, i, x_name, y_name, paint, steps=len(objectives) == 2,
                                         units=units)
        handles.append(handle)
        point_labels += names
        knee_labels += knee
    handles.append(Line2D([], [], linestyle="", marker="o", markersize=8, markerfacecolor="none",
                          markeredgecolor="#666666", alpha=_DOMINATED_ALPHA, label="dominated trials"))
    handles.append(Line2D([], [], linestyle="", marker="o", markersize=13, markerfacecolor="none",
                          markeredgecolor=_KNEE_COLOUR, markeredgewidth=1.8, label="knee (export --pick knee)"))
    labels = []
    if refs:
        handle, labels = _png_references(ax, refs, x_name, y_name, paint, units)
        handles.append(handle)
    if paint is not None:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=paint.norm, cmap=paint.cmap), ax=ax)
        bar.set_label(_axis_label(paint.metric, units=units))
    _png_axes(ax, x_name, y_name, logs, units)
    ax.legend(handles=handles, loc="best", fontsize=9, title_fontsize=9,
              title=f"front per {fronts[0].group_by}: points on front of all, HV")
    ax.set_title(title or _title(fronts, objectives))
    fig.text(0.005, 0.002, _hv_note(fronts, off_scale, units), fontsize=7, color="#555555", ha="left", va="bottom",
             wrap=True)
    fig.get_layout_engine().set(h_pad=0.2, rect=(0, 0.05, 1, 0.95))  # the bottom strip holds the note
    if labels or point_labels:
        _spread_labels(fig, ax, labels + point_labels, fixed=knee_labels)
    return fig


def _png_front(ax, front: Front, i: int, x_name: str, y_name: str, paint: _MplPaint | None, steps: bool,
               units: Units | None = None):
    """One front: its dominated rows as open markers, its points (a step line when `steps`) filled by `paint` or
    in the front's colour and named by trial id, its knee ringed; returns (legend handle, point names, knee
    label)."""
    from matplotlib.lines import Line2D

    front_colour, marker = _COLOURS[i % len(_COLOURS)], _MARKERS_MPL[i % len(_MARKERS_MPL)]
    dx, dy = _display(front.dominated, x_name, units), _display(front.dominated, y_name, units)
    ax.scatter(dx, dy, s=26, marker=marker, facecolors="none", edgecolors=front_colour, alpha=_DOMINATED_ALPHA,
               linewidths=0.9, zorder=1)
    ordered = _in_step_order(front, x_name, y_name)
    x, y = _display(ordered, x_name, units), _display(ordered, y_name, units)
    if steps:
        ax.step(x, y, where="post", color=front_colour, linewidth=1.6, alpha=0.9, zorder=2)
    if paint is None:
        ax.scatter(x, y, s=40, marker=marker, color=front_colour, edgecolors="white", linewidths=0.6, zorder=3)
        handle = Line2D([], [], color=front_colour, marker=marker, markeredgecolor="white", label=_legend_name(front))
    else:
        ax.scatter(x, y, c=_display(ordered, paint.metric, units), cmap=paint.cmap, norm=paint.norm,
                   s=55, marker=marker, edgecolors=front_colour, linewidths=1.6, zorder=3)
        # the fill is the colour-bar value, so the legend shows only the front's marker and edge colour
        handle = Line2D([], [], linestyle="", marker=marker, markersize=8, markerfacecolor="white",
                        markeredgecolor=front_colour, markeredgewidth=1.6, label=_legend_name(front))
    names = [ax.annotate(_point_name(r), (xv, yv), xytext=(5, -9), textcoords="offset points", fontsize=6.5,
                         color=front_colour, zorder=5,
                         bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6})
             for r, xv, yv in zip(ordered, x, y) if not (np.isnan(xv) or np.isnan(yv))]
    knee_label = []
    knee = _knee(front)
    if knee is not None:
        kx, ky = _display([knee], x_name, units)[0], _display([knee], y_name, units)[0]
        ax.scatter([kx], [ky], s=230, marker="o", facecolors="none", edgecolors=_KNEE_COLOUR, linewidths=1.8,
                   zorder=4)
        knee_label.append(ax.annotate("knee", (kx, ky), xytext=(-9, 9), textcoords="offset points", fontsize=9,
                                      fontweight="bold", color=_KNEE_COLOUR, ha="right", zorder=6))
    return handle, names, knee_label


def _png_references(ax, refs: Sequence[Mapping], x_name: str, y_name: str, paint: _MplPaint | None,
                    units: Units | None = None):
    """Reference rows as labelled stars; returns (legend handle, the labels to spread apart)."""
    from matplotlib.lines import Line2D

    rx, ry = _display(refs, x_name, units), _display(refs, y_name, units)
    if paint is None:
        ax.scatter(rx, ry, s=110, marker="*", color=_REFERENCE_COLOUR, zorder=4)
    else:
        ax.scatter(rx, ry, c=_display(refs, paint.metric, units), cmap=paint.cmap, norm=paint.norm, s=150,
                   marker="*", edgecolors=_REFERENCE_COLOUR, linewidths=1.0, zorder=4)
    handle = Line2D([], [], linestyle="", marker="*", markersize=12, label="reference points",
                    markerfacecolor=_REFERENCE_COLOUR if paint is None else "white",
                    markeredgecolor=_REFERENCE_COLOUR)
    labels = [ax.annotate(_reference_name(r), (xv, yv), xytext=_LABEL_OFFSETS[0], textcoords="offset points",
                          fontsize=9, color=_REFERENCE_COLOUR, zorder=5,
                          bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
              for r, xv, yv in zip(refs, rx, ry) if not (np.isnan(xv) or np.isnan(yv))]
    return handle, labels


def _png_axes(ax, x_name: str, y_name: str, logs: Mapping[str, bool], units: Units | None = None) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log" if logs[x_name] else "linear")
    ax.set_yscale("log" if logs[y_name] else "linear")
    for axis, name in ((ax.xaxis, x_name), (ax.yaxis, y_name)):
        if logs[name]:
            # plain numbers at 1-2-5 steps: "0.02" reads better than "2x10^-2", and one decade has several labels
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(_axis_label(x_name, logs[x_name], units=units))
    ax.set_ylabel(_axis_label(y_name, logs[y_name], units=units))
    ax.grid(True, which="major", alpha=0.3)


# where a reference point's name may go, in points from the star: right-above first, then around it
_LABEL_OFFSETS = ((7, 6), (7, -14), (-7, 6), (-7, -14), (7, 18), (7, -26), (-7, 18), (-7, -26))


def _spread_labels(fig, ax, labels, fixed=()) -> None:
    """Move each label to the first offset where it overlaps no label placed before it (nearby presets, e.g. Q2_K
    and Q3_K_S at almost the same size and KLD, would otherwise print over each other); `fixed` labels stay where
    they are and are avoided too."""
    fig.canvas.draw()  # the final layout: label extents in display pixels
    placed = [label.get_window_extent() for label in fixed]
    for label in labels:
        for dx, dy in _LABEL_OFFSETS:
            label.set_position((dx, dy))
            label.set_horizontalalignment("left" if dx > 0 else "right")
            box = label.get_window_extent()
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(label.get_window_extent())



# ---------------------------------------------------------------------------------------------------------------
# HTML (plotly, self-contained)
# ---------------------------------------------------------------------------------------------------------------

def plot_html(
    fronts: Sequence[Front],
    reference_rows: Any,
    path: str | os.PathLike,
    objectives: Sequence[str] | None = None,
    log_scale: Collection[str] = ("kld",),
    title: str | None = None,
    colour: str | None = None,
) -> Path:
    """Draw fronts and labelled reference rows to a self-contained HTML file (plotly.js inline, works offline).

    Two objectives: step lines as in `plot_png`, with hover text naming each trial; `colour` (a metric, e.g. "bpw")
    colours their markers. Three: a 3-D scatter (front points solid, dominated as open markers, reference points
    labelled). Both: the knee ringed, front points named by trial id (the legend entry "trial ids" or the buttons
    above the plot hide them). Written atomically; returns the path.
    """
    html = html_figure(fronts, reference_rows, objectives, log_scale, title, colour).to_html(
        full_html=True, include_plotlyjs=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(html)

    return _write_atomically(path, write)


def html_figure(fronts: Sequence[Front], reference_rows: Any, objectives: Sequence[str] | None = None,
                log_scale: Collection[str] = ("kld",), title: str | None = None, colour: str | None = None):
    """The plotly Figure plot_html writes."""
    import plotly.graph_objects as go

    objectives, refs, off_scale, shown, units = _plot_inputs(fronts, reference_rows, objectives, log_scale)
    logs = _log_axes(objectives, log_scale, shown)
    three_d = len(objectives) == 3
    fig = go.Figure()
    if three_d:
        _html_traces_3d(fig, fronts, refs, objectives, units)
        annotations = []
    else:
        annotations = _html_traces_2d(fig, fronts, refs, objectives, logs, _colour_scale(shown, colour, units),
                                      units)
    axes = {o: _html_axis(o, logs[o], shown, direction=not three_d, units=units) for o in objectives}
    note = _hv_note(fronts, off_scale, units)
    if three_d:
        note += "<br>" + "; ".join(
            f"{metrics.metric(o).label}: {'lower' if metrics.metric(o).direction == 'min' else 'higher'} is better"
            for o in objectives)
    names = [i for i, t in enumerate(fig.data) if str(t.name).endswith(": trial ids")]
    toggle = {"type": "buttons", "direction": "right", "x": 1.0, "xanchor": "right", "y": 1.02, "yanchor": "bottom",
              "showactive": False, "buttons": [
                  {"label": "trial ids off", "method": "restyle", "args": [{"visible": False}, names]},
                  {"label": "trial ids on", "method": "restyle", "args": [{"visible": True}, names]}]}
    fig.update_layout(
        title={"text": title or _title(fronts, objectives)},
        template="plotly_white",
        legend={"title": {"text": f"front per {fronts[0].group_by} (click an entry to hide it)"}},
        margin={"b": 90, "t": 110},
        height=800,
        updatemenus=[toggle],
    )
    caption = {"text": note, "xref": "paper", "yref": "paper", "x": 0, "y": -0.13 if not three_d else -0.08,
               "showarrow": False, "xanchor": "left", "align": "left", "font": {"size": 10, "color": "#555555"}}
    if three_d:
        fig.update_layout(
            scene={"xaxis": axes[objectives[0]], "yaxis": axes[objectives[1]], "zaxis": axes[objectives[2]],
                   "aspectmode": "cube", "camera": {"eye": {"x": 1.7, "y": 1.7, "z": 0.7}}},
            annotations=[caption])
    else:
        fig.update_layout(xaxis=axes[objectives[0]], yaxis=axes[objectives[1]], annotations=[caption, *annotations])
    return fig


def _hover(rows: Sequence[Mapping], names: Sequence[str], units: Units | None = None) -> list[str]:
    """Hover text per row: its label, study, strategy and trial id, and the metrics `names` in display units."""
    out = []
    for r in rows:
        parts = [f"<b>{r.get('label') or r.get('trial_id')}</b>", f"{r.get('study')} / {r.get('strategy')}",
                 f"trial {r.get('trial_id')}"]
        for o in names:
            v = _display([r], o, units)[0]
            parts.append(f"{metrics.metric(o).label}: {'n/a' if np.isnan(v) else f'{v:.5g}'} {_unit(o, units)[0]}")
        out.append("<br>".join(parts))
    return out


def _coords(rows: Sequence[Mapping], objectives: Sequence[str], units: Units | None = None) -> dict:
    return {k: _display(rows, o, units) for k, o in zip(("x", "y", "z"), objectives)}


def _html_axis(name: str, log: bool, shown: Sequence[Mapping], direction: bool, units: Units | None = None) -> dict:
    axis = {"title": {"text": _axis_label(name, log, direction=direction, units=units)},
            "type": "log" if log else "linear"}
    if log:
        ticks = _log_ticks(_display(shown, name, units))
        axis.update(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return axis


def _html_marks(fig, front: Front, ordered: Sequence[Mapping], objectives: Sequence[str], front_colour: str,
                units: Units | None, three_d: bool) -> None:
    """A front's trial ids (a text trace the legend and the buttons hide) and its knee, ringed."""
    import plotly.graph_objects as go

    scatter = go.Scatter3d if three_d else go.Scatter
    name = _legend_name(front)
    fig.add_trace(scatter(
        **_coords(ordered, objectives, units), mode="text", text=[_point_name(r) for r in ordered],
        textposition="bottom right", textfont={"size": 9, "color": front_colour}, hoverinfo="skip",
        name=f"{front.study}: trial ids", legendgroup=f"{name} ids"))
    knee = _knee(front)
    if knee is None:
        return
    fig.add_trace(scatter(
        **_coords([knee], objectives, units), mode="markers+text", text=["knee"], textposition="top right",
        textfont={"size": 12, "color": _KNEE_COLOUR},
        marker={"size": 9 if three_d else 18, "color": _KNEE_COLOUR, "symbol": "circle-open",
                "line": {"color": _KNEE_COLOUR, "width": 2}},  # an open symbol is stroked in its colour
        name=f"{front.study}: knee (export --pick knee)", legendgroup=name,
        hovertext=[f"knee: {_point_name(knee)}"], hoverinfo="text"))


def _html_traces_2d(fig, fronts: Sequence[Front], refs: Sequence[Mapping], objectives: Sequence[str],
                    logs: Mapping[str, bool], scale: _ColourScale | None, units: Units | None = None) -> list[dict]:
    """Each front as a step line (markers filled by `scale`, or in its colour) over its dominated rows (open
    markers), named points and a ringed knee, the reference points as stars; returns the reference points' labels
    (annotations)."""
    import plotly.graph_objects as go

    names = (*objectives, *([scale.metric] if scale and scale.metric not in objectives else []))
    for i, front in enumerate(fronts):
        front_colour = _COLOURS[i % len(_COLOURS)]
        name = _legend_name(front)
        marker = _MARKERS_PLOTLY[i % len(_MARKERS_PLOTLY)]
        fig.add_trace(go.Scatter(
            **_coords(front.dominated, objectives, units), mode="markers",
            name=f"{front.study}: {len(front.dominated)} dominated", legendgroup=name,
            marker={"size": 7, "color": front_colour, "opacity": _DOMINATED_ALPHA, "symbol": f"{marker}-open",
                    "line": {"width": 1.2}},
            hovertext=_hover(front.dominated, names, units), hoverinfo="text"))
        ordered = _in_step_order(front, objectives[0], objectives[1])
        fill = _html_fill(scale, ordered, first=i == 0, units=units) if scale else {"color": front_colour}
        fig.add_trace(go.Scatter(
            **_coords(ordered, objectives, units), mode="lines+markers",
            line={"shape": "hv", "color": front_colour, "width": 2}, name=name, legendgroup=name,
            marker={"size": 9, **fill, "symbol": marker, "line": {"color": front_colour if scale else "white",
                                                                    "width": 1.5 if scale else 1}},
            hovertext=_hover(ordered, names, units), hoverinfo="text"))
        _html_marks(fig, front, ordered, objectives, front_colour, units, three_d=False)
    if not refs:
        return []
    fig.add_trace(go.Scatter(
        **_coords(refs, objectives, units), mode="markers", name="reference points",
        marker={"size": 14, "color": _REFERENCE_COLOUR, "symbol": "star"},
        hovertext=_hover(refs, names, units), hoverinfo="text"))
    # annotations rather than trace text: they get a background, so lines behind them stay readable
    annotations = []
    xy = _coords(refs, objectives, units)
    for label, xv, yv in zip((_reference_name(r) for r in refs), xy["x"], xy["y"]):
        if np.isnan(xv) or np.isnan(yv):
            continue
        annotations.append({
            "x": math.log10(xv) if logs[objectives[0]] else xv,
            "y": math.log10(yv) if logs[objectives[1]] else yv,
            "text": label, "showarrow": False, "xanchor": "left", "yanchor": "bottom", "xshift": 6,
            "yshift": 4, "bgcolor": "rgba(255,255,255,0.75)", "font": {"size": 12, "color": _REFERENCE_COLOUR},
        })
    return annotations


def _html_fill(scale: _ColourScale, rows: Sequence[Mapping], first: bool, units: Units | None = None) -> dict:
    """Marker fill by the colour metric; the first front's trace carries the colour bar."""
    span = {} if scale.low is None else {"cmin": scale.low, "cmax": scale.high}
    return {"color": _display(rows, scale.metric, units), **span, "colorscale": "Viridis", "showscale": first,
            "reversescale": scale.lower_is_better,
            "colorbar": {"title": {"text": _axis_label(scale.metric, direction=False, units=units)}}}


def _html_traces_3d(fig, fronts: Sequence[Front], refs: Sequence[Mapping], objectives: Sequence[str],
                    units: Units | None = None) -> None:
    """Each front's points solid over its dominated rows (open markers), named, its knee ringed, the reference
    points labelled, in 3-D."""
    import plotly.graph_objects as go

    for i, front in enumerate(fronts):
        front_colour = _COLOURS[i % len(_COLOURS)]
        name = _legend_name(front)
        marker = _MARKERS_PLOTLY_3D[i % len(_MARKERS_PLOTLY_3D)]
        fig.add_trace(go.Scatter3d(
            **_coords(front.dominated, objectives, units), mode="markers",
            name=f"{front.study}: {len(front.dominated)} dominated", legendgroup=name,
            marker={"size": 3.5, "color": front_colour, "opacity": _DOMINATED_ALPHA, "symbol": "circle-open"},
            hovertext=_hover(front.dominated, objectives, units), hoverinfo="text"))
        fig.add_trace(go.Scatter3d(
            **_coords(front.points, objectives, units), mode="markers", name=name, legendgroup=name,
            marker={"size": 5, "color": front_colour, "symbol": marker, "line": {"color": "white", "width": 0.5}},
            hovertext=_hover(front.points, objectives, units), hoverinfo="text"))
        _html_marks(fig, front, list(front.points), objectives, front_colour, units, three_d=True)
    if refs:
        fig.add_trace(go.Scatter3d(
            **_coords(refs, objectives, units), mode="markers+text", name="reference points",
            text=[_reference_name(r) for r in refs], textposition="top center",
            textfont={"size": 12, "color": _REFERENCE_COLOUR},
            marker={"size": 6, "color": _REFERENCE_COLOUR, "symbol": "diamond"},
            hovertext=_hover(refs, objectives, units), hoverinfo="text"))


__getattr__ = former_names(__name__, {
    "OBJECTIVES": "cerebellum_ray.predict.fronts:OBJECTIVES", "UNIT_SCALE": "cerebellum_ray.core.metrics:UNIT_SCALE",
    "check_objectives": "cerebellum_ray.predict.fronts:check_front_objectives"})
