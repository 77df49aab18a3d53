"""The zero-run prior on the tiny Gemma-4 model: the builder's quantizer, exact and sampled, cached; and the choice
table's sizes against the maps the space builds."""

import json

import numpy as np
import pytest

from cerebellum_ray.native import ggml as _ggml
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.predict.choices import ChoiceError, choice_table
from cerebellum_ray.formats.ggml_types import ggml_type
from cerebellum_ray.formats.imatrix import load_imatrix
from cerebellum_ray.formats.precision_map import tensor_bytes
from cerebellum_ray.predict.prior import PriorError, sample_rows, space_prior, tensor_errors
from cerebellum_ray.quant.quantize import QuantJob, quantize_tensor
from cerebellum_ray.predict.solver import solve
from cerebellum_ray.formats.space import load_space, space_from_data

SPACE = {
    "name": "prior-test",
    "base": "Q3_K_M",
    "dimensions": [
        {"name": "attn_q", "select": {"group": "attn_q", "layers": "0-1"}, "per": "layer",
         "types": ["Q2_K", "Q3_K", "Q4_K", "Q5_K"]},
        {"name": "experts", "select": {"group": "ffn_gate_up_exps", "layers": [0]}, "types": ["Q2_K", "Q4_K"]},
        {"name": "router", "select": {"group": "router", "layers": [0]}, "per": "layer",
         "types": ["Q4_0", "Q8_0", "F32"]},
    ],
}


@pytest.fixture(scope="module")
def gemma(tiny_models):
    path = tiny_models["gemma4"]
    catalog = load_catalog(path)
    return path, catalog, space_from_data(SPACE, catalog)


def test_error_decreases_with_bits_with_and_without_imatrix(gemma, tiny_imatrix):
    path, catalog, space = gemma
    for imatrix in (None, tiny_imatrix["gemma4"]["gguf"]):
        prior = space_prior(space, catalog, path, imatrix=imatrix)
        for param in ("attn_q.L0", "attn_q.L1"):
            errs = [prior.errors[param][t] for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K")]
            assert all(a > 2 * b for a, b in zip(errs, errs[1:])), errs  # about 4x per bit
            assert 0 < errs[-1] < errs[0] < 1
        router = prior.errors["router.L0"]
        assert router["Q4_0"] > router["Q8_0"] > router["F32"] == 0.0  # the source router is F32: copied
        assert prior.errors["experts"]["Q2_K"] > prior.errors["experts"]["Q4_K"] > 0
        assert prior.imatrix_digest == (None if imatrix is None else load_imatrix(imatrix).digest)
        for p, by_type in prior.bytes.items():
            t = prior.table
            assert dict(by_type) == dict(zip(t.types[t.index(p)], t.level_bytes[t.index(p)]))


def test_imatrix_changes_the_weighting(gemma, tiny_imatrix):
    path, catalog, space = gemma
    plain = space_prior(space, catalog, path)
    weighted = space_prior(space, catalog, path, imatrix=tiny_imatrix["gemma4"]["gguf"])
    assert plain.errors["attn_q.L0"]["Q2_K"] != pytest.approx(weighted.errors["attn_q.L0"]["Q2_K"], rel=1e-3)


def _manual_error(path, t, dst, vec):
    """The builder's bytes for the whole tensor (quantize_tensor over every row), dequantized by ggml."""
    src = ggml_type(t.type)
    raw = np.fromfile(path, dtype=np.uint8, count=t.n_bytes, offset=t.data_offset)
    row_bytes = src.row_bytes(t.n_per_row)
    q = quantize_tensor(QuantJob(t.name, t.shape, t.type, dst),
                        lambda first, n: raw[first * row_bytes:(first + n) * row_bytes], vec)
    w = np.empty(t.n_elements, dtype=np.float32)
    _ggml.to_float(src.id, raw, w.size, w)
    back = np.empty(t.n_elements, dtype=np.float32)
    _ggml.to_float(ggml_type(dst).id, q, back.size, back)
    imp = np.ones((t.n_experts, t.n_per_row)) if vec is None else np.asarray(vec, np.float64).reshape(t.n_experts, -1)
    w3 = w.reshape(t.n_experts, -1, t.n_per_row).astype(np.float64)
    d3 = back.reshape(w3.shape).astype(np.float64) - w3
    return float(np.einsum("emj,ej->", d3 ** 2, imp) / np.einsum("emj,ej->", w3 ** 2, imp))


def test_exact_error_is_the_builders_bytes_per_expert_slice(gemma, tiny_imatrix):
    path, catalog, _ = gemma
    imatrix = load_imatrix(tiny_imatrix["gemma4"]["gguf"])
    experts = catalog["blk.0.ffn_gate_up_exps.weight"]  # 3-D: 16 experts, one importance slice each
    dense = catalog["blk.1.attn_q.weight"]
    pairs = [(experts.name, "Q2_K"), (dense.name, "Q3_K")]
    errs, computed, cached = tensor_errors(catalog, path, pairs, imatrix, max_rows=1 << 20)  # every row
    assert (computed, cached) == (2, 0)
    for name, ty in pairs:
        t = catalog[name]
        assert errs[(name, ty)] == pytest.approx(_manual_error(path, t, ty, imatrix.vector(name)), rel=1e-9)


def test_sampled_rows_are_deterministic_stratified_and_close(gemma):
    path, catalog, _ = gemma
    experts = catalog["blk.0.ffn_gate_up_exps.weight"]  # 192 rows per expert x 16
    rows = sample_rows(experts, 256)
    assert len(rows) == 256 and np.array_equal(rows, sample_rows(experts, 256))
    assert np.array_equal(np.bincount(rows // 192, minlength=16), np.full(16, 16))  # 16 rows from each expert
    assert sample_rows(experts, 4096) is None  # small enough: every row
    exact, _, _ = tensor_errors(catalog, path, [(experts.name, "Q3_K")], max_rows=1 << 20)
    sampled, _, _ = tensor_errors(catalog, path, [(experts.name, "Q3_K")], max_rows=256)
    assert sampled[(experts.name, "Q3_K")] == pytest.approx(exact[(experts.name, "Q3_K")], rel=0.1)
    with pytest.raises(PriorError, match="max_rows"):
        sample_rows(experts, 0)


def test_cached_beside_the_tensor_cache(gemma, tiny_imatrix, cache):
    path, catalog, space = gemma
    imatrix = tiny_imatrix["gemma4"]["gguf"]
    first = space_prior(space, catalog, path, imatrix=imatrix, cache=cache)
    n_pairs = first.computed
    assert n_pairs > 0 and first.from_cache == 0
    entries = sorted((cache.directory / "prior").glob("*/*.json"))
    assert len(entries) == n_pairs
    second = space_prior(space, catalog, path, imatrix=imatrix, cache=cache)
    assert (second.computed, second.from_cache) == (0, n_pairs)
    assert second == first
    # without the imatrix every key differs (the router has an importance vector too): computed, not read
    other = space_prior(space, catalog, path, cache=cache)
    assert (other.computed, other.from_cache) == (n_pairs, 0)
    # a damaged entry is computed again and replaced
    entries[0].write_text("{not json")
    third = space_prior(space, catalog, path, imatrix=imatrix, cache=cache)
    assert (third.computed, third.from_cache) == (1, n_pairs - 1) and third == first
    assert json.loads(entries[0].read_text())["format"] == 1


def test_choice_table_sizes_are_the_maps_sizes(tiny_models):
    path = tiny_models["gemma4"]
    catalog = load_catalog(path)
    from pathlib import Path

    space = load_space(Path(__file__).resolve().parent.parent / "search_spaces" / "tiny-gemma4.yaml", catalog)
    table = choice_table(space, catalog)
    rng = np.random.default_rng(0)
    points = [{}, {"attn_k": 0}]
    for _ in range(6):
        points.append({d.param: int(rng.integers(len(d.types))) for d in space.dimensions})
    for point in points:
        pmap = space.map_for(catalog, point)
        assert table.size_of(point) == tensor_bytes(catalog, pmap)
        assert table.levels_of_map(dict(pmap.types)) == table.levels_of_point(point)
    assert table.min_bytes == table.size_of({d.param: 0 for d in space.dimensions})
    assert table.max_bytes == table.size_of({d.param: len(d.types) - 1 for d in space.dimensions})
    assert table.bytes_for_bpw(table.bpw_of(table.max_bytes)) == table.max_bytes
    changed = dict(space.map_for(catalog, {}).types)
    changed["blk.0.attn_v.weight"] = "Q8_0"  # a tensor outside every dimension: no choice of the table
    assert table.levels_of_map(changed) is None
    with pytest.raises(ChoiceError, match="outside its 3 candidate types"):
        table.levels_of_point({"attn_k": 3})
    with pytest.raises(ChoiceError, match="not a parameter"):
        table.levels_of_point({"nope": 0})


def test_base_level_outside_the_candidates(gemma):
    """A dimension whose base-map types are no candidate gets an extra level: partial points sit on it."""
    path, catalog, _ = gemma
    data = {"name": "x", "base": "Q3_K_M",
            "dimensions": [{"name": "q", "select": {"group": "attn_q", "layers": [0]}, "types": ["Q5_K", "Q6_K"]}]}
    space = space_from_data(data, catalog)
    prior = space_prior(space, catalog, path)
    t = prior.table
    assert t.levels[0] == (("Q5_K",), ("Q6_K",), ("Q3_K",)) and t.base_level == (2,)
    assert t.levels_of_point({}) == (2,)
    assert prior.base_errors["q"] > prior.errors["q"]["Q5_K"] > prior.errors["q"]["Q6_K"]
    with pytest.raises(ChoiceError, match="base level"):
        t.point_of_levels((2,))
    sol = solve(prior.problem(), prior.table.max_bytes)  # the zero-run guess: least summed error that fits
    assert dict(sol.point) == {"q": 1}
