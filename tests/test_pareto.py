"""Pareto fronts and hypervolume against brute force; comparison, knee point and both plot back ends."""

import itertools
import math

import numpy as np
import pytest

from cerebellum_ray.predict import fronts as pareto
from cerebellum_ray.results import plots
from cerebellum_ray.predict.fronts import (
    OBJECTIVES,
    Front,
    compare_fronts,
    compute_fronts,
    default_reference_point,
    hypervolume,
    knee_point,
    pareto_mask,
)

# --- brute force, written independently of the module -----------------------------------------------------------

def _to_min(points, directions):
    return [[v if d == "min" else -v for v, d in zip(p, directions)] for p in np.asarray(points, float).tolist()]


def brute_mask(points, directions):
    p = _to_min(points, directions)
    out = []
    for i, q in enumerate(p):
        dominated = False
        for j, r in enumerate(p):
            if j != i and all(a <= b for a, b in zip(r, q)) and any(a < b for a, b in zip(r, q)):
                dominated = True
                break
        out.append(not dominated)
    return np.array(out, dtype=bool)


def brute_hypervolume(points, directions, ref):
    """Sum of the grid cells (between all distinct coordinates) whose lower corner some point weakly dominates."""
    p = np.array(_to_min(points, directions)).reshape(-1, len(directions))
    r = np.array(_to_min([ref], directions)[0])
    d = len(directions)
    axes = []
    for k in range(d):
        cut = sorted({v for v in p[:, k] if v < r[k]} | {r[k]})
        axes.append(cut)
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        lo = np.array([axes[k][c] for k, c in enumerate(cell)])
        hi = np.array([axes[k][c + 1] for k, c in enumerate(cell)])
        if (p <= lo).all(axis=1).any():
            total += float(np.prod(hi - lo))
    return total


def random_points(rng, n, d, integer):
    """Points with many ties (small integer grid) or continuous ones, plus forced exact duplicates."""
    pts = rng.integers(0, 5, size=(n, d)).astype(float) if integer else rng.normal(size=(n, d))
    if n > 2:
        dup = rng.integers(0, n, size=max(1, n // 4))
        pts = np.vstack([pts, pts[dup]])
        pts = pts[rng.permutation(len(pts))]
    return pts


def random_directions(rng, d):
    return [str(x) for x in rng.choice(["min", "max"], size=d)]


# --- pareto_mask ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("integer", [True, False])
def test_pareto_mask_matches_brute_force(d, integer):
    for seed in range(120):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 30))
        pts, dirs = random_points(rng, n, d, integer), random_directions(rng, d)
        expected = brute_mask(pts, dirs)
        np.testing.assert_array_equal(pareto_mask(pts, dirs), expected, err_msg=f"{seed=} {dirs=}")
        # the sort-based 2-D path and the general path agree too
        np.testing.assert_array_equal(pareto._pareto_mask_nd(np.array(_to_min(pts, dirs))), expected)


def test_pareto_mask_keeps_every_copy_of_a_front_point():
    pts = np.array([[1, 5], [1, 5], [2, 2], [2, 2], [3, 3], [5, 1], [1, 5]], dtype=float)
    np.testing.assert_array_equal(pareto_mask(pts, ["min", "min"]), [1, 1, 1, 1, 0, 1, 1])
    # a duplicate of a dominated point stays dominated
    np.testing.assert_array_equal(pareto_mask([[2, 2], [3, 3], [3, 3]], ["min", "min"]), [1, 0, 0])


def test_pareto_mask_ties_in_one_objective():
    # same x: only the better y can be on the front; same y: only the better x
    pts = [[1, 3], [1, 2], [2, 1], [3, 1], [0, 9]]
    np.testing.assert_array_equal(pareto_mask(pts, ["min", "min"]), [0, 1, 1, 0, 1])
    # humaneval (max) against size (min)
    pts = [[4.0, 0.30], [4.0, 0.35], [5.0, 0.35], [6.0, 0.50]]
    np.testing.assert_array_equal(pareto_mask(pts, ["min", "max"]), [0, 1, 0, 1])


def test_pareto_mask_edges_and_errors():
    assert pareto_mask(np.zeros((0, 2)), ["min", "min"]).shape == (0,)
    np.testing.assert_array_equal(pareto_mask([[1, 2]], ["min", "max"]), [True])
    np.testing.assert_array_equal(pareto_mask([[1, np.inf], [2, 3]], ["min", "min"]), [True, True])
    with pytest.raises(ValueError, match="NaN"):
        pareto_mask([[1, np.nan]], ["min", "min"])
    with pytest.raises(ValueError, match="directions"):
        pareto_mask([[1, 2]], ["min"])
    with pytest.raises(ValueError, match="one of"):
        pareto_mask([[1, 2]], ["min", "up"])


def test_pareto_mask_scales_to_thousands():
    rng = np.random.default_rng(0)
    pts = rng.random((3000, 3))
    mask = pareto_mask(pts, ["min", "max", "min"])
    sub = rng.choice(3000, 60, replace=False)
    # every sampled front point is dominated by nobody, every sampled dominated point by somebody
    p = np.array(_to_min(pts, ["min", "max", "min"]))
    for i in sub:
        dom = ((p <= p[i]).all(axis=1) & (p < p[i]).any(axis=1)).any()
        assert mask[i] == (not dom)


# --- hypervolume ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("integer", [True, False])
def test_hypervolume_matches_grid_brute_force(d, integer):
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        # integer points sit on a 5-value grid, so the brute force stays cheap even for many (tied) points
        n = int(rng.integers(1, 150)) if integer else int(rng.integers(1, 9))
        pts, dirs = random_points(rng, n, d, integer), random_directions(rng, d)
        ref = default_reference_point(pts, dirs)
        # sometimes a reference point that cuts through the cloud: points beyond it must add nothing
        if seed % 3 == 0:
            ref = np.median(pts, axis=0)
        got, want = hypervolume(pts, dirs, ref), brute_hypervolume(pts, dirs, ref)
        assert type(got) is float
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (seed, dirs, got, want)


def test_hypervolume_four_objectives_matches_brute_force():
    for seed in range(25):
        rng = np.random.default_rng(7000 + seed)
        pts, dirs = random_points(rng, int(rng.integers(1, 7)), 4, seed % 2 == 0), random_directions(rng, 4)
        ref = default_reference_point(pts, dirs)
        assert math.isclose(hypervolume(pts, dirs, ref), brute_hypervolume(pts, dirs, ref), rel_tol=1e-9)


@pytest.mark.parametrize("d", [2, 3])
def test_hypervolume_agrees_with_optuna(d):
    hv_mod = pytest.importorskip("optuna._hypervolume")
    for seed in range(40):
        rng = np.random.default_rng(seed)
        pts, dirs = random_points(rng, int(rng.integers(2, 60)), d, seed % 2 == 0), random_directions(rng, d)
        ref = default_reference_point(pts, dirs)
        sign = np.array([1.0 if x == "min" else -1.0 for x in dirs])
        want = hv_mod.compute_hypervolume(pts * sign, ref * sign)
        assert math.isclose(hypervolume(pts, dirs, ref), want, rel_tol=1e-9)


def test_hypervolume_known_values():
    # one box; two overlapping boxes; a maximized objective
    assert hypervolume([[1, 1]], ["min", "min"], [3, 4]) == 6.0
    assert hypervolume([[1, 2], [2, 1]], ["min", "min"], [3, 3]) == 3.0
    assert math.isclose(hypervolume([[1.0, 0.6], [2.0, 0.8]], ["min", "max"], [3.0, 0.0]), 1.4)
    assert hypervolume([[1, 1, 1]], ["min", "min", "min"], [2, 3, 4]) == 6.0
    assert hypervolume(np.zeros((0, 2)), ["min", "min"], [1, 1]) == 0.0
    assert hypervolume([[5, 5]], ["min", "min"], [3, 3]) == 0.0  # beyond the reference point
    with pytest.raises(ValueError, match="finite"):
        hypervolume([[1, 1]], ["min", "min"], [np.inf, 2])


def test_default_reference_point_rule():
    pts = np.array([[1.0, 0.2], [3.0, 0.6]])
    np.testing.assert_allclose(default_reference_point(pts, ["min", "max"]), [3.2, 0.16])
    # a constant objective: 10 % of |value|, or 0.1 at zero
    np.testing.assert_allclose(default_reference_point([[1.0, 0.0], [2.0, 0.0]], ["min", "max"]), [2.1, -0.1])
    np.testing.assert_allclose(default_reference_point([[5.0, 2.0]], ["min", "min"]), [5.5, 2.2])


# --- rows -> fronts -----------------------------------------------------------------------------------------------

def make_row(study, trial_id, size_gb, kld, humaneval=None, status="complete", strategy="optuna", label=None):
    return {
        "study": study, "strategy": strategy, "trial_id": trial_id, "status": status,
        "size_bytes": round(size_gb * 1e9), "bpw": size_gb * 8 / 0.27, "kld": kld, "kld_se": kld / 20,
        "ppl": 20 + 100 * kld, "ppl_se": 0.1, "humaneval": humaneval, "humaneval_se": None, "label": label,
    }


def test_compute_fronts_rows_and_status():
    rows = [
        make_row("a", "a0", 0.20, 0.10, 0.30),
        make_row("a", "a1", 0.25, 0.05, 0.32),
        make_row("a", "a2", 0.30, 0.06, 0.31),  # dominated by a1
        make_row("a", "a3", 0.18, 0.01, status="pruned"),  # would dominate all, but is not complete
        make_row("a", "a4", 0.25, 0.05, 0.32),  # duplicate of a1: kept
        make_row("b", "b0", 0.15, 0.20, None),  # no humaneval
        make_row("b", "b1", 0.22, 0.04, 0.40, strategy="ablation"),
        make_row("b", "b2", 0.30, float("nan"), 0.5),  # NaN objective: skipped
    ]
    fronts = compute_fronts(rows, ["size", "kld"])
    assert [f.study for f in fronts] == ["a", "b"]
    a, b = fronts
    assert [r["trial_id"] for r in a.points] == ["a0", "a1", "a4"]
    assert [r["trial_id"] for r in a.dominated] == ["a2"]
    assert a.n_skipped == 1 and b.n_skipped == 1
    assert [r["trial_id"] for r in b.points] == ["b0", "b1"]
    # one shared reference point from all compared rows: worst + 10 % of range
    assert a.reference_point == b.reference_point
    np.testing.assert_allclose(a.reference_point, [0.30e9 + 0.015e9, 0.20 + 0.016])
    np.testing.assert_allclose(a.ideal_point, [0.15e9, 0.04])
    assert math.isclose(a.hypervolume, hypervolume(a.values(), ["min", "min"], a.reference_point))
    assert 0 < a.hypervolume_fraction < 1 and 0 < b.hypervolume_fraction < 1

    # with humaneval the row without it drops out of b
    fronts3 = compute_fronts(rows, ["size", "kld", "humaneval"])
    assert [r["trial_id"] for r in fronts3[1].points] == ["b1"] and fronts3[1].n_skipped == 2

    by_strategy = compute_fronts(rows, ["size", "kld"], group_by="strategy")
    assert [f.study for f in by_strategy] == ["ablation", "optuna"]
    assert by_strategy[0].group_by == "strategy"


def test_compute_fronts_accepts_arrow_tables():
    pa = pytest.importorskip("pyarrow")
    rows = [make_row("s", f"t{i}", 0.1 + 0.01 * i, 0.1 / (i + 1), 0.3) for i in range(10)]
    table = pa.Table.from_pylist(rows)
    (from_table,), (from_list,) = compute_fronts(table, ["size", "kld"]), compute_fronts(rows, ["size", "kld"])
    assert from_table == from_list
    assert len(from_table.points) == 10


def test_compute_fronts_errors():
    rows = [make_row("a", "a0", 0.2, 0.1)]
    with pytest.raises(ValueError, match="unknown objectives"):
        compute_fronts(rows, ["size", "joy"])
    with pytest.raises(ValueError, match="two distinct"):
        compute_fronts(rows, ["size", "size"])
    with pytest.raises(ValueError, match="group_by"):
        compute_fronts(rows, ["size", "kld"], group_by="model")
    with pytest.raises(ValueError, match="no complete rows"):
        compute_fronts([make_row("a", "a0", 0.2, 0.1, status="failed")], ["size", "kld"])


def test_objectives_table_is_consistent():
    for name, (column, direction, label, _unit) in OBJECTIVES.items():
        assert direction in ("min", "max") and column and label, name
    assert OBJECTIVES["humaneval"][1] == "max"


# --- compare_fronts and knee_point ------------------------------------------------------------------------------

def test_compare_fronts_counts():
    rows = ([make_row("A", f"a{i}", x, y) for i, (x, y) in enumerate([(1, 5), (2, 3), (4, 1)])]
            + [make_row("B", f"b{i}", x, y) for i, (x, y) in enumerate([(1, 6), (2, 3), (3, 2), (5, 0.5)])])
    a, b = compute_fronts(rows, ["size", "kld"])
    assert (len(a.points), len(b.points)) == (3, 4)
    c = compare_fronts(a, b)
    assert c["a_dominated_by_b"] == 0
    assert c["b_dominated_by_a"] == 1  # (1, 6) by (1, 5); the shared (2, 3) is not strictly dominated
    assert c["coverage_a_b"] == 2 / 4  # (1, 6) and the equal (2, 3)
    assert c["coverage_b_a"] == 1 / 3  # only the equal (2, 3)
    assert c["hypervolume_a"] == a.hypervolume and c["hypervolume_b"] == b.hypervolume
    assert compare_fronts(a, a)["coverage_a_b"] == 1.0

    other = compute_fronts(rows[:3], ["size", "kld"])[0]  # a different reference point
    with pytest.raises(ValueError, match="reference point"):
        compare_fronts(other, b)


def test_knee_point_on_a_convex_front():
    # a quarter circle bulging towards the ideal point, in very different units on each axis
    t = np.linspace(0, np.pi / 2, 21)
    rows = [make_row("s", f"t{i}", 0.1 + 0.4 * (1 - math.cos(x)), 0.001 + 0.5 * (1 - math.sin(x)))
            for i, x in enumerate(t)]
    (front,) = compute_fronts(rows, ["size", "kld"])
    assert len(front.points) == 21
    assert knee_point(front)["trial_id"] == "t10"

    # a sharp corner wins over a point nearly on the line through the extremes
    rows = [make_row("s", n, x, y) for n, (x, y) in
            {"e1": (0.1, 1.0), "corner": (0.2, 0.2), "flat": (0.6, 0.45), "e2": (1.0, 0.1)}.items()]
    assert knee_point(compute_fronts(rows, ["size", "kld"])[0])["trial_id"] == "corner"


def test_knee_point_three_objectives_and_edges():
    rows = [make_row("s", "x", 0.1, 0.9, 0.3), make_row("s", "y", 0.9, 0.1, 0.3),
            make_row("s", "mid", 0.4, 0.4, 0.6), make_row("s", "z", 0.5, 0.5, 0.7)]
    (front,) = compute_fronts(rows, ["size", "kld", "humaneval"])
    assert knee_point(front)["trial_id"] == "mid"
    (single,) = compute_fronts([make_row("s", "only", 0.2, 0.2)], ["size", "kld"])
    assert knee_point(single)["trial_id"] == "only"
    empty = Front("e", ("size", "kld"), (), 0.0, (1.0, 1.0), (0.0, 0.0))
    with pytest.raises(ValueError, match="no points"):
        knee_point(empty)


# --- plots --------------------------------------------------------------------------------------------------------

def demo_rows(seed=0):
    """Two studies of 60 trials each and three labelled reference points (llama.cpp presets, an earlier result)."""
    rng = np.random.default_rng(seed)
    rows = []
    for study, quality in (("optuna-tpe", 1.0), ("ablation-greedy", 1.4)):
        for i in range(60):
            size = rng.uniform(0.16, 0.30)
            kld = quality * 0.004 * (0.30 / size) ** 6 * rng.lognormal(0, 0.35)
            he = max(0.0, min(1.0, 0.42 - 2.0 * kld + rng.normal(0, 0.02)))
            rows.append(make_row(study, f"{study}-{i}", size, kld, he, strategy=study.split("-")[0]))
    refs = [make_row("presets", "q4km", 0.253, 0.0125, 0.38, strategy="preset", label="Q4_K_M"),
            make_row("presets", "q3km", 0.214, 0.041, 0.33, strategy="preset", label="Q3_K_M"),
            make_row("v6", "v6", 0.205, 0.0155, 0.37, strategy="reference", label="cerebellum-v6")]
    return rows, refs


@pytest.mark.parametrize("objectives", [["size", "kld"], ["size", "humaneval"], ["size", "kld", "humaneval"]])
def test_plot_png_renders(tmp_path, objectives):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    rows, refs = demo_rows()
    fronts = compute_fronts(rows, objectives)
    out = plots.plot_png(fronts, refs, tmp_path / "front.png", objectives, size_inches=(8, 5), dpi=50)
    assert out.stat().st_size > 0
    assert imread(out).shape[:2] == (250, 400)
    assert [p.name for p in tmp_path.iterdir()] == ["front.png"]  # the temp file was moved, not left behind


@pytest.mark.parametrize("objectives", [["size", "kld"], ["size", "kld", "humaneval"]])
def test_plot_html_is_self_contained(tmp_path, objectives):
    pytest.importorskip("plotly")
    rows, refs = demo_rows()
    fronts = compute_fronts(rows, objectives)
    out = plots.plot_html(fronts, refs, tmp_path / "front.html", objectives)
    html = out.read_text(encoding="utf-8")
    assert len(html) > 1_000_000  # plotly.js inline
    assert 'src="https://cdn.plot.ly' not in html
    for name in ("Q4_K_M", "cerebellum-v6", "file size (MB)", "mean KL divergence vs reference (nats)"):
        assert name in html  # 160-300 MB models: sizes in MB (0.25 GB read worse)
    assert [p.name for p in tmp_path.iterdir()] == ["front.html"]


def test_html_plot_marks_the_knee_names_points_with_a_toggle_and_shows_dominated_points():
    """Each front's knee ringed and named; every front point named by its trial id in a trace the legend and a
    button hide; dominated trials open markers at a legible opacity, with a legend entry; sizes in MB."""
    rows, refs = demo_rows()
    fronts = compute_fronts(rows, ["size", "kld"])
    fig = plots.html_figure(fronts, refs, ["size", "kld"])
    by_name = {t.name: t for t in fig.data}
    for f in fronts:
        knee = knee_point(f)
        ring = by_name[f"{f.study}: knee (export --pick knee)"]
        assert list(ring.text) == ["knee"] and ring.x[0] == pytest.approx(knee["size_bytes"] / 1e6)
        ids = by_name[f"{f.study}: trial ids"]
        assert ids.mode == "text" and set(ids.text) == {p["trial_id"] for p in f.points}
        dominated = by_name[f"{f.study}: {len(f.dominated)} dominated"]
        assert dominated.showlegend is not False and dominated.marker.opacity >= 0.5
        assert dominated.marker.symbol.endswith("-open")
    toggle = fig.layout.updatemenus[0].buttons
    hidden = toggle[0].args[1]
    assert toggle[0].args[0] == {"visible": False} and {fig.data[i].name for i in hidden} == {
        f"{f.study}: trial ids" for f in fronts}
    assert fig.layout.xaxis.title.text.startswith("file size (MB)")
    three = plots.html_figure(compute_fronts(rows, ["size", "kld", "humaneval"]), refs, ["size", "kld", "humaneval"])
    assert any(t.name.endswith("knee (export --pick knee)") for t in three.data)
    assert any(t.name.endswith("trial ids") and t.mode == "text" for t in three.data)


def test_png_plot_marks_the_knee_names_points_and_shows_dominated_points():
    rows, refs = demo_rows()
    fronts = compute_fronts(rows, ["size", "kld"])
    fig = plots.png_figure(fronts, refs, ["size", "kld"], size_inches=(8, 5), dpi=50)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("knee") == len(fronts)
    assert {p["trial_id"] for f in fronts for p in f.points} <= set(texts)
    dominated = ax.collections[0]  # the first front's dominated trials: open markers, legible
    assert dominated.get_alpha() >= 0.5 and dominated.get_facecolor().size == 0
    assert len(dominated.get_offsets()) == len(fronts[0].dominated)
    assert ax.get_xlabel().startswith("file size (MB)")
    assert any(t.get_text() == "dominated trials" for t in ax.get_legend().get_texts())


def test_sizes_follow_the_model():
    """A 5 MB model's sizes read in MB, a 12 GB one's in GB (never 0.005 GB)."""
    small = [make_row("s", f"s{i}", 0.005 + 0.001 * i, 0.1 / (i + 1)) for i in range(4)]
    big = [make_row("b", f"b{i}", 11.0 + i, 0.1 / (i + 1)) for i in range(4)]
    assert plots.html_figure(compute_fronts(small, ["size", "kld"]), [], ["size", "kld"]).layout.xaxis.title.text \
        .startswith("file size (MB)")
    fig = plots.html_figure(compute_fronts(big, ["size", "kld"]), [], ["size", "kld"])
    assert fig.layout.xaxis.title.text.startswith("file size (GB)") and max(fig.data[1].x) == pytest.approx(14.0)


def test_plot_refuses_mismatched_objectives(tmp_path):
    rows, refs = demo_rows()
    fronts = compute_fronts(rows, ["size", "kld"])
    with pytest.raises(ValueError, match="objectives"):
        plots.plot_png(fronts, refs, tmp_path / "x.png", ["size", "ppl"])
    with pytest.raises(ValueError, match="empty"):
        plots.plot_html([], refs, tmp_path / "x.html", ["size", "kld"])


def test_reference_labels_at_the_same_spot_are_spread_apart():
    """Presets that land almost on one point (Q2_K and Q3_K_S on Gemma 3 270M) get labels that do not overlap."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=60, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    labels = [ax.annotate(name, (0.5, 0.5 + i * 0.001), xytext=(7, 6), textcoords="offset points")
              for i, name in enumerate(["Q2_K", "Q3_K_S", "Q3_K_M"])]
    plots._spread_labels(fig, ax, labels)
    boxes = [label.get_window_extent() for label in labels]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(3) for j in range(i + 1, 3))
    assert labels[0].get_position() == (7, 6)  # the first keeps the default spot


def test_fronts_of_any_two_metrics_from_the_cli(tmp_path, capsys):
    """`pareto --x ppl --y humaneval`: lower PPL and higher pass@1 are both better; bpw colours the plot; --max-bpw
    filters; every metric of the table can be an axis."""
    import json

    from cerebellum_ray.core import store
    from cerebellum_ray.cli import build_parser, main

    rows = [("a", 10.0, 0.30, 4.0), ("b", 9.0, 0.20, 5.0), ("c", 11.0, 0.35, 3.0), ("d", 12.0, 0.25, 6.0),
            ("e", 9.5, 0.32, 7.0)]
    for tid, ppl, he, bpw in rows:
        store.append(tmp_path / "s", {"study": "x", "trial_id": tid, "strategy": "optuna", "status": "complete",
                                      "ppl": ppl, "humaneval": he, "bpw": bpw, "size_bytes": int(bpw * 1e8),
                                      "kld": 0.1})
    png, html = tmp_path / "f.png", tmp_path / "f.html"
    assert main(["pareto", "--store", str(tmp_path / "s"), "--x", "ppl", "--y", "humaneval", "--plot", str(png),
                 "--plot", str(html), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["colour"] == "bpw" and png.stat().st_size > 0 and html.stat().st_size > 0
    points = {p["trial_id"] for p in out["fronts"][0]["points"]}
    dominated = {t for t, ppl, he, _ in rows
                 if any(p2 <= ppl and h2 >= he and (p2, h2) != (ppl, he) for _, p2, h2, _ in rows)}
    assert points == {t for t, *_ in rows} - dominated == {"b", "c", "e"}
    assert main(["pareto", "--store", str(tmp_path / "s"), "--x", "ppl", "--y", "humaneval", "--max-bpw", "5",
                 "--json"]) == 0
    assert {p["trial_id"] for p in json.loads(capsys.readouterr().out)["fronts"][0]["points"]} == {"a", "b", "c"}
    choices = next(a for a in build_parser()._subparsers._group_actions[0].choices["pareto"]._actions
                   if a.dest == "x").choices
    assert list(choices) == list(OBJECTIVES)
