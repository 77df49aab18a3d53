"""The guided strategy and `solve`, end to end on Ray with the tiny MoE (the math of prior, surrogate and solver is
tested in test_prior.py, test_surrogate.py and test_solver.py)."""

import llama_cpp  # noqa: F401

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cerebellum_ray.core import store
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.study.guided import GuidedError, require_kld_objective, sensitivity_proposals
from cerebellum_ray.study.run import SearchOptions
from cerebellum_ray.study.strategies import run_search
from cerebellum_ray.results.recommend import SolveError, make_budget, solve_study
from cerebellum_ray.formats.space import load_space

SPACE = str(Path("search_spaces/tiny-gemma4.yaml").resolve())


def test_sensitivities_start_at_the_base_and_take_each_familys_cheapest_type_first(tiny_models):
    cat = load_catalog(tiny_models["gemma4"])
    space = load_space(SPACE, cat)
    props = sensitivity_proposals(space, cat, has_imatrix=False, limit=8)
    assert [p.label for p in props[:1]] == ["base"] and props[0].point == {}
    assert len(props) == 8 and all(p.phase == "sensitivity" and p.predicted_kld is None for p in props)
    first_round = [p.label for p in props[1:6]]  # one move per family before any family's second move
    assert first_round == ["group attn_q=Q2_K", "group attn_k=Q2_K", "group ffn_gate_up=Q2_K",
                           "group experts_gate_up=Q2_K", "layer router.L0=Q4_0"]
    assert all(p.label.split("=")[1] != "Q2_K" for p in props[6:])


def test_guided_needs_kld_among_the_objectives(tiny_models, tmp_path):
    cat = load_catalog(tiny_models["gemma4"])
    f = tmp_path / "ppl.yaml"
    f.write_text(Path(SPACE).read_text().replace("objectives: [kld, size]", "objectives: [ppl, size]"))
    with pytest.raises(GuidedError, match=r"need kld \(e.g. objectives: \[kld, size\]\)"):
        require_kld_objective(load_space(f, cat))


def test_budgets_are_refused_unless_exactly_one_is_given():
    with pytest.raises(SolveError, match="give one budget"):
        make_budget(max_bpw=4.5, max_gb=1.0)
    with pytest.raises(SolveError, match="give one budget"):
        make_budget()
    with pytest.raises(SolveError, match="go together"):
        make_budget(vram_gb=24)
    with pytest.raises(SolveError, match="must be positive"):
        make_budget(max_bpw=-1)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cerebellum_ray.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_guided_search_then_solve_and_verify(tiny_models, tmp_path):
    """guided on Ray: sensitivities from the base, then solved maps with their predictions stored before they ran,
    a non-empty front; solve answers a budget from the store alone with a map `build --map` takes; --verify adds
    exactly one row."""
    source = str(tiny_models["gemma4"])
    store_dir = tmp_path / "store"
    opts = SearchOptions(space_file=SPACE, source=source, study="g", store_dir=str(store_dir), strategy="guided",
                         trials=12, verbose=False, cache_dir=str(tmp_path / "cache"), num_cpus=2, seed=0)
    run_search(opts)
    import ray

    ray.shutdown()
    rows = store.rows(store_dir, ["g"])
    assert len(rows) == 12 and {r["strategy"] for r in rows} == {"guided"}
    by_phase = {}
    for r in rows:
        by_phase.setdefault(r["phase"], []).append(r)
    assert {"sensitivity", "solved"} <= set(by_phase)
    assert any(r["label"] == "base" and r["n_changed"] == 0 for r in by_phase["sensitivity"])
    assert all(r["predicted_kld"] is None for r in by_phase["sensitivity"])
    solved = [r for r in by_phase["solved"] if r["status"] == "complete"]
    assert solved and all(r["predicted_kld"] > 0 and r["predicted_kld_se"] > 0 for r in solved)
    assert len({r["map_hash"] for r in rows}) == 12  # nothing measured twice
    record = json.loads(next((store_dir / "_studies").glob("*.json")).read_text())
    assert record["source"] == str(Path(source).resolve()) and record["strategy"] == "guided"

    r = _cli("pareto", "--store", store_dir, "--study", "g", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["fronts"][0]["points"], r.stderr

    sizes = sorted(r["bpw"] for r in solved)
    budget = (sizes[0] + sizes[-1]) / 2
    result = solve_study(str(store_dir), "g", make_budget(max_bpw=budget))
    assert result.bpw <= budget and result.predicted["kld_se"] > 0 and result.fit["rows"] >= 3
    measured_ppl = [r["ppl"] for r in rows if r["status"] == "complete"]
    assert min(measured_ppl) / 2 < result.predicted["ppl"] < 2 * max(measured_ppl) and result.predicted["ppl_se"] > 0
    again = solve_study(str(store_dir), "g", make_budget(max_bpw=budget))
    assert again.map == result.map  # re-solving needs no new trial and gives the same answer

    map_file, out = tmp_path / "solved.json", tmp_path / "solved.gguf"
    r = _cli("solve", "--store", store_dir, "--study", "g", "--max-bpw", budget, "--out-map", map_file, "--json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert set(answer) >= {"map", "bpw", "size_bytes", "predicted", "measured"} and answer["map"] == dict(result.map)
    r = _cli("build", "--source", source, "--map", map_file, "--out", out, "--no-cache", "--json")
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == answer["size_bytes"]

    n = len(store.rows(store_dir, ["g"]))
    r = _cli("solve", "--store", store_dir, "--study", "g", "--max-bpw", budget, "--verify", "--num-cpus", 2, "--json")
    assert r.returncode == 0, r.stderr
    verified = json.loads(r.stdout)["verified"]
    after = store.rows(store_dir, ["g"])
    assert len(after) == n + 1
    row = next(x for x in after if x["trial_id"] == verified["trial_id"])
    assert row["strategy"] == "solve" and row["phase"] == "verify" and dict(row["map"]) == answer["map"]
    assert row["predicted_kld"] == pytest.approx(answer["predicted"]["kld"]) and row["kld"] == verified["kld"]


def test_the_batch_adds_the_most_hypervolume_first():
    """hypervolume_batch: candidates taken by the area they add to the measured front and to those already taken;
    one that adds nothing is never taken."""
    import numpy as np

    from cerebellum_ray.study.guided import hypervolume_batch

    measured = [(0, 1.0), (10, 0.0)]
    sizes, values = np.array([5.0, 5.0, 1.0, 9.0, 11.0]), np.array([0.5, 0.6, 0.99, 0.01, 0.5])
    assert hypervolume_batch(measured, sizes, values, 5) == [0, 3, 2]  # (5, 0.6) after (5, 0.5), (11, 0.5): nothing
    assert hypervolume_batch(measured, sizes, values, 1) == [0]



def test_solve_by_code_kld_picks_what_the_code_corpus_prefers(tiny_models, tmp_path):
    """Planted rows where the text KLD depends only on attn_q and the code KLD only on ffn_gate_up: at the same
    budget, solving by kld spends the bytes on attn_q and solving by kld_code on ffn_gate_up; each answer predicts
    the other metric beside its own."""
    import random

    from cerebellum_ray.formats.precision_map import tensor_bytes

    source = str(tiny_models["gemma4"])
    catalog = load_catalog(source)
    space = load_space(SPACE, catalog)
    dims = {d.param: len(d.types) for d in space.dimensions}
    rng = random.Random(0)
    points = [{}] + [{p: rng.randrange(n) for p, n in dims.items()} for _ in range(60)]
    for i, point in enumerate(points):
        full = {p: point.get(p, 0) for p in dims}
        text = 0.05 + sum(0.2 / (1 + full[p]) for p in dims if p.startswith("attn_q"))
        code = 0.05 + 0.5 / (1 + full["ffn_gate_up"])
        pmap = space.map_for(catalog, point)
        size = tensor_bytes(catalog, pmap)
        store.append(tmp_path / "store", {
            "study": "p", "trial_id": f"t{i}", "strategy": "optuna", "status": "complete", "map": dict(pmap.types),
            "map_hash": pmap.digest, "size_bytes": size, "bpw": 8 * size / catalog.n_elements, "kld": text,
            "kld_se": 1e-3 * text, "kld_code": code, "kld_code_se": 1e-3 * code, "eval_hash": "e",
            "params": json.dumps(point)})
    bpws = sorted(8 * tensor_bytes(catalog, space.map_for(catalog, p)) / catalog.n_elements for p in points)
    budget = make_budget(max_bpw=bpws[len(bpws) // 2])
    by_text = solve_study(str(tmp_path / "store"), "p", budget, space_file=SPACE, source=source)
    by_code = solve_study(str(tmp_path / "store"), "p", budget, space_file=SPACE, source=source, metric="kld_code")
    assert by_text.metric == "kld" and by_code.metric == "kld_code"
    assert by_code.choices["ffn_gate_up"] == space_types(space, "ffn_gate_up")[-1]  # the largest type
    assert by_code.predicted["kld_code"] < by_text.predicted["kld_code"]
    assert by_text.predicted["kld"] < by_code.predicted["kld"]
    assert {"kld", "kld_se", "kld_code", "kld_code_se"} <= set(by_text.predicted) & set(by_code.predicted)
    with pytest.raises(SolveError, match="--metric ppl"):
        solve_study(str(tmp_path / "store"), "p", budget, space_file=SPACE, source=source, metric="ppl")


def space_types(space, param: str) -> tuple[str, ...]:
    return next(d.types for d in space.dimensions if d.param == param)


def _plant_study(tiny_models, store_dir, n: int = 40) -> tuple[str, list[dict]]:
    """Rows of study "p": random points of the space whose text KLD depends only on attn_q (as above)."""
    import random

    from cerebellum_ray.formats.precision_map import tensor_bytes

    source = str(tiny_models["gemma4"])
    catalog = load_catalog(source)
    space = load_space(SPACE, catalog)
    dims = {d.param: len(d.types) for d in space.dimensions}
    rng = random.Random(1)
    rows = []
    for i, point in enumerate([{}] + [{p: rng.randrange(k) for p, k in dims.items()} for _ in range(n)]):
        full = {p: point.get(p, 0) for p in dims}
        kld = 0.05 + sum(0.2 / (1 + full[p]) for p in dims if p.startswith("attn_q"))
        pmap = space.map_for(catalog, point)
        size = tensor_bytes(catalog, pmap)
        rows.append({"study": "p", "trial_id": f"t{i}", "strategy": "optuna", "status": "complete",
                     "map": dict(pmap.types), "map_hash": pmap.digest, "size_bytes": size,
                     "bpw": 8 * size / catalog.n_elements, "kld": kld, "kld_se": 1e-3 * kld, "eval_hash": "e",
                     "params": json.dumps(point)})
    for r in rows:
        store.append(store_dir, r)
    return source, rows


def test_solve_never_answers_worse_than_a_measured_row(tiny_models, tmp_path, capsys, monkeypatch):
    """A measured row under the budget that beats the prediction (a preset, outside the surrogate's fit) is the
    answer: named, with the margin and its SE, its map in --out-map; --verify of a solved map that measures worse
    leaves it the answer; without it, the prediction is the answer and the best measured row is named."""
    from cerebellum_ray.cli import main
    from cerebellum_ray.formats.precision_map import MapSpec, resolve, tensor_bytes
    from cerebellum_ray.results import recommend

    store_dir = tmp_path / "store"
    source, rows = _plant_study(tiny_models, store_dir)
    catalog = load_catalog(source)
    lucky = resolve(catalog, MapSpec(base="Q4_K_M"))
    size = tensor_bytes(catalog, lucky)
    bpw = 8 * size / catalog.n_elements
    store.append(store_dir, {"study": "p", "trial_id": "lucky", "strategy": "preset", "label": "Q4_K_M",
                             "status": "complete", "map": dict(lucky.types), "map_hash": lucky.digest,
                             "size_bytes": size, "bpw": bpw, "kld": 0.001, "kld_se": 0.0002, "eval_hash": "e"})
    budget = make_budget(max_bpw=bpw + 0.01)
    result = solve_study(str(store_dir), "p", budget, space_file=SPACE, source=source)
    answer = result.answer
    assert answer["from"] == "measured" and answer["trial_id"] == "lucky" and answer["map"] == dict(lucky.types)
    versus = answer["versus"]
    assert versus["from"] == "solved" and versus["value"] == result.predicted["kld"]
    assert versus["better_by"] == pytest.approx(result.predicted["kld"] - 0.001)
    assert versus["better_by_se"] == pytest.approx((result.predicted["kld_se"] ** 2 + 0.0002 ** 2) ** 0.5)

    map_file = tmp_path / "best.json"
    args = ["solve", "--store", str(store_dir), "--study", "p", "--max-bpw", str(bpw + 0.01), "--space", SPACE,
            "--source", source, "--out-map", str(map_file)]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"map", "predicted", "measured", "bpw", "size_bytes"} <= set(data)  # the solved map's keys, as before
    assert data["answer"]["trial_id"] == "lucky" and json.loads(map_file.read_text()) == dict(lucky.types)
    assert main(args) == 0
    assert "answer: the measured trial lucky (Q4_K_M)" in capsys.readouterr().out

    worse = {"trial_id": "v1", "kld": 0.3, "kld_se": 0.003, "kld_code": None, "kld_code_se": None, "ppl": 10.0}
    monkeypatch.setattr(recommend, "verify_solution", lambda *a, **k: worse)
    assert main([*args, "--verify", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verified"]["trial_id"] == "v1" and data["answer"]["trial_id"] == "lucky"
    assert data["answer"]["versus"]["from"] == "verified" and data["answer"]["versus"]["value"] == 0.3

    store.row_path(store_dir, "p", "lucky").unlink()
    result = solve_study(str(store_dir), "p", budget, space_file=SPACE, source=source)
    best = min((r for r in rows if r["bpw"] <= bpw + 0.01), key=lambda r: r["kld"])
    if result.predicted["kld"] < best["kld"]:
        assert result.answer["from"] == "solved" and result.answer["versus"]["trial_id"] == best["trial_id"]
    else:
        assert result.answer["from"] == "measured" and result.answer["trial_id"] == best["trial_id"]
