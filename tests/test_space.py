"""Search spaces: parsing, validation against the model (errors name dimension and tensor), maps from points."""

import os
from pathlib import Path

import pytest
import yaml

from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.formats.space import SpaceError, load_space, space_from_data

DEMO = "search_spaces/tiny-gemma4.yaml"


@pytest.fixture(scope="module")
def gemma4(tiny_models):
    return load_catalog(tiny_models["gemma4"])


def test_demo_space_parses(gemma4):
    space = load_space(DEMO, gemma4)
    params = [d.param for d in space.dimensions]
    assert "attn_q.L0" in params and "router.L5" in params and "attn_k" in params
    tie = next(d for d in space.dimensions if d.dimension == "ffn_gate_up")
    assert {t.split(".")[2] for t in tie.tensors} == {"ffn_gate", "ffn_up"}  # tied: one choice for both groups
    assert all("/" not in p for p in params)
    assert space.objectives == ("kld", "size") and space.directions == ("min", "min")


def test_point_to_map_covers_routers(gemma4):
    space = load_space(DEMO, gemma4)
    point = {d.param: len(d.types) - 1 for d in space.dimensions}
    point["router.L3"] = space.dimensions[[d.param for d in space.dimensions].index("router.L3")].types.index("Q8_0")
    pmap = space.map_for(gemma4, point)
    assert pmap.types["blk.3.ffn_gate_inp.weight"] == "Q8_0"
    assert pmap.types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert pmap.types["blk.0.attn_q.weight"] == "Q5_K"
    assert pmap.types["blk.0.ffn_down.weight"] != "F16"  # from the Q3_K_M base


def _space(**over):
    data = yaml.safe_load(open(DEMO))
    data.update(over)
    return data


@pytest.mark.parametrize("change,needle", [
    ({"dimensions": [{"name": "down", "select": {"group": "ffn_down"}, "types": ["Q4_K"]}]},
     "dimension down: type Q4_K is illegal for tensor blk.0.ffn_down.weight"),
    ({"dimensions": [{"name": "x", "select": {"group": "attn_qq"}, "types": ["Q4_K"]}]}, "unknown group 'attn_qq'"),
    ({"dimensions": [{"name": "x", "select": {"regex": "nothing"}, "types": ["Q4_K"]}]}, "dimension x: `select`"),
    ({"dimensions": [{"name": "x", "select": {"group": "attn_q"}, "types": ["Q4_Z"]}]}, "dimension x: unknown ggml"),
    ({"dimensions": [{"name": "x", "select": {"group": "attn_q", "layers": "0-9"}, "types": ["Q4_K"]}]},
     "layer 9 of '0-9' is not a layer of the model"),
    ({"dimensions": [{"name": "a", "select": {"group": "attn_q"}, "types": ["Q4_K"]},
                     {"name": "b", "select": {"regex": "attn_q"}, "types": ["Q4_K"]}]}, "is in two dimensions"),
    ({"objectives": ["kld", "latency"]}, "objectives.1.: 'latency' is not one of size, bpw, kld, ppl"),
    ({"base": "Q9_K"}, "unknown base preset"),
    ({"objectives": ["humaneval", "size"]}, "humaneval_limit"),
    ({"constraints": {"max_size": "12 parsecs"}}, "constraints.max_size: '12 parsecs' is not in the expected form"),
    ({"imatrix": "missing.imatrix"}, "imatrix: no such file 'missing.imatrix'"),
    ({"imatrix": {"text": "builtin", "ctxx": 64}}, "imatrix"),
    ({"evaluation": {"reference_logits": "missing.kld"}}, "evaluation.reference_logits: no such file"),
    ({"evaluation": {"reference_logits": os.path.abspath(DEMO), "chat_text": "builtin"}},
     "reference_logits brings its own tokens: leave out evaluation.chat_text"),
])
def test_invalid_spaces_are_refused_with_names(gemma4, change, needle):
    with pytest.raises(SpaceError, match=needle.replace("(", r"\(").replace("`", ".")):
        space_from_data(_space(**change), gemma4)


def test_constraints_parse(gemma4):
    space = space_from_data(_space(constraints={"max_size": "5.5MB", "max_bpw": 4.5}), gemma4)
    assert space.max_size == 5_500_000 and space.max_bpw == 4.5
    vram = space_from_data(_space(constraints={"vram": {"gb": 0.01, "context": 64}}), gemma4)
    assert 0 < vram.max_size < 0.01e9


@pytest.mark.parametrize("path", ["search_spaces/tiny-gemma4.yaml", "search_spaces/tiny-llama.yaml"])
def test_shipped_tiny_spaces_validate(tiny_models, path):
    arch = "gemma4" if "gemma4" in path else "llama"
    load_space(path, load_catalog(tiny_models[arch]))


def gemma4_26b_catalog():
    """The tensor table of Gemma 4 26B-A4B from its published shapes (../shared/notes/gemma4-26b-a4b.md), no data:
    30 layers (every 6th full attention, no attn_v there), hidden 2816, dense FFN 2112, 128 experts of width 704."""
    from cerebellum_ray.formats.catalog import ModelCatalog, TensorInfo, tensor_group, tensor_layer
    from cerebellum_ray.formats.ggml_types import TYPES

    def t(name, shape, ty="BF16"):
        n_rows = 1
        for d in shape[1:]:
            n_rows *= d
        return TensorInfo(name, tensor_group(name, len(shape)), tensor_layer(name), shape, ty,
                          n_rows * TYPES[ty].row_bytes(shape[0]), 0)

    h, tensors = 2816, [t("token_embd.weight", (2816, 262144)), t("output_norm.weight", (2816,), "F32")]
    for i in range(30):
        full = i % 6 == 5
        head, kv = (512, 2) if full else (256, 8)
        p = f"blk.{i}."
        tensors += [t(p + "attn_q.weight", (h, 16 * head)), t(p + "attn_k.weight", (h, kv * head)),
                    t(p + "attn_output.weight", (16 * head, h)), t(p + "ffn_gate.weight", (h, 2112)),
                    t(p + "ffn_up.weight", (h, 2112)), t(p + "ffn_down.weight", (2112, h)),
                    t(p + "ffn_gate_inp.weight", (h, 128), "F32"), t(p + "ffn_gate_up_exps.weight", (h, 1408, 128)),
                    t(p + "ffn_down_exps.weight", (704, h, 128)), t(p + "attn_norm.weight", (h,), "F32"),
                    t(p + "ffn_gate_inp.scale", (h,), "F32"), t(p + "ffn_down_exps.scale", (128,), "F32")]
        if not full:
            tensors.append(t(p + "attn_v.weight", (h, kv * head)))
    kv = {"general.architecture": "gemma4", "gemma4.block_count": 30, "gemma4.expert_count": 128,
          "gemma4.attention.head_count": 16, "gemma4.attention.head_count_kv": [2 if i % 6 == 5 else 8
                                                                              for i in range(30)],
          "gemma4.attention.key_length": 512, "gemma4.embedding_length": 2816}
    return ModelCatalog("gemma-4-26B-A4B (shapes only)", "gemma4", tuple(tensors), kv=kv)


def test_gemma4_26b_space_validates_against_the_real_shapes():
    cat = gemma4_26b_catalog()
    space = load_space("search_spaces/gemma4-26b-a4b.yaml", cat)
    per_layer = {d.dimension for d in space.dimensions if d.layer is not None}
    assert per_layer == {"attn_q", "attn_k", "router"}
    assert len([d for d in space.dimensions if d.dimension == "router"]) == 30
    assert 0 < space.max_size < 24e9  # fits 24 GB with a 4K context
    pmap = space.map_for(cat, {})  # the base preset itself (ffn_down_exps is in no dimension)
    # 704-wide rows take no K-quant: Q3_K_M's ffn_down rule (Q5_K below n/16, Q4_K after) falls back to Q5_1 / Q5_0
    assert pmap.types["blk.0.ffn_down_exps.weight"] == "Q5_1"
    assert pmap.types["blk.10.ffn_down_exps.weight"] == "Q5_0"


def test_cerebellum_v6_map_reproduces_the_card_counts():
    from cerebellum_ray.formats.precision_map import by_group, load_spec, resolve

    cat = gemma4_26b_catalog()
    counts = by_group(cat, resolve(cat, load_spec("search_spaces/cerebellum-v6.yaml")))
    assert counts["attn_q"] == {"Q5_K": 9, "Q2_K": 21}
    assert counts["attn_k"] == {"Q3_K": 7, "Q2_K": 23}
    assert counts["ffn_up"] == {"Q2_K": 30} and counts["ffn_gate_up_exps"] == {"Q2_K": 30}
    assert counts["ffn_gate"] == {"Q3_K": 30}
    assert counts["router"] == {"Q8_0": 1, "F32": 29}
    assert set(counts["norm"]) == {"F32"}


def test_store_schema_is_documented():
    from cerebellum_ray.core.store import SCHEMA

    doc = open("search_spaces/README.md").read()
    assert all(f"`{name}`" in doc for name in SCHEMA.names)


def test_every_shipped_space_passes_the_schema():
    """Each search space in search_spaces/ (not the fixed map cerebellum-v6.yaml) is valid against SPACE_SCHEMA."""
    from cerebellum_ray.core.errors import CerebellumError
    from cerebellum_ray.core.schema import SPACE_SCHEMA, parse_yaml, validate

    spaces = sorted((Path(__file__).resolve().parent.parent / "search_spaces").glob("*.yaml"))
    checked = 0
    for path in spaces:
        if path.name == "cerebellum-v6.yaml":
            continue
        validate(parse_yaml(path.read_text(), str(path), CerebellumError), SPACE_SCHEMA, str(path), CerebellumError)
        checked += 1
    assert checked >= 6
