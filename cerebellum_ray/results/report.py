"""One self-contained HTML page per study: the front, its points' maps, ablation sensitivities, and the budget.

Everything comes from the store. Plots are PNGs (matplotlib) embedded as data URIs, so the page is a single file
that opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import store
from ..core.atomic import atomic_output, check_destination, refuse_store_files
from ..core.errors import CerebellumError
from ..core.units import relative_change, size_unit, value_text

_ABLATION_LABEL = re.compile(r"^(group|layer|router) (\S+)=(\S+)$")


def _png_data_uri(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _front_png(rows, refs, study: str) -> str | None:
    from ..predict.fronts import compute_fronts
    from .plots import plot_png

    fronts = compute_fronts(rows, ["size", "kld"])
    if not any(f.points for f in fronts):
        return None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "front.png"
        plot_png(fronts, refs, path, ["size", "kld"], title=f"study {study}: file size vs mean KLD")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@dataclass(frozen=True)
class Sensitivity:
    """One one-at-a-time move against the base map."""

    move: str  # e.g. attn_q=Q2_K
    change: float  # of the mean KLD: relative to the base's (a fraction), or the difference (Sensitivities.relative)
    change_se: float  # its standard error (the two SEs combined)
    size_change: float  # of the file size, relative (a fraction)


@dataclass(frozen=True)
class Sensitivities:
    """The study's one-at-a-time moves against its base map. A base whose KLD cannot be told from 0 (the base is
    the reference itself) gives differences, not relative changes: a relative change against ~0 reads -1e10 %."""

    base_kld: float | None
    base_kld_se: float | None
    relative: bool
    moves: dict[str, list[Sensitivity]]  # "group", "layer", "router"

    def __getitem__(self, kind: str) -> list[Sensitivity]:
        return self.moves[kind]

    def values(self):
        return self.moves.values()


def ablation_sensitivities(rows: list[dict[str, Any]]) -> Sensitivities:
    """The moves of `rows` labelled 'group|layer|router NAME=TYPE' against the row labelled 'base'."""
    base = next((r for r in rows if r["label"] == "base" and r["status"] == "complete" and r["kld"] is not None),
                None)
    out: dict[str, list[Sensitivity]] = {"group": [], "layer": [], "router": []}
    if base is None:
        return Sensitivities(None, None, True, out)
    base_se = base.get("kld_se") or 0.0
    relative = relative_change(1.0, base["kld"], base_se) is not None
    for r in rows:
        m = _ABLATION_LABEL.match(r["label"] or "")
        if m and r["status"] == "complete" and r["kld"] is not None:
            se = math.hypot(r.get("kld_se") or 0.0, base_se)
            diff = r["kld"] - base["kld"]
            change, change_se = (diff / base["kld"], se / abs(base["kld"])) if relative else (diff, se)
            out[m.group(1)].append(Sensitivity(f"{m.group(2)}={m.group(3)}", change, change_se,
                                               (r["size_bytes"] - base["size_bytes"]) / base["size_bytes"]))
    return Sensitivities(base["kld"], base_se, relative, out)


def _bars(moves: list[Sensitivity], title: str, relative: bool = True) -> str:
    def draw(fig):
        ax = fig.add_subplot()
        scale = 100.0 if relative else 1.0
        values = [scale * m.change for m in moves]
        errors = [scale * m.change_se for m in moves]
        colors = ["#2a9d4b" if v <= 0 else "#c0392b" for v in values]
        ax.barh(range(len(moves)), values, xerr=errors, color=colors, ecolor="#555555", capsize=2)
        ax.set_yticks(range(len(moves)), [m.move for m in moves], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("change of mean KL divergence vs the base map (%), +/- 1 SE - negative is better" if relative
                      else "mean KL divergence minus the base map's (the base is the reference: KLD 0), +/- 1 SE "
                           "- negative is better")
        ax.set_title(title)
        for i, m in enumerate(moves):
            ax.text(values[i], i, f"  size {100 * m.size_change:+.1f}%", va="center", fontsize=7)
    return _png_data_uri(draw)


def _sensitivity_table(moves: list[Sensitivity], relative: bool) -> str:
    head = "KLD change" if relative else "KLD difference"
    out = [f"<table><tr><th>move</th><th>{head} &plusmn; se</th><th>size change</th></tr>"]
    for m in moves:
        change = (f"{100 * m.change:+.1f}% &plusmn; {100 * m.change_se:.1f}%" if relative
                  else f"{m.change:+.5f} &plusmn; {m.change_se:.5f}")
        out.append(f"<tr><td>{html.escape(m.move)}</td><td>{change}</td><td>{100 * m.size_change:+.1f}%</td></tr>")
    return "".join(out) + "</table>"


def _map_summary(m: dict[str, str] | None) -> str:
    """'attn_q: Q2_K x21 (layers 4-8,...), Q5_K x9' style summary by group (and layer ranges)."""
    if not m:
        return ""
    from ..formats.catalog import layer_ranges, tensor_group, tensor_layer

    groups: dict[str, dict[str, list[int]]] = {}
    for name, ty in m.items():
        g = tensor_group(name, 2)
        if g == "norm":
            continue
        groups.setdefault(g, {}).setdefault(ty, []).append(tensor_layer(name) if tensor_layer(name) is not None
                                                          else -1)
    parts = []
    for g, types in sorted(groups.items()):
        desc = []
        for ty, layers in sorted(types.items(), key=lambda kv: -len(kv[1])):
            ls = sorted(x for x in layers if x >= 0)
            desc.append(f"{ty} x{len(layers)}" + (f" (layers {layer_ranges(ls)})" if ls and len(types) > 1 else ""))
        parts.append(f"<b>{html.escape(g)}</b>: {html.escape(', '.join(desc))}")
    return "<br>".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def budget_table(b: dict[str, Any]) -> str:
    """The budget as a table people read: counts by status, times as durations, nodes by name."""
    cells = [("trials", str(b["trials"]))]
    cells += [(f"&nbsp;&nbsp;{html.escape(status)}", str(n)) for status, n in sorted(b["by_status"].items())]
    cells += [("building", _duration(b["build_s"])), ("loading", _duration(b["load_s"])),
              ("scoring", _duration(b["score_s"])), ("trial time in all", _duration(3600 * b["trial_hours"])),
              ("GPU hours", f"{b['gpu_hours']:.3f}" if b["gpu_hours"] else "none (CPU trials)"),
              ("nodes", html.escape(", ".join(b["nodes"])) or "-")]
    return ("<table><tr><th>budget</th><th></th></tr>"
            + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in cells) + "</table>")


def budget(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    seconds = {k: sum((r.get(k) or 0.0) for r in rows) for k in ("build_s", "load_s", "score_s")}
    gpu_hours = sum(((r.get("build_s") or 0) + (r.get("load_s") or 0) + (r.get("score_s") or 0)) * (r.get("gpus") or 0)
                    for r in rows if r.get("gpu_ids")) / 3600
    return {"trials": len(rows), "by_status": by_status, **seconds,
            "trial_hours": sum(seconds.values()) / 3600, "gpu_hours": gpu_hours,
            "nodes": sorted({r["node"] for r in rows if r.get("node")})}


def _predictions_html(store_dir: str, study: str, rows: list[dict[str, Any]]) -> list[str]:
    """The guided strategy's predictions against the measurements, and the interactions the rows support."""
    from ..study.guided import study_departures
    from ..predict.fronts import prediction_check

    check = prediction_check(rows)
    if check is None:
        return []
    rho = "-" if check["spearman"] is None else f"{check['spearman']:.3f}"
    out = [f"<h2>Predicted vs measured KLD</h2><p>{check['n']} rows carry the surrogate's prediction made before "
           f"they ran: Spearman {rho}, {100 * check['within_2se']:.0f}% within 2 standard errors, median relative "
           f"error {100 * check['median_relative_error']:.1f}%.</p><table><tr><th>phase</th><th>rows</th>"
           "<th>Spearman</th><th>within 2 SE</th></tr>"]
    for phase, q in check["by_phase"].items():
        r = "-" if q["spearman"] is None else f"{q['spearman']:.3f}"
        out.append(f"<tr><td>{html.escape(phase)}</td><td>{q['n']}</td><td>{r}</td>"
                   f"<td>{100 * q['within_2se']:.0f}%</td></tr>")
    out.append("</table>")
    try:
        departures = study_departures(store_dir, study)
    except CerebellumError as exc:
        return out + [f"<p>Interactions not computed: {html.escape(str(exc))}</p>"]
    if not departures:
        return out + ["<p>No pair of choices departs from additivity by more than 3 standard errors.</p>"]
    out.append("<h3>Pairs whose joint effect departs from the sum of their effects (&gt; 3 SE)</h3><table><tr>"
               "<th>choice</th><th>with</th><th>departure (KLD)</th><th>z</th></tr>")
    out.extend(f"<tr><td>{html.escape(d['a'])}={d['type_a']}</td><td>{html.escape(d['b'])}={d['type_b']}</td>"
               f"<td>{d['departure']:+.5f}</td><td>{d['z']:+.1f}</td></tr>" for d in departures[:20])
    return out + ["</table>"]


def write_report(store_dir: str, study: str, out: str) -> Path:
    from ..core.store import REFERENCE_STRATEGIES
    from ..predict.fronts import compute_fronts, knee_point

    check_destination(out)
    refuse_store_files(out, store_dir)
    rows = store.rows(store_dir, [study])
    if not rows:
        raise CerebellumError(f"study {study!r} has no trials in {store_dir}")
    refs = [r for r in store.rows(store_dir) if r["strategy"] in REFERENCE_STRATEGIES and r["status"] == "complete"]
    search = [r for r in rows if r["strategy"] not in REFERENCE_STRATEGIES]
    fronts = compute_fronts(search, ["size", "kld"]) if search else []
    parts = [f"<h1>cerebellum-ray study <code>{html.escape(study)}</code></h1>",
             f"<p>store <code>{html.escape(str(Path(store_dir).resolve()))}</code></p>"]
    front_img = _front_png(search, refs, study) if search else None
    if front_img:
        parts.append(f'<h2>Pareto front</h2><img alt="Pareto front" src="{front_img}" style="max-width:100%">')
    for f in fronts:
        unit, scale = size_unit(max(p["size_bytes"] for p in f.points)) if f.points else ("GB", 1e9)
        knee = knee_point(f)["trial_id"] if f.points else None
        parts.append(f"<h2>Front points ({len(f.points)}; hypervolume {f.hypervolume_fraction:.3f} of the box)</h2>"
                     f"<table><tr><th>trial</th><th>bpw</th><th>size ({unit})</th><th>KLD &plusmn; se</th>"
                     "<th>PPL &plusmn; se</th><th>map by group and layer</th></tr>")
        for p in f.points:
            mark = " <b>&larr; knee</b>" if p["trial_id"] == knee else ""
            parts.append(f"<tr><td>{html.escape(p['trial_id'])}{mark}<br><small>{html.escape(p['label'] or '')}"
                         f"</small></td><td>{p['bpw']:.3f}</td><td>{p['size_bytes'] / scale:.4g}</td>"
                         f"<td>{value_text(p['kld'], p['kld_se'], pm='&plusmn;')}</td>"
                         f"<td>{value_text(p['ppl'], p.get('ppl_se'), 3, pm='&plusmn;')}</td>"
                         f"<td>{_map_summary(p['map'])}</td></tr>")
        parts.append("</table>")
    parts.extend(_predictions_html(store_dir, study, search))
    sens = ablation_sensitivities(rows)
    if any(sens.values()):
        base = value_text(sens.base_kld, sens.base_kld_se, pm="&plusmn;")
        parts.append(f"<h2>Ablation sensitivities</h2><p>Each move against the base map (mean KLD {base}): "
                     + ("relative changes." if sens.relative else "the base is the reference itself (its KLD cannot "
                        "be told from 0), so the changes are differences of the mean KLD, not percentages.")
                     + "</p>")
        for kind, title in (("group", "each group moved alone"), ("layer", "each layer moved alone"),
                            ("router", "each router layer moved alone")):
            if sens[kind]:
                parts.append(f'<img alt="{kind} sensitivities" src="{_bars(sens[kind], title, sens.relative)}" '
                             'style="max-width:100%">' + _sensitivity_table(sens[kind], sens.relative))
    parts.append("<h2>Budget</h2>" + budget_table(budget(rows)))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>cerebellum-ray " + html.escape(study) +
            "</title><style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top;text-align:left}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>")
    with atomic_output(out) as f:
        f.write(page.encode())
    return Path(out)


__all__ = ["ablation_sensitivities", "budget", "write_report"]
