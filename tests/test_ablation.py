"""The ablation procedure's decisions (keep-if-better, per-layer follow-up, routers not stacked), on synthetic
results; the Ray side is the same batch runner the other strategies use (tests/test_search.py)."""

import pytest

from cerebellum_ray.ablation import _point_key, decide, group_moves, single_moves, summary_table
from cerebellum_ray.catalog import load_catalog
from cerebellum_ray.precision_map import resolve
from cerebellum_ray.space import load_space


@pytest.fixture(scope="module")
def setup(tiny_models):
    cat = load_catalog(tiny_models["gemma4"])
    space = load_space("search_spaces/tiny-gemma4.yaml", cat)
    base_map = resolve(cat, space.base)
    return space, base_map, space.base_point(base_map)


def _result(kld, size, se=0.01):
    return {"kld": kld, "kld_se": se, "size_bytes": size}


def test_group_moves_cover_every_dimension_and_type(setup):
    space, _, base = setup
    moves = group_moves(space, base)
    labels = {m.label for m, _ in moves}
    assert "group attn_q=Q2_K" in labels and "group attn_k=Q4_K" in labels
    assert not any(m.dimension == "router" for m, _ in moves)  # routers only one layer at a time
    for move, point in moves:
        changed = {p for p in point if point[p] != base[p]}
        assert changed == set(move.params)


def test_decisions_follow_the_card(setup):
    space, base_map, base = setup
    phase1 = group_moves(space, base)
    attn_q_down = next((m, p) for m, p in phase1 if m.label == "group attn_q=Q2_K")
    attn_k_up = next((m, p) for m, p in phase1 if m.label == "group attn_k=Q4_K")
    phase1 = [attn_q_down, attn_k_up]
    phase2 = single_moves(space, base, "attn_q", ["Q2_K"], "layer")
    phase3 = single_moves(space, base, "router", ["Q8_0"], "router")[:3]
    results = {_point_key(base): _result(1.0, 1000)}
    results[_point_key(attn_q_down[1])] = _result(1.3, 990)  # cheaper but worse: mixed, go per layer
    results[_point_key(attn_k_up[1])] = _result(0.8, 1010)  # promotion that clearly helps: keep
    for i, (_m, p) in enumerate(phase2):  # layers 0 and 1 sensitive, the rest tolerate Q2_K
        results[_point_key(p)] = _result(1.2 if i < 2 else 1.005, 998)
    for i, (_m, p) in enumerate(phase3):  # router moves: two help, the best one is kept alone
        results[_point_key(p)] = _result([0.9, 0.95, 1.1][i], 1001)
    decisions, final = decide(space, base, base_map, results[_point_key(base)], phase1, phase2, phase3, results)
    by_label = {m.label: d for m, _, d in decisions}
    assert by_label["group attn_q=Q2_K"].startswith("mixed")
    assert by_label["group attn_k=Q4_K"] == "keep"
    assert [by_label[m.label] for m, _ in phase2] == ["reject", "reject", "keep", "keep", "keep", "keep"]
    assert by_label[phase3[0][0].label].startswith("keep (best router")
    assert by_label[phase3[1][0].label] == "reject"  # helped, but routers are not stacked
    attn_q = [d for d in space.dimensions if d.dimension == "attn_q"]
    q2k = attn_q[0].types.index("Q2_K")
    assert [final[d.param] == q2k for d in attn_q] == [False, False, True, True, True, True]
    assert final["attn_k"] == attn_k_up[1]["attn_k"]
    routers_moved = [d.param for d in space.dimensions if d.dimension == "router" and final[d.param] != base[d.param]]
    assert routers_moved == [phase3[0][0].params[0]]
    table = summary_table(decisions, results[_point_key(base)], None)
    assert "| group attn_k=Q4_K | 1 | 0.80000 | -20.0% | +1.00% | keep |" in table
