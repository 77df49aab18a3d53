"""Pictures of Pareto fronts: a PNG (matplotlib) and an offline HTML page (plotly). Only drawing happens here; every
number comes from the `Front` records of predict/fronts.py, every label, unit and direction from the metric registry
(core/metrics.py). Neither back end is imported until a plot is asked for.

Both pictures show the first two objectives as x and y. A third objective is the markers' colour in the PNG (a
colour bar) and a third axis in the HTML page; `colour` paints a two-objective plot by a metric that is not an
objective (size as colour on a PPL-vs-code front).
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
from ..predict.fronts import Front, check_front_objectives, order_front, rows_as_dicts

__all__ = ["plot_html", "plot_png"]


_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22"]
_MARKERS_MPL = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
_MARKERS_PLOTLY = ["circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "triangle-left",
                   "triangle-right", "hexagon"]
_MARKERS_PLOTLY_3D = ["circle", "square", "diamond", "cross", "x", "circle-open", "square-open", "diamond-open"]
_REFERENCE_COLOUR = "#222222"


# ---------------------------------------------------------------------------------------------------------------
# What both back ends show
# ---------------------------------------------------------------------------------------------------------------

def _axis_label(name: str, log: bool = False, direction: bool = True) -> str:
    m = metrics.metric(name)
    text = f"{m.label} ({m.unit})" if m.unit and m.unit != m.label else m.label
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


def _display(rows: Sequence[Mapping], name: str) -> np.ndarray:
    """Metric `name` of rows in display units; missing values as NaN."""
    m = metrics.metric(name)
    return np.array([np.nan if r.get(m.column) is None else float(r[m.column]) * m.display_scale for r in rows],
                    dtype=float)


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


def _hv_note(fronts: Sequence[Front], off_scale: Sequence[str] = ()) -> str:
    """One line saying what HV means, with the actual reference point in display units."""
    f = fronts[0]
    ref = ", ".join(
        f"{v * metrics.metric(o).display_scale:.4g} {metrics.metric(o).unit}".strip()
        for o, v in zip(f.objectives, f.reference_point)
    )
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
    """(objectives, reference rows drawn, reference rows off a log scale, every row drawn) for both plotters."""
    objectives = _check_plot_args(fronts, objectives)
    refs, off_scale = _split_off_scale(rows_as_dicts(reference_rows or []), fronts, objectives, log_scale)
    shown = [r for f in fronts for r in (*f.points, *f.dominated)] + refs
    return objectives, refs, off_scale, shown


@dataclass(frozen=True)
class _ColourScale:
    """Markers filled by a metric's value (display units) from `low` to `high` (None: no row shown has it)."""

    metric: str
    low: float | None
    high: float | None

    @property
    def lower_is_better(self) -> bool:
        return metrics.metric(self.metric).direction == "min"


def _colour_scale(rows: Sequence[Mapping], name: str | None) -> _ColourScale | None:
    if not name:
        return None
    values = _display(rows, name)
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

    Two objectives: x = first, y = second; each front a coloured step line with its own marker, its dominated rows
    faint. Three: the same 2-D projection of the first two, the third as marker colour (colour bar); each front
    keeps its marker and an edge in its colour. `colour` (a registered metric, e.g. "bpw") colours the markers of a
    two-objective plot the same way without being an objective. Objectives in `log_scale` get a log axis when all
    values shown are positive. Written atomically; returns the path.
    """
    from matplotlib.figure import Figure

    objectives, refs, off_scale, shown = _plot_inputs(fronts, reference_rows, objectives, log_scale)
    x_name, y_name = objectives[0], objectives[1]
    logs = _log_axes(objectives[:2], log_scale, shown)
    paint = _mpl_paint(_colour_scale(shown, objectives[2] if len(objectives) == 3 else colour))

    fig = Figure(figsize=size_inches, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    handles = [_png_front(ax, front, i, x_name, y_name, paint, steps=len(objectives) == 2)
               for i, front in enumerate(fronts)]
    labels = []
    if refs:
        handle, labels = _png_references(ax, refs, x_name, y_name, paint)
        handles.append(handle)
    if paint is not None:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=paint.norm, cmap=paint.cmap), ax=ax)
        bar.set_label(_axis_label(paint.metric))
    _png_axes(ax, x_name, y_name, logs)
    ax.legend(handles=handles, loc="best", fontsize=9, title_fontsize=9,
              title=f"front per {fronts[0].group_by}: points on front of all, HV (faint: dominated trials)")
    ax.set_title(title or _title(fronts, objectives))
    fig.text(0.005, 0.002, _hv_note(fronts, off_scale), fontsize=7, color="#555555", ha="left", va="bottom", wrap=True)
    fig.get_layout_engine().set(h_pad=0.2, rect=(0, 0.05, 1, 0.95))  # the bottom strip holds the note
    if refs:
        _spread_labels(fig, ax, labels)
    return _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


def _png_front(ax, front: Front, i: int, x_name: str, y_name: str, paint: _MplPaint | None, steps: bool):
    """One front: its dominated rows faint, its points (a step line when `steps`), filled by `paint` or in the
    front's colour; returns its legend handle."""
    from matplotlib.lines import Line2D

    front_colour, marker = _COLOURS[i % len(_COLOURS)], _MARKERS_MPL[i % len(_MARKERS_MPL)]
    dx, dy = _display(front.dominated, x_name), _display(front.dominated, y_name)
    ax.scatter(dx, dy, s=14, marker=marker, color=front_colour, alpha=0.22, linewidths=0, zorder=1)
    ordered = _in_step_order(front, x_name, y_name)
    x, y = _display(ordered, x_name), _display(ordered, y_name)
    if steps:
        ax.step(x, y, where="post", color=front_colour, linewidth=1.6, alpha=0.9, zorder=2)
    if paint is None:
        ax.scatter(x, y, s=40, marker=marker, color=front_colour, edgecolors="white", linewidths=0.6, zorder=3)
        return Line2D([], [], color=front_colour, marker=marker, markeredgecolor="white", label=_legend_name(front))
    ax.scatter(x, y, c=_display(ordered, paint.metric), cmap=paint.cmap, norm=paint.norm,
               s=55, marker=marker, edgecolors=front_colour, linewidths=1.6, zorder=3)
    # the fill is the colour-bar value, so the legend shows only the front's marker and edge colour
    return Line2D([], [], linestyle="", marker=marker, markersize=8, markerfacecolor="white",
                  markeredgecolor=front_colour, markeredgewidth=1.6, label=_legend_name(front))


def _png_references(ax, refs: Sequence[Mapping], x_name: str, y_name: str, paint: _MplPaint | None):
    """Reference rows as labelled stars; returns (legend handle, the labels to spread apart)."""
    from matplotlib.lines import Line2D

    rx, ry = _display(refs, x_name), _display(refs, y_name)
    if paint is None:
        ax.scatter(rx, ry, s=110, marker="*", color=_REFERENCE_COLOUR, zorder=4)
    else:
        ax.scatter(rx, ry, c=_display(refs, paint.metric), cmap=paint.cmap, norm=paint.norm, s=150, marker="*",
                   edgecolors=_REFERENCE_COLOUR, linewidths=1.0, zorder=4)
    handle = Line2D([], [], linestyle="", marker="*", markersize=12, label="reference points",
                    markerfacecolor=_REFERENCE_COLOUR if paint is None else "white",
                    markeredgecolor=_REFERENCE_COLOUR)
    labels = [ax.annotate(_reference_name(r), (xv, yv), xytext=_LABEL_OFFSETS[0], textcoords="offset points",
                          fontsize=9, color=_REFERENCE_COLOUR, zorder=5,
                          bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
              for r, xv, yv in zip(refs, rx, ry) if not (np.isnan(xv) or np.isnan(yv))]
    return handle, labels


def _png_axes(ax, x_name: str, y_name: str, logs: Mapping[str, bool]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log" if logs[x_name] else "linear")
    ax.set_yscale("log" if logs[y_name] else "linear")
    for axis, name in ((ax.xaxis, x_name), (ax.yaxis, y_name)):
        if logs[name]:
            # plain numbers at 1-2-5 steps: "0.02" reads better than "2x10^-2", and one decade has several labels
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(_axis_label(x_name, logs[x_name]))
    ax.set_ylabel(_axis_label(y_name, logs[y_name]))
    ax.grid(True, which="major", alpha=0.3)


# where a reference point's name may go, in points from the star: right-above first, then around it
_LABEL_OFFSETS = ((7, 6), (7, -14), (-7, 6), (-7, -14), (7, 18), (7, -26), (-7, 18), (-7, -26))


def _spread_labels(fig, ax, labels) -> None:
    """Move each reference label to the first offset where it overlaps no label placed before it (nearby presets,
    e.g. Q2_K and Q3_K_S at almost the same size and KLD, would otherwise print over each other)."""
    fig.canvas.draw()  # the final layout: label extents in display pixels
    placed = []
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
    colours their markers. Three: a 3-D scatter (front points solid, dominated faint, reference points labelled).
    Written atomically; returns the path.
    """
    import plotly.graph_objects as go

    objectives, refs, off_scale, shown = _plot_inputs(fronts, reference_rows, objectives, log_scale)
    logs = _log_axes(objectives, log_scale, shown)
    three_d = len(objectives) == 3
    fig = go.Figure()
    if three_d:
        _html_traces_3d(fig, fronts, refs, objectives)
        annotations = []
    else:
        annotations = _html_traces_2d(fig, fronts, refs, objectives, logs, _colour_scale(shown, colour))
    axes = {o: _html_axis(o, logs[o], shown, direction=not three_d) for o in objectives}
    note = _hv_note(fronts, off_scale)
    if three_d:
        note += "<br>" + "; ".join(
            f"{metrics.metric(o).label}: {'lower' if metrics.metric(o).direction == 'min' else 'higher'} is better"
            for o in objectives)
    fig.update_layout(
        title={"text": title or _title(fronts, objectives)},
        template="plotly_white",
        legend={"title": {"text": f"front per {fronts[0].group_by} (faint: dominated trials)"}},
        margin={"b": 90},
        height=800,
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
    html = fig.to_html(full_html=True, include_plotlyjs=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(html)

    return _write_atomically(path, write)


def _hover(rows: Sequence[Mapping], names: Sequence[str]) -> list[str]:
    """Hover text per row: its label, study and strategy, and the metrics `names` in display units."""
    out = []
    for r in rows:
        parts = [f"<b>{r.get('label') or r.get('trial_id')}</b>", f"{r.get('study')} / {r.get('strategy')}"]
        for o in names:
            v = _display([r], o)[0]
            m = metrics.metric(o)
            parts.append(f"{m.label}: {'n/a' if np.isnan(v) else f'{v:.5g}'} {m.unit}")
        out.append("<br>".join(parts))
    return out


def _coords(rows: Sequence[Mapping], objectives: Sequence[str]) -> dict:
    return {k: _display(rows, o) for k, o in zip(("x", "y", "z"), objectives)}


def _html_axis(name: str, log: bool, shown: Sequence[Mapping], direction: bool) -> dict:
    axis = {"title": {"text": _axis_label(name, log, direction=direction)}, "type": "log" if log else "linear"}
    if log:
        ticks = _log_ticks(_display(shown, name))
        axis.update(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return axis


def _html_traces_2d(fig, fronts: Sequence[Front], refs: Sequence[Mapping], objectives: Sequence[str],
                    logs: Mapping[str, bool], scale: _ColourScale | None) -> list[dict]:
    """Each front as a step line (markers filled by `scale`, or in its colour) over its faint dominated rows, the
    reference points as stars; returns the reference points' labels (annotations)."""
    import plotly.graph_objects as go

    names = (*objectives, *([scale.metric] if scale and scale.metric not in objectives else []))
    for i, front in enumerate(fronts):
        front_colour = _COLOURS[i % len(_COLOURS)]
        name = _legend_name(front)
        marker = _MARKERS_PLOTLY[i % len(_MARKERS_PLOTLY)]
        fig.add_trace(go.Scatter(
            **_coords(front.dominated, objectives), mode="markers", name=f"{front.study}: dominated",
            legendgroup=name, showlegend=False,
            marker={"size": 6, "color": front_colour, "opacity": 0.2, "symbol": marker},
            hovertext=_hover(front.dominated, names), hoverinfo="text"))
        ordered = _in_step_order(front, objectives[0], objectives[1])
        fill = _html_fill(scale, ordered, first=i == 0) if scale else {"color": front_colour}
        fig.add_trace(go.Scatter(
            **_coords(ordered, objectives), mode="lines+markers",
            line={"shape": "hv", "color": front_colour, "width": 2}, name=name, legendgroup=name,
            marker={"size": 9, **fill, "symbol": marker, "line": {"color": front_colour if scale else "white",
                                                                    "width": 1.5 if scale else 1}},
            hovertext=_hover(ordered, names), hoverinfo="text"))
    if not refs:
        return []
    fig.add_trace(go.Scatter(
        **_coords(refs, objectives), mode="markers", name="reference points",
        marker={"size": 14, "color": _REFERENCE_COLOUR, "symbol": "star"},
        hovertext=_hover(refs, names), hoverinfo="text"))
    # annotations rather than trace text: they get a background, so lines behind them stay readable
    annotations = []
    xy = _coords(refs, objectives)
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


def _html_fill(scale: _ColourScale, rows: Sequence[Mapping], first: bool) -> dict:
    """Marker fill by the colour metric; the first front's trace carries the colour bar."""
    span = {} if scale.low is None else {"cmin": scale.low, "cmax": scale.high}
    return {"color": _display(rows, scale.metric), **span, "colorscale": "Viridis", "showscale": first,
            "reversescale": scale.lower_is_better,
            "colorbar": {"title": {"text": _axis_label(scale.metric, direction=False)}}}


def _html_traces_3d(fig, fronts: Sequence[Front], refs: Sequence[Mapping], objectives: Sequence[str]) -> None:
    """Each front's points solid over its faint dominated rows, the reference points labelled, in 3-D."""
    import plotly.graph_objects as go

    for i, front in enumerate(fronts):
        front_colour = _COLOURS[i % len(_COLOURS)]
        name = _legend_name(front)
        marker = _MARKERS_PLOTLY_3D[i % len(_MARKERS_PLOTLY_3D)]
        fig.add_trace(go.Scatter3d(
            **_coords(front.dominated, objectives), mode="markers", name=f"{front.study}: dominated",
            legendgroup=name, marker={"size": 2.5, "color": front_colour, "opacity": 0.2, "symbol": marker},
            hovertext=_hover(front.dominated, objectives), hoverinfo="text"))
        fig.add_trace(go.Scatter3d(
            **_coords(front.points, objectives), mode="markers", name=name, legendgroup=name,
            marker={"size": 5, "color": front_colour, "symbol": marker, "line": {"color": "white", "width": 0.5}},
            hovertext=_hover(front.points, objectives), hoverinfo="text"))
    if refs:
        fig.add_trace(go.Scatter3d(
            **_coords(refs, objectives), mode="markers+text", name="reference points",
            text=[_reference_name(r) for r in refs], textposition="top center",
            textfont={"size": 12, "color": _REFERENCE_COLOUR},
            marker={"size": 6, "color": _REFERENCE_COLOUR, "symbol": "diamond"},
            hovertext=_hover(refs, objectives), hoverinfo="text"))


__getattr__ = former_names(__name__, {
    "OBJECTIVES": "cerebellum_ray.predict.fronts:OBJECTIVES", "UNIT_SCALE": "cerebellum_ray.core.metrics:UNIT_SCALE",
    "check_objectives": "cerebellum_ray.predict.fronts:check_front_objectives"})
