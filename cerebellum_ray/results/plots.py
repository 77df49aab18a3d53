"""Pictures of Pareto fronts: a PNG (matplotlib) and an offline HTML page (plotly). Only drawing happens here; every
number comes from the `Front` records of pareto.py. Neither back end is imported until a plot is asked for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..predict.fronts import OBJECTIVES, UNIT_SCALE, Front, check_objectives, order_front, rows_as_dicts

__all__ = ["plot_html", "plot_png"]


# ---------------------------------------------------------------------------------------------------------------
# Drawing (matplotlib and plotly are imported only here)
# ---------------------------------------------------------------------------------------------------------------

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22"]
_MARKERS_MPL = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
_MARKERS_PLOTLY = ["circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "triangle-left",
                   "triangle-right", "hexagon"]
_MARKERS_PLOTLY_3D = ["circle", "square", "diamond", "cross", "x", "circle-open", "square-open", "diamond-open"]
_REFERENCE_COLOUR = "#222222"


def _axis_label(name: str, log: bool = False, direction: bool = True) -> str:
    _, better, label, unit = OBJECTIVES[name]
    text = f"{label} ({unit})" if unit and unit != label else label
    text += ", log scale" if log else ""
    if not direction:
        return text
    return text + (" — lower is better" if better == "min" else " — higher is better")


def _log_ticks(values: np.ndarray) -> list[float]:
    """1-2-5 steps covering the positive `values` (plotly labels log axes with bare digits otherwise)."""
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return []
    lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
    ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 2, 5)]
    return [t for t in ticks if values.min() / 2.5 <= t <= values.max() * 2.5]


def _display(rows: Sequence[Mapping], name: str) -> np.ndarray:
    """Column `name` of rows in display units; missing values as NaN."""
    column, _, _, unit = OBJECTIVES[name]
    scale = UNIT_SCALE.get(unit, 1.0)
    return np.array([np.nan if r.get(column) is None else float(r[column]) * scale for r in rows], dtype=float)


def _legend_name(front: Front) -> str:
    n_all = len(front.points) + len(front.dominated)
    return f"{front.study}: {len(front.points)} of {n_all}, HV {front.hypervolume_fraction:.3f}"


def _reference_name(row: Mapping) -> str:
    return str(row.get("label") or row.get("trial_id") or "reference")


def _check_plot_args(fronts: Sequence[Front], objectives: Sequence[str] | None) -> tuple[str, ...]:
    if not fronts:
        raise ValueError("nothing to plot: fronts is empty.")
    objectives = check_objectives(objectives if objectives is not None else fronts[0].objectives)
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
    text = f"Pareto fronts per {fronts[0].group_by}: {OBJECTIVES[objectives[0]][2]} / {OBJECTIVES[objectives[1]][2]}"
    return text + (f" (colour: {OBJECTIVES[objectives[2]][2]})" if len(objectives) == 3 else "")


def _split_off_scale(refs: list[dict], fronts: Sequence[Front], objectives: Sequence[str],
                     log_scale: Collection[str]) -> tuple[list[dict], list[str]]:
    """Reference rows that would stretch a log axis by more than 100x below every trial (e.g. the reference model
    itself, KLD ~0) are left off the plot and named in the caption instead."""
    shown, off = [], []
    trials = [r for f in fronts for r in (*f.points, *f.dominated)]
    for o in objectives:
        if o not in log_scale:
            continue
        col = OBJECTIVES[o][0]
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
        f"{v * UNIT_SCALE.get(OBJECTIVES[o][3], 1.0):.4g} {OBJECTIVES[o][3]}".strip()
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
    return [int(k) for k in order_front(xy, [OBJECTIVES[x_name][1], OBJECTIVES[y_name][1]])]


def _plot_inputs(fronts, reference_rows, objectives, log_scale):
    """(objectives, reference rows drawn, reference rows off a log scale, every row drawn) for both plotters."""
    objectives = _check_plot_args(fronts, objectives)
    refs, off_scale = _split_off_scale(rows_as_dicts(reference_rows or []), fronts, objectives, log_scale)
    shown = [r for f in fronts for r in (*f.points, *f.dominated)] + refs
    return objectives, refs, off_scale, shown


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
    keeps its marker and an edge in its colour. `colour` (a metric of pareto.OBJECTIVES, e.g. "bpw") colours the
    markers of a two-objective plot the same way without being an objective (size shown as colour on a PPL-vs-code
    front). Objectives in `log_scale` get a log axis when all values shown are positive. Written atomically; returns
    the path.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    objectives, refs, off_scale, shown = _plot_inputs(fronts, reference_rows, objectives, log_scale)
    x_name, y_name = objectives[0], objectives[1]
    z_name = objectives[2] if len(objectives) == 3 else colour
    two_d = len(objectives) == 2
    logs = _log_axes(objectives[:2], log_scale, shown)

    fig = Figure(figsize=size_inches, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    norm = cmap = None
    if z_name is not None:
        from matplotlib.colors import Normalize

        z_all = _display(shown, z_name)
        z_all = z_all[~np.isnan(z_all)]
        norm = Normalize(vmin=float(z_all.min()), vmax=float(z_all.max())) if z_all.size else Normalize(0, 1)
        cmap = "viridis_r" if OBJECTIVES[z_name][1] == "min" else "viridis"  # bright = better either way

    handles = []
    for i, front in enumerate(fronts):
        colour, marker = _COLOURS[i % len(_COLOURS)], _MARKERS_MPL[i % len(_MARKERS_MPL)]
        dx, dy = _display(front.dominated, x_name), _display(front.dominated, y_name)
        ax.scatter(dx, dy, s=14, marker=marker, color=colour, alpha=0.22, linewidths=0, zorder=1)
        ordered = [front.points[k] for k in _step_order(front, x_name, y_name)]
        x, y = _display(ordered, x_name), _display(ordered, y_name)
        if two_d:
            ax.step(x, y, where="post", color=colour, linewidth=1.6, alpha=0.9, zorder=2)
        if z_name is None:
            ax.scatter(x, y, s=40, marker=marker, color=colour, edgecolors="white", linewidths=0.6, zorder=3)
            handles.append(Line2D([], [], color=colour, marker=marker, markeredgecolor="white",
                                  label=_legend_name(front)))
        else:
            ax.scatter(x, y, c=_display(ordered, z_name), cmap=cmap, norm=norm,
                       s=55, marker=marker, edgecolors=colour, linewidths=1.6, zorder=3)
            # the fill is the colour-bar value, so the legend shows only the front's marker and edge colour
            handles.append(Line2D([], [], linestyle="", marker=marker, markersize=8, markerfacecolor="white",
                                  markeredgecolor=colour, markeredgewidth=1.6, label=_legend_name(front)))

    if refs:
        rx, ry = _display(refs, x_name), _display(refs, y_name)
        if z_name is None:
            ax.scatter(rx, ry, s=110, marker="*", color=_REFERENCE_COLOUR, zorder=4)
        else:
            ax.scatter(rx, ry, c=_display(refs, z_name), cmap=cmap, norm=norm, s=150, marker="*",
                       edgecolors=_REFERENCE_COLOUR, linewidths=1.0, zorder=4)
        handles.append(Line2D([], [], linestyle="", marker="*", markersize=12, label="reference points",
                              markerfacecolor=_REFERENCE_COLOUR if z_name is None else "white",
                              markeredgecolor=_REFERENCE_COLOUR))
        labels = [ax.annotate(_reference_name(r), (xv, yv), xytext=_LABEL_OFFSETS[0], textcoords="offset points",
                              fontsize=9, color=_REFERENCE_COLOUR, zorder=5,
                              bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
                  for r, xv, yv in zip(refs, rx, ry) if not (np.isnan(xv) or np.isnan(yv))]

    if z_name is not None:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        bar.set_label(_axis_label(z_name))
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
    ax.legend(handles=handles, loc="best", fontsize=9, title_fontsize=9,
              title=f"front per {fronts[0].group_by}: points on front of all, HV (faint: dominated trials)")
    ax.set_title(title or _title(fronts, objectives))
    fig.text(0.005, 0.002, _hv_note(fronts, off_scale), fontsize=7, color="#555555", ha="left", va="bottom", wrap=True)
    fig.get_layout_engine().set(h_pad=0.2, rect=(0, 0.05, 1, 0.95))  # the bottom strip holds the note
    if refs:
        _spread_labels(fig, ax, labels)
    return _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


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
    metric_colour = colour if not three_d else None
    c_range = {}
    if metric_colour:
        values = _display(shown, metric_colour)
        values = values[~np.isnan(values)]
        if values.size:
            c_range = {"cmin": float(values.min()), "cmax": float(values.max())}

    def hover(rows: Sequence[Mapping]) -> list[str]:
        out = []
        for r in rows:
            parts = [f"<b>{r.get('label') or r.get('trial_id')}</b>", f"{r.get('study')} / {r.get('strategy')}"]
            for o in (*objectives, *([metric_colour] if metric_colour and metric_colour not in objectives else [])):
                v = _display([r], o)[0]
                parts.append(f"{OBJECTIVES[o][2]}: {'n/a' if np.isnan(v) else f'{v:.5g}'} {OBJECTIVES[o][3]}")
            out.append("<br>".join(parts))
        return out

    def coords(rows: Sequence[Mapping]) -> dict:
        keys = ("x", "y", "z") if three_d else ("x", "y")
        return {k: _display(rows, o) for k, o in zip(keys, objectives)}

    fig = go.Figure()
    for i, front in enumerate(fronts):
        colour = _COLOURS[i % len(_COLOURS)]
        name = _legend_name(front)
        if three_d:
            marker = _MARKERS_PLOTLY_3D[i % len(_MARKERS_PLOTLY_3D)]
            fig.add_trace(go.Scatter3d(
                **coords(front.dominated), mode="markers", name=f"{front.study}: dominated", legendgroup=name,
                marker={"size": 2.5, "color": colour, "opacity": 0.2, "symbol": marker},
                hovertext=hover(front.dominated), hoverinfo="text"))
            fig.add_trace(go.Scatter3d(
                **coords(front.points), mode="markers", name=name, legendgroup=name,
                marker={"size": 5, "color": colour, "symbol": marker, "line": {"color": "white", "width": 0.5}},
                hovertext=hover(front.points), hoverinfo="text"))
        else:
            marker = _MARKERS_PLOTLY[i % len(_MARKERS_PLOTLY)]
            fig.add_trace(go.Scatter(
                **coords(front.dominated), mode="markers", name=f"{front.study}: dominated", legendgroup=name,
                showlegend=False, marker={"size": 6, "color": colour, "opacity": 0.2, "symbol": marker},
                hovertext=hover(front.dominated), hoverinfo="text"))
            ordered = [front.points[k] for k in _step_order(front, objectives[0], objectives[1])]
            fill = ({"color": _display(ordered, metric_colour), **c_range, "colorscale": "Viridis", "showscale": i == 0,
                     "reversescale": OBJECTIVES[metric_colour][1] == "min",
                     "colorbar": {"title": {"text": _axis_label(metric_colour, direction=False)}}}
                    if metric_colour else {"color": colour})
            fig.add_trace(go.Scatter(
                **coords(ordered), mode="lines+markers", line={"shape": "hv", "color": colour, "width": 2},
                name=name, legendgroup=name,
                marker={"size": 9, **fill, "symbol": marker, "line": {"color": colour if metric_colour else "white",
                                                                        "width": 1.5 if metric_colour else 1}},
                hovertext=hover(ordered), hoverinfo="text"))
    annotations = []
    if refs:
        names = [_reference_name(r) for r in refs]
        if three_d:
            fig.add_trace(go.Scatter3d(
                **coords(refs), mode="markers+text", name="reference points", text=names,
                textposition="top center", textfont={"size": 12, "color": _REFERENCE_COLOUR},
                marker={"size": 6, "color": _REFERENCE_COLOUR, "symbol": "diamond"},
                hovertext=hover(refs), hoverinfo="text"))
        else:
            fig.add_trace(go.Scatter(
                **coords(refs), mode="markers", name="reference points",
                marker={"size": 14, "color": _REFERENCE_COLOUR, "symbol": "star"},
                hovertext=hover(refs), hoverinfo="text"))
            # annotations rather than trace text: they get a background, so lines behind them stay readable
            xs, ys = coords(refs)["x"], coords(refs)["y"]
            for name, xv, yv in zip(names, xs, ys):
                if np.isnan(xv) or np.isnan(yv):
                    continue
                annotations.append({
                    "x": math.log10(xv) if logs[objectives[0]] else xv,
                    "y": math.log10(yv) if logs[objectives[1]] else yv,
                    "text": name, "showarrow": False, "xanchor": "left", "yanchor": "bottom", "xshift": 6,
                    "yshift": 4, "bgcolor": "rgba(255,255,255,0.75)", "font": {"size": 12, "color": _REFERENCE_COLOUR},
                })

    axes = {}
    for o in objectives:
        axes[o] = {"title": {"text": _axis_label(o, logs[o], direction=not three_d)},
                   "type": "log" if logs[o] else "linear"}
        if logs[o]:
            ticks = _log_ticks(_display(shown, o))
            axes[o].update(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    note = _hv_note(fronts, off_scale)
    if three_d:
        note += "<br>" + "; ".join(
            f"{OBJECTIVES[o][2]}: {'lower' if OBJECTIVES[o][1] == 'min' else 'higher'} is better" for o in objectives)
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

