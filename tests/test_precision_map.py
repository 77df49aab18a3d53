"""Precision maps: parsing, rule semantics, legality, tensor-type-file round trip, sizes."""

import json

import pytest

from cerebellum_ray.formats.catalog import ModelCatalog, TensorInfo, tensor_group
from cerebellum_ray.formats.ggml_types import TYPES, fallback_type, legal_types
from cerebellum_ray.formats.precision_map import (
    MapError, MapSpec, Rule, by_group, load_spec, parse_tensor_type_lines, resolve, spec_from_data, tensor_bytes,
    to_tensor_type_lines,
)


def _t(name, shape, type_="F16"):
    n = 1
    for d in shape:
        n *= d
    return TensorInfo(name, tensor_group(name, len(shape)), None if not name.startswith("blk") else
                      int(name.split(".")[1]), tuple(shape), type_, n * TYPES[type_].type_size //
                      TYPES[type_].block_size, 0)


@pytest.fixture
def cat():
    tensors = [_t("token_embd.weight", (256, 100)), _t("output_norm.weight", (256,), "F32")]
    for i in range(2):
        tensors += [
            _t(f"blk.{i}.attn_norm.weight", (256,), "F32"),
            _t(f"blk.{i}.attn_q.weight", (256, 256)),
            _t(f"blk.{i}.ffn_down.weight", (352, 256)),
            _t(f"blk.{i}.ffn_gate_inp.weight", (256, 8), "F32"),
            _t(f"blk.{i}.ffn_gate_up_exps.weight", (256, 192, 8)),
        ]
    return ModelCatalog("mem.gguf", "gemma4", tuple(tensors), kv={})


def test_groups():
    assert tensor_group("blk.3.ffn_gate_inp.weight", 2) == "router"
    assert tensor_group("blk.3.ffn_gate_inp.scale", 1) == "norm"
    assert tensor_group("blk.3.ffn_down_exps.scale", 1) == "norm"
    assert tensor_group("blk.3.layer_output_scale.weight", 1) == "norm"
    assert tensor_group("blk.3.ffn_gate_up_exps.weight", 3) == "ffn_gate_up_exps"
    assert tensor_group("blk.3.ffn_gate.weight", 2) == "ffn_gate"
    assert tensor_group("blk.3.attn_q_norm.weight", 1) == "norm"
    assert tensor_group("output.weight", 2) == "output"
    assert tensor_group("blk.3.attn_q.bias", 1) == "other"


def test_legal_types_and_fallback_table():
    assert "Q4_K" in legal_types(256) and "Q4_K" not in legal_types(352)
    assert "Q5_0" in legal_types(352) and "Q4_0" in legal_types(352)
    assert fallback_type("Q4_K", 352) == "Q5_0"
    assert fallback_type("Q6_K", 352) == "Q8_0"
    assert fallback_type("IQ2_XS", 352) == "IQ4_NL"
    assert fallback_type("Q4_K", 100) == "F16"  # 100 is not a multiple of 32 either
    assert fallback_type("Q4_K", 512) == "Q4_K"


def test_rules_apply_to_routers_and_exact_names_win(cat):
    spec = MapSpec(rules=(Rule("ffn_gate_inp", "Q4_0"), Rule("blk.1.ffn_gate_inp.weight", "Q8_0")))
    pmap = resolve(cat, spec)
    assert pmap.types["blk.0.ffn_gate_inp.weight"] == "Q4_0"
    assert pmap.types["blk.1.ffn_gate_inp.weight"] == "Q8_0"  # exact name beats the earlier regex
    assert pmap.types["blk.0.attn_q.weight"] == "F16"  # untouched: source type


def test_first_matching_regex_wins_like_llama_quantize(cat):
    pmap = resolve(cat, MapSpec(rules=(Rule(r"blk\.0\.", "Q8_0"), Rule("attn_q", "Q4_K"))))
    assert pmap.types["blk.0.attn_q.weight"] == "Q8_0"
    assert pmap.types["blk.1.attn_q.weight"] == "Q4_K"
    assert pmap.types["blk.0.attn_norm.weight"] == "F32"  # regexes never touch 1-D tensors


def test_one_d_tensors_refuse_a_new_type(cat):
    with pytest.raises(MapError, match="1-D"):
        resolve(cat, MapSpec(rules=(Rule("blk.0.attn_norm.weight", "Q8_0"),)))


def test_illegal_type_refused_then_fallback_reported(cat):
    with pytest.raises(MapError, match=r"blk\.0\.ffn_down\.weight.*352.*Legal types"):
        resolve(cat, MapSpec(rules=(Rule("ffn_down", "Q4_K"),)))
    pmap = resolve(cat, MapSpec(rules=(Rule("ffn_down", "Q4_K"),), fallback=True))
    assert {f.tensor: f.got for f in pmap.fallbacks} == {"blk.0.ffn_down.weight": "Q5_0", "blk.1.ffn_down.weight":
                                                        "Q5_0"}


def test_unknown_type_and_bad_regex(cat):
    with pytest.raises(ValueError, match="unknown ggml type"):
        Rule("attn_q", "Q4_Z")
    with pytest.raises(MapError, match="regular expression"):
        resolve(cat, MapSpec(rules=(Rule("attn_q[", "Q4_K"),)))


def test_sizes_are_exact_arithmetic(cat):
    pmap = resolve(cat, MapSpec(rules=(Rule("attn_q", "Q4_K"), Rule("ffn_gate_up_exps", "Q2_K"))))
    q4k = 256 * 256 // 256 * 144
    q2k = 192 * 8 * (256 // 256) * 84
    f16_rest = 2 * (256 * 100) + 2 * 2 * 352 * 256
    f32 = 4 * (256 + 2 * 256 + 2 * 256 * 8)
    assert tensor_bytes(cat, pmap) == 2 * q4k + 2 * q2k + f16_rest + f32
    assert by_group(cat, pmap)["attn_q"] == {"Q4_K": 2}


def test_tensor_type_file_round_trip(cat, tmp_path):
    pmap = resolve(cat, MapSpec(rules=(Rule("attn_q", "Q5_K"), Rule("ffn_gate_up_exps", "Q2_K"))))
    text = to_tensor_type_lines(pmap, cat)
    assert r"^blk\.0\.attn_q\.weight$=q5_k" in text.splitlines()
    path = tmp_path / "types.txt"
    path.write_text(text)
    again = resolve(cat, load_spec(path))
    assert again.types == pmap.types and again.digest == pmap.digest


def test_parse_formats(tmp_path):
    assert parse_tensor_type_lines("attn_q=q5_k\nffn_up=Q2_K  blk.8.ffn_gate_inp.weight=q8_0") == [
        Rule("attn_q", "Q5_K"), Rule("ffn_up", "Q2_K"), Rule("blk.8.ffn_gate_inp.weight", "Q8_0")]
    with pytest.raises(MapError, match="malformed"):
        parse_tensor_type_lines("attn_q")
    (tmp_path / "m.yaml").write_text("base: q3_k_m\nfallback: true\ntypes:\n  attn_q: Q5_K\n")
    spec = load_spec(tmp_path / "m.yaml")
    assert spec.base == "Q3_K_M" and spec.fallback and spec.rules == (Rule("attn_q", "Q5_K"),)
    (tmp_path / "m.json").write_text(json.dumps({"attn_q": "Q5_K", "ffn_up": "Q2_K"}))
    assert load_spec(tmp_path / "m.json").rules == (Rule("attn_q", "Q5_K"), Rule("ffn_up", "Q2_K"))
    with pytest.raises(MapError, match="unknown base preset"):
        spec_from_data({"base": "Q9_K"})
    with pytest.raises(MapError, match="unknown key .bas.; allowed: base, fallback, like, types"):
        spec_from_data({"types": {}, "bas": "Q4_K_M"})
