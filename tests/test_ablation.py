"""The ablation procedure's decisions (keep-if-better, per-layer follow-up, routers not stacked), on synthetic
results; the Ray side is the same batch runner the other strategies use (tests/test_search.py)."""

import pytest

from cerebellum_ray.study.ablation import _point_key, decide, group_moves, single_moves, summary_table
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.formats.precision_map import resolve
from cerebellum_ray.formats.space import load_space, space_from_data


@pytest.fixture(scope="module")
def setup(tiny_models):
    cat = load_catalog(tiny_models["gemma4"])
    space = load_space("search_spaces/tiny-gemma4.yaml", cat)
    base_map = resolve(cat, space.base)
    return space, base_map, cat


def _result(kld, size, se=0.01):
    return {"kld": kld, "kld_se": se, "size_bytes": size}


def test_group_moves_cover_every_dimension_and_type(setup):
    space, base_map, cat = setup
    moves = group_moves(space, base_map)
    labels = {m.label for m, _ in moves}
    assert "group attn_q=Q2_K" in labels and "group attn_k=Q4_K" in labels
    assert "group attn_k=Q3_K" not in labels  # Q3_K_M already gives attn_k Q3_K: no move
    assert not any(m.dimension == "router" for m, _ in moves)  # routers only one layer at a time
    for move, point in moves:
        assert set(point) == set(move.params)
        moved = {t for p in move.params for t in space.dimension(p).tensors}
        changed = set(space.map_for(cat, point).changed_from(base_map))
        assert changed and changed <= moved  # the move changes its own tensors and nothing else


def test_moves_start_from_the_preset_itself_even_when_a_dimension_is_mixed(tiny_models):
    """Q4_K_M gives some attn_v layers more bits (use_more_bits): a per-group dimension cannot hold that
    as a point, but the ablation's base (the empty point) is the preset exactly and each move changes only its own
    tensors."""
    cat = load_catalog(tiny_models["gemma4"])
    space = space_from_data({
        "name": "mixed", "base": "Q4_K_M", "objectives": ["kld", "size"],
        "dimensions": [{"name": "attn_v", "select": {"group": "attn_v"}, "per": "group",
                        "types": ["Q4_K", "Q6_K"]},
                       {"name": "attn_q", "select": {"group": "attn_q"}, "per": "group", "types": ["Q4_K", "Q5_K"]}],
    }, cat)
    base_map = resolve(cat, space.base)
    attn_v = space.dimension("attn_v")
    assert len({base_map.types[t] for t in attn_v.tensors}) > 1, "the preset no longer mixes attn_v types"
    assert space.map_for(cat, {}).digest == base_map.digest
    assert space.point_of_map(cat, base_map.types) is None  # not a point of the space: warm start leaves it out
    moves = {m.label: p for m, p in group_moves(space, base_map)}
    assert set(moves) == {"group attn_v=Q4_K", "group attn_v=Q6_K", "group attn_q=Q5_K"}
    for label, point in moves.items():
        changed = space.map_for(cat, point).changed_from(base_map)
        assert changed and {t for t in changed} <= set(space.dimension(next(iter(point))).tensors), label
    q6 = space.map_for(cat, moves["group attn_v=Q6_K"])  # every attn_v at Q6_K, attn_q at the preset's Q4_K
    assert space.point_of_map(cat, q6.types) == {"attn_v": 1, "attn_q": 0}


def test_decisions_follow_the_card(setup):
    space, base_map, _ = setup
    phase1 = group_moves(space, base_map)
    attn_q_down = next((m, p) for m, p in phase1 if m.label == "group attn_q=Q2_K")
    attn_k_up = next((m, p) for m, p in phase1 if m.label == "group attn_k=Q4_K")
    phase1 = [attn_q_down, attn_k_up]
    phase2 = single_moves(space, base_map, "attn_q", ["Q2_K"], "layer")
    phase3 = single_moves(space, base_map, "router", ["Q8_0"], "router")[:3]
    results = {_point_key({}): _result(1.0, 1000)}
    results[_point_key(attn_q_down[1])] = _result(1.3, 990)  # cheaper but worse: mixed, go per layer
    results[_point_key(attn_k_up[1])] = _result(0.8, 1010)  # promotion that clearly helps: keep
    for i, (_m, p) in enumerate(phase2):  # layers 0 and 1 sensitive, the rest tolerate Q2_K
        results[_point_key(p)] = _result(1.2 if i < 2 else 1.005, 998)
    for i, (_m, p) in enumerate(phase3):  # router moves: two help, the best one is kept alone
        results[_point_key(p)] = _result([0.9, 0.95, 1.1][i], 1001)
    decisions, final = decide(results[_point_key({})], phase1, phase2, phase3, results)
    by_label = {m.label: d for m, _, d in decisions}
    assert by_label["group attn_q=Q2_K"].startswith("mixed")
    assert by_label["group attn_k=Q4_K"] == "keep"
    assert [by_label[m.label] for m, _ in phase2] == ["reject", "reject", "keep", "keep", "keep", "keep"]
    assert by_label[phase3[0][0].label].startswith("keep (best router")
    assert by_label[phase3[1][0].label] == "reject"  # helped, but routers are not stacked
    attn_q = [d for d in space.dimensions if d.dimension == "attn_q"]
    q2k = attn_q[0].types.index("Q2_K")
    assert [final.get(d.param) == q2k for d in attn_q] == [False, False, True, True, True, True]
    assert final["attn_k"] == attn_k_up[1]["attn_k"]
    routers_moved = [d.param for d in space.dimensions if d.dimension == "router" and d.param in final]
    assert routers_moved == [phase3[0][0].params[0]]
    # the final partial point is the preset plus exactly the kept moves
    assert set(final) == {d.param for d in attn_q[2:]} | {"attn_k", phase3[0][0].params[0]}
    table = summary_table(decisions, results[_point_key({})], None, "Q3_K_M")
    assert "| group attn_k=Q4_K | 6 | 0.80000 | -20.0% | +1.00% | keep |" in table
    assert "| base (Q3_K_M) | | 1.00000 |" in table


def test_summary_against_a_base_that_is_the_reference_itself_shows_absolute_changes(setup):
    """A base scored against itself has KLD ~ 0 (float noise): relative changes would be meaningless."""
    space, base_map, _ = setup
    move, point = group_moves(space, base_map)[0]
    results = {_point_key({}): _result(1e-11, 1000, se=0.0), _point_key(point): _result(0.05, 990)}
    decisions, final = decide(results[_point_key({})], [(move, point)], [], [], results)
    assert decisions[0][2] == "reject" and final == {}
    table = summary_table(decisions, results[_point_key({})], None, "Q3_K_M")
    assert f"| {move.label} | {move.n_tensors} | 0.05000 | +0.05000 (abs.) | -1.00% | reject |" in table
