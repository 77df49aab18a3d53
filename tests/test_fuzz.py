"""Property-based fuzzing (Hypothesis) of everything that reads user files: the GGUF header parser, both imatrix
formats, precision maps and search spaces. Property: any input gives a result or a `CerebellumError` (which the CLI
prints as one line), never another exception, a hang (each example has a deadline) or a crash.

The default run is CI-sized; `pytest -m fuzz` runs the same properties with many more examples.
"""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cerebellum_ray.formats import gguf_io
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.core.errors import CerebellumError
from cerebellum_ray.formats.imatrix import load_imatrix, write_collected_imatrix
from cerebellum_ray.formats.precision_map import load_spec, resolve, spec_from_data
from cerebellum_ray.formats.space import space_from_data

CI = settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow], derandomize=True)
LONG = settings(max_examples=3000, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def bounded_memory():
    """A runaway allocation fails the example (MemoryError is not a CerebellumError) instead of swapping the machine:
    the address space may grow by at most 3 GB during a fuzz test."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes + (3 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _small_gguf() -> bytes:
    kv = [gguf_io.encode_kv("general.architecture", "llama", GGUFValueType.STRING),
          gguf_io.encode_kv("llama.block_count", 1, GGUFValueType.UINT32),
          gguf_io._encode_str("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2)
          + gguf_io._encode_str("a") + gguf_io._encode_str("b")]
    slots = [gguf_io.TensorSlot("blk.0.attn_q.weight", (32, 4), 0, 512),
             gguf_io.TensorSlot("blk.0.attn_norm.weight", (32,), 0, 128)]
    layout = gguf_io.GGUFLayout.build(kv, slots, 32)
    return layout.header + b"\x00" * (512 + 128)


def _small_imatrices() -> dict[str, bytes]:
    stats = {"blk.0.attn_q.weight": (np.arange(32, dtype=np.float32), np.array([4])),
             "blk.0.ffn_up_exps.weight": (np.ones(64, dtype=np.float32), np.array([2, 3]))}
    out = {}
    for fmt in ("gguf", "dat"):
        path = Path(f"/tmp/cerebellum-fuzz-imatrix.{fmt}")
        write_collected_imatrix(path, stats, fmt=fmt, datasets=["d"], chunk_count=1, chunk_size=2)
        out[fmt] = path.read_bytes()
        path.unlink()
    return out


GGUF_BYTES = _small_gguf()
IMATRIX_BYTES = _small_imatrices()


@st.composite
def mutated(draw, original: bytes):
    """The original bytes with a few random byte edits, a cut, or an inserted run of random bytes."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "int"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # a plausible-looking but wrong length, count or type field
            value = draw(st.sampled_from([0, 1, 2, 0xFFFFFFFF, 1 << 31, 1 << 40, 9, 13]))
            data[at:at + 8] = struct.pack("<Q", value)
    return bytes(data)


def _only_cerebellum_errors(fn, *args):
    try:
        fn(*args)
    except CerebellumError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)


# ---- GGUF headers -------------------------------------------------------------------------------------------------


def _gguf_property(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("g") / "m.gguf"
    path.write_bytes(data)
    _only_cerebellum_errors(load_catalog, path)


@CI
@given(data=mutated(GGUF_BYTES))
def test_gguf_header_parser(tmp_path_factory, data):
    _gguf_property(tmp_path_factory, data)


@pytest.mark.fuzz
@LONG
@given(data=mutated(GGUF_BYTES))
def test_gguf_header_parser_long(tmp_path_factory, data):
    _gguf_property(tmp_path_factory, data)


# ---- imatrix files ------------------------------------------------------------------------------------------------


def _imatrix_property(tmp_path_factory, data: bytes, fmt: str) -> None:
    path = tmp_path_factory.mktemp("i") / f"x.{fmt}"
    path.write_bytes(data)
    _only_cerebellum_errors(load_imatrix, path)


@CI
@given(fmt=st.sampled_from(["gguf", "dat"]), data=st.data())
def test_imatrix_readers(tmp_path_factory, fmt, data):
    _imatrix_property(tmp_path_factory, data.draw(mutated(IMATRIX_BYTES[fmt])), fmt)


@pytest.mark.fuzz
@LONG
@given(fmt=st.sampled_from(["gguf", "dat"]), data=st.data())
def test_imatrix_readers_long(tmp_path_factory, fmt, data):
    _imatrix_property(tmp_path_factory, data.draw(mutated(IMATRIX_BYTES[fmt])), fmt)


# ---- maps and spaces ----------------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 1 << 40), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["Q4_K", "Q8_0", "Q4_K_M", "attn_q", "group", "layer",
                                                          "0-3", "(a+)+$", "[", "blk.0.attn_q.weight", "tensor"]))
json_like = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                         max_leaves=20)
MAP_KEYS = st.sampled_from(["base", "like", "fallback", "types", "attn_q", "blk.0.attn_q.weight", "(.*)*x", "zz"])
SPACE_KEYS = st.sampled_from(["base", "like", "fallback", "dimensions", "constraints", "objectives", "evaluation",
                              "search", "name", "zz"])
VALID_SPACE = {"base": "Q4_K_M", "dimensions": [{"name": "q", "select": {"group": "attn_q"}, "per": "layer",
                                                 "types": ["Q4_K", "Q8_0"]}],
               "constraints": {"max_bpw": 8}, "objectives": ["kld", "size"], "evaluation": {"ctx": 64, "chunks": 2},
               "search": {"trials": 4}}


def _map_property(catalog, data) -> None:
    def run():
        spec = spec_from_data(data, "fuzz.yaml")
        if spec.like is None:
            resolve(catalog, spec)

    _only_cerebellum_errors(run)


@CI
@given(data=st.one_of(json_like, st.dictionaries(MAP_KEYS, json_like, max_size=4)))
def test_map_data(tiny_catalog, data):
    _map_property(tiny_catalog, data)


@pytest.mark.fuzz
@LONG
@given(data=st.one_of(json_like, st.dictionaries(MAP_KEYS, json_like, max_size=4)))
def test_map_data_long(tiny_catalog, data):
    _map_property(tiny_catalog, data)


@CI
@given(text=st.text(max_size=300))
def test_map_text(tmp_path_factory, text):
    for name in ("m.yaml", "m.txt"):
        path = tmp_path_factory.mktemp("m") / name
        path.write_text(text)
        _only_cerebellum_errors(load_spec, path)


def _space_property(catalog, changes) -> None:
    data = json.loads(json.dumps(VALID_SPACE))
    for key, value in changes.items():
        if isinstance(data.get(key), dict) and isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    _only_cerebellum_errors(space_from_data, data, catalog, "fuzz.yaml")


@CI
@given(changes=st.dictionaries(SPACE_KEYS, json_like, max_size=3))
def test_space_data(tiny_catalog, changes):
    _space_property(tiny_catalog, changes)


@pytest.mark.fuzz
@LONG
@given(changes=st.dictionaries(SPACE_KEYS, json_like, max_size=3))
def test_space_data_long(tiny_catalog, changes):
    _space_property(tiny_catalog, changes)


@pytest.fixture(scope="module")
def tiny_catalog(tiny_models):
    return load_catalog(tiny_models["gemma4"])
