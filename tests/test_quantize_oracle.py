"""Byte-exactness against llama.cpp's own quantizer (llama_model_quantize, the code behind llama-quantize).

For each tiny model and preset: llama.cpp quantizes the model; we read the types it chose as a precision map,
build that map with our builder, and compare every tensor byte for byte.
"""

import llama_cpp  # noqa: F401

import pytest
from gguf import GGUFReader

from cerebellum_ray.native import ggml as _ggml
from cerebellum_ray.quant.build import build
from cerebellum_ray.formats.ggml_types import file_type
from cerebellum_ray.formats.imatrix import load_imatrix
from cerebellum_ray.formats.precision_map import PrecisionMap


def _oracle(src, dst, preset, imatrix=None):
    vectors = dict(imatrix.entries) if imatrix is not None else None
    _ggml.llama_quantize(str(src), str(dst), file_type(preset).id, imatrix=vectors, n_threads=2)
    reader = GGUFReader(dst)
    return {t.name: t.tensor_type.name for t in reader.tensors}, {t.name: t.data.tobytes() for t in reader.tensors}


def _assert_same_bytes(ours_path, oracle_bytes):
    ours = GGUFReader(ours_path)
    assert {t.name for t in ours.tensors} == set(oracle_bytes)
    different = [t.name for t in ours.tensors if t.data.tobytes() != oracle_bytes[t.name]]
    assert different == []


CASES = [
    ("llama", "Q4_K_M"), ("llama", "Q3_K_S"), ("llama", "Q2_K"), ("llama", "Q8_0"), ("llama", "Q5_1"),
    ("gemma4", "Q4_K_M"), ("gemma4", "Q3_K_S"), ("gemma4", "Q2_K"), ("gemma4", "Q8_0"), ("gemma4", "IQ4_NL"),
    ("mixtral", "Q4_K_M"), ("mixtral", "Q3_K_S"), ("mixtral", "Q2_K"), ("mixtral", "Q8_0"),
]


@pytest.mark.parametrize("arch,preset", CASES)
def test_bytes_equal_llama_quantize(tiny_models, tmp_path, arch, preset):
    types, oracle_bytes = _oracle(tiny_models[arch], tmp_path / "oracle.gguf", preset)
    assert any(t not in ("F16", "F32") for t in types.values())
    build(tiny_models[arch], PrecisionMap(types, base=preset), tmp_path / "ours.gguf", n_threads=2)
    _assert_same_bytes(tmp_path / "ours.gguf", oracle_bytes)


@pytest.mark.parametrize("arch,preset,fmt", [
    ("llama", "IQ2_XS", "gguf"), ("gemma4", "IQ2_XS", "dat"), ("mixtral", "IQ3_XXS", "gguf"),
    ("gemma4", "Q4_K_M", "gguf"), ("mixtral", "Q4_0", "dat"),
])
def test_bytes_equal_llama_quantize_with_imatrix(tiny_models, tiny_imatrix, tmp_path, arch, preset, fmt):
    imatrix = load_imatrix(tiny_imatrix[arch][fmt])
    types, oracle_bytes = _oracle(tiny_models[arch], tmp_path / "oracle.gguf", preset, imatrix)
    build(tiny_models[arch], PrecisionMap(types, base=preset), tmp_path / "ours.gguf", imatrix=imatrix, n_threads=2)
    _assert_same_bytes(tmp_path / "ours.gguf", oracle_bytes)


def test_imatrix_changes_the_bytes(tiny_models, tiny_imatrix, tmp_path):
    """Guards the test above: with and without the imatrix the oracle's bytes differ, so equality means something."""
    imatrix = load_imatrix(tiny_imatrix["llama"]["gguf"])
    _, with_im = _oracle(tiny_models["llama"], tmp_path / "a.gguf", "Q4_K_M", imatrix)
    _, without = _oracle(tiny_models["llama"], tmp_path / "b.gguf", "Q4_K_M")
    assert any(with_im[n] != without[n] for n in with_im)


@pytest.mark.parametrize("arch", ["llama", "gemma4"])
def test_requantize_matches_llama_quantize(tiny_models, tmp_path, arch):
    """A quantized source (Q8_0) is dequantized with ggml's own code first, as llama-quantize does."""
    q8 = tmp_path / "q8.gguf"
    _ggml.llama_quantize(str(tiny_models[arch]), str(q8), file_type("Q8_0").id, n_threads=2)
    types, oracle_bytes = _oracle(q8, tmp_path / "oracle.gguf", "Q4_K_M")
    build(q8, PrecisionMap(types, base="Q4_K_M"), tmp_path / "ours.gguf", n_threads=2)
    _assert_same_bytes(tmp_path / "ours.gguf", oracle_bytes)


@pytest.fixture(scope="module")
def wide_sources(tmp_path_factory):
    """The tiny models with BF16 and F32 matrices (the real Gemma 4 checkpoints are BF16), made by make-tiny."""
    from cerebellum_ray.formats.tiny import make_tiny

    d = tmp_path_factory.mktemp("wide")
    return {(arch, dtype): make_tiny(arch, d / f"{arch}-{dtype}.gguf", dtype=dtype)
            for arch in ("llama", "mixtral", "gemma4") for dtype in ("BF16", "F32")}


@pytest.mark.parametrize("arch,dtype,preset", [
    ("llama", "BF16", "Q4_K_M"), ("llama", "F32", "Q3_K_S"), ("mixtral", "BF16", "Q4_K_M"),
    ("mixtral", "F32", "Q2_K"), ("gemma4", "BF16", "Q4_K_M"), ("gemma4", "F32", "Q8_0"),
])
def test_bf16_and_f32_sources_match_llama_quantize(wide_sources, tmp_path, arch, dtype, preset):
    src = wide_sources[arch, dtype]
    types, oracle_bytes = _oracle(src, tmp_path / "oracle.gguf", preset)
    assert {t.tensor_type.name for t in GGUFReader(src).tensors if len(t.shape) > 1} >= {dtype}
    build(src, PrecisionMap(types, base=preset), tmp_path / "ours.gguf", n_threads=2)
    _assert_same_bytes(tmp_path / "ours.gguf", oracle_bytes)


@pytest.mark.parametrize("arch,dtype,preset", [("llama", "BF16", "IQ2_XS"), ("mixtral", "BF16", "IQ3_XXS"),
                                               ("gemma4", "F32", "Q4_K_M")])
def test_bf16_and_f32_sources_with_imatrix_match_llama_quantize(wide_sources, tiny_imatrix, tmp_path, arch, dtype,
                                                                preset):
    src = wide_sources[arch, dtype]
    imatrix = load_imatrix(tiny_imatrix[arch]["gguf"])  # the same tensor names and shapes as the F16 model's
    types, oracle_bytes = _oracle(src, tmp_path / "oracle.gguf", preset, imatrix)
    build(src, PrecisionMap(types, base=preset), tmp_path / "ours.gguf", imatrix=imatrix, n_threads=2)
    _assert_same_bytes(tmp_path / "ours.gguf", oracle_bytes)


def test_to_float_copies_f32_and_converts_f16_into_any_contiguous_shape():
    """F32 has no ggml to_float: it is copied; the output may be 2-D (callers pass (rows, n_per_row))."""
    import numpy as np

    from cerebellum_ray.native import ggml as _ggml

    w = np.array([[1.5, -2.0, np.nan, 3.25], [0.0, 7.0, -0.5, 1e-3]], np.float32)
    for type_id, raw in ((0, w.tobytes()), (1, w.astype(np.float16).tobytes())):
        out = np.full((2, 4), 99.0, np.float32)
        _ggml.to_float(type_id, np.frombuffer(raw, np.uint8), w.size, out)
        np.testing.assert_array_equal(out, w.astype(np.float16).astype(np.float32) if type_id else w)


def test_the_imatrix_weighted_table_is_ggmls():
    """IMATRIX_WEIGHTED lists exactly the types whose ggml quantizer gives other bytes with an importance vector
    (surgery asks for the file's imatrix only when a recast tensor's type is one of them)."""
    import numpy as np

    from cerebellum_ray.formats.ggml_types import IMATRIX_WEIGHTED, TYPES

    rng = np.random.default_rng(0)
    n = 512
    rows = rng.standard_normal((4, n)).astype(np.float32)
    weights = (rng.random(n) * 10 + 0.01).astype(np.float32)
    weighted = set()
    for name, t in TYPES.items():
        if not t.quantizable or name == "F32" or n % t.block_size:
            continue
        _ggml.quantize_init(t.id)
        plain, with_weights = (np.zeros(t.row_bytes(n) * 4, np.uint8) for _ in range(2))
        _ggml.quantize_rows(t.id, rows, plain, np.ones(n, np.float32) if t.needs_imatrix else None)
        _ggml.quantize_rows(t.id, rows, with_weights, weights)
        if (plain != with_weights).any():
            weighted.add(name)
    assert weighted == set(IMATRIX_WEIGHTED)
