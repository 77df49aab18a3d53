"""Search spaces: parsing, validation against the model (errors name dimension and tensor), maps from points."""

import pytest
import yaml

from cerebellum_ray.catalog import load_catalog
from cerebellum_ray.space import SpaceError, load_space, space_from_data

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
     "reach past the model's 6 layers"),
    ({"dimensions": [{"name": "a", "select": {"group": "attn_q"}, "types": ["Q4_K"]},
                     {"name": "b", "select": {"regex": "attn_q"}, "types": ["Q4_K"]}]}, "is in two dimensions"),
    ({"objectives": ["kld", "speed"]}, "unknown objective 'speed'"),
    ({"base": "Q9_K"}, "unknown base preset"),
    ({"objectives": ["humaneval", "size"]}, "humaneval_limit"),
    ({"constraints": {"max_size": "12 parsecs"}}, "is not a size"),
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
