"""Byte-exactness against llama.cpp's own quantizer (llama_model_quantize, the code behind llama-quantize).

For each tiny model and preset: llama.cpp quantizes the model; we read the types it chose as a precision map,
build that map with our builder, and compare every tensor byte for byte.
"""

import llama_cpp  # noqa: F401

import pytest
from gguf import GGUFReader

from cerebellum_ray import _ggml
from cerebellum_ray.build import build
from cerebellum_ray.ggml_types import file_type
from cerebellum_ray.imatrix import load_imatrix
from cerebellum_ray.precision_map import PrecisionMap


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
