"""One self-contained HTML page per study: the front, its points' maps, ablation sensitivities, and the budget.

Everything comes from the store. Plots are PNGs (matplotlib) embedded as data URIs, so the page is a single file
that opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from ..core import store
from ..core.atomic import atomic_output, check_destination, refuse_store_files
from ..core.errors import CerebellumError

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


def ablation_sensitivities(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, float, float]]]:
    """{"group": [(move, KLD change %, size change %)], "layer": [...], "router": [...]} against the base row."""
    base = next((r for r in rows if r["label"] == "base" and r["status"] == "complete"), None)
    out: dict[str, list[tuple[str, float, float]]] = {"group": [], "layer": [], "router": []}
    if base is None:
        return out
    for r in rows:
        m = _ABLATION_LABEL.match(r["label"] or "")
        if m and r["status"] == "complete" and r["kld"] is not None:
            out[m.group(1)].append((f"{m.group(2)}={m.group(3)}", 100 * (r["kld"] - base["kld"]) / base["kld"],
                                    100 * (r["size_bytes"] - base["size_bytes"]) / base["size_bytes"]))
    return out


def _bars(moves: list[tuple[str, float, float]], title: str) -> str:
    def draw(fig):
        ax = fig.add_subplot()
        names = [m[0] for m in moves]
        values = [m[1] for m in moves]
        colors = ["#2a9d4b" if v <= 0 else "#c0392b" for v in values]
        ax.barh(range(len(moves)), values, color=colors)
        ax.set_yticks(range(len(moves)), names, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("change of mean KL divergence vs the base map (%) - negative is better")
        ax.set_title(title)
        for i, (_, v, size) in enumerate(moves):
            ax.text(v, i, f"  size {size:+.1f}%", va="center", fontsize=7)
    return _png_data_uri(draw)


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
    from ..predict.fronts import compute_fronts

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
        parts.append(f"<h2>Front points ({len(f.points)}; hypervolume {f.hypervolume_fraction:.3f} of the box)</h2>"
                     "<table><tr><th>trial</th><th>bpw</th><th>size (GB)</th><th>KLD &plusmn; se</th>"
                     "<th>PPL</th><th>map by group and layer</th></tr>")
        for p in f.points:
            parts.append(f"<tr><td>{html.escape(p['trial_id'])}<br><small>{html.escape(p['label'] or '')}</small>"
                         f"</td><td>{p['bpw']:.3f}</td><td>{p['size_bytes'] / 1e9:.4f}</td>"
                         f"<td>{p['kld']:.5f} &plusmn; {p['kld_se'] or 0:.5f}</td><td>{p['ppl']:.3f}</td>"
                         f"<td>{_map_summary(p['map'])}</td></tr>")
        parts.append("</table>")
    parts.extend(_predictions_html(store_dir, study, search))
    sens = ablation_sensitivities(rows)
    if any(sens.values()):
        parts.append("<h2>Ablation sensitivities</h2>")
        for kind, title in (("group", "each group moved alone"), ("layer", "each layer moved alone"),
                            ("router", "each router layer moved alone")):
            if sens[kind]:
                parts.append(f'<img alt="{kind} sensitivities" src="{_bars(sens[kind], title)}" '
                             'style="max-width:100%">')
    b = budget(rows)
    parts.append("<h2>Budget</h2><table>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v) if not isinstance(v, float) else f'{v:.3f}')}"
        "</td></tr>" for k, v in b.items()) + "</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>cerebellum-ray " + html.escape(study) +
            "</title><style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top;text-align:left}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>")
    with atomic_output(out) as f:
        f.write(page.encode())
    return Path(out)


__all__ = ["ablation_sensitivities", "budget", "write_report"]
