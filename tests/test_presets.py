"""presets.py against its oracle: llama.cpp's own llama_model_quantize (llama-cpp-python 0.3.36).

Small GGUF files are written with gguf-py (llama, llama with 8 experts, a tied-embedding model with odd widths,
falcon, an "80-layer 70B", ...), quantized with every preset, and every tensor type llama.cpp writes is compared with
``preset_types``. Only hyper-parameters and tensor names matter to the type choice, so the tensors have few rows.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import random
import re
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest

from cerebellum_ray.formats.ggml_types import FILE_TYPES
from cerebellum_ray.formats.presets import (
    PresetHParams,
    allows_quantization,
    preset_types,
    requires_imatrix,
    weight_order_key,
)


@dataclasses.dataclass(frozen=True)
class T:
    name: str
    shape: tuple[int, ...]  # ggml order
    type: str


# --------------------------------------------------------------------------------------------------------------------
# reading and writing GGUF


def gguf_kv(reader) -> dict[str, Any]:
    """GGUF key/values as python values (strings, numbers, lists)."""
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def gguf_tensors(reader) -> list[T]:
    return [
        T(t.name, tuple(int(d) for d in t.shape), gguf.GGMLQuantizationType(int(t.tensor_type)).name)
        for t in reader.tensors
    ]


def read_model(path: Path) -> tuple[dict[str, Any], list[T]]:
    reader = gguf.GGUFReader(path)
    return gguf_kv(reader), gguf_tensors(reader)


def write_model(path: Path, arch: str, kv: dict[str, Any], tensors: list[tuple[str, tuple[int, ...]]], seed: int = 0):
    """A GGUF file with these (name, ggml shape) tensors: F32 for 1-D ones, F16 otherwise, in shuffled order."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(kv.pop("block_count"))
    writer.add_context_length(256)
    writer.add_embedding_length(kv.pop("n_embd"))
    for key, value in kv.items():
        full = f"{arch}.{key}"
        if isinstance(value, float):
            writer.add_float32(full, value)
        elif isinstance(value, list):
            writer.add_array(full, value)
        else:
            writer.add_uint32(full, value)
    order = list(tensors)
    random.Random(seed).shuffle(order)  # llama.cpp sorts them itself
    for name, shape in order:
        dtype = np.float32 if len(shape) == 1 else np.float16
        data = rng.standard_normal(tuple(reversed(shape))).astype(dtype)
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_like_tensors(n_layer, n_embd, n_ff, *, n_vocab=64, rows=8, output=True, n_expert=0):
    """llama's tensor names; rows are few (the type choice never looks at ne1)."""
    t = [("token_embd.weight", (n_embd, n_vocab)), ("output_norm.weight", (n_embd,))]
    if output:
        t.append(("output.weight", (n_embd, n_vocab)))
    for i in range(n_layer):
        p = f"blk.{i}."
        t += [
            (p + "attn_norm.weight", (n_embd,)),
            (p + "attn_q.weight", (n_embd, rows)),
            (p + "attn_k.weight", (n_embd, rows)),
            (p + "attn_v.weight", (n_embd, rows)),
            (p + "attn_output.weight", (n_embd, rows)),
            (p + "ffn_norm.weight", (n_embd,)),
        ]
        if n_expert:
            t += [
                (p + "ffn_gate_inp.weight", (n_embd, n_expert)),
                (p + "ffn_gate_exps.weight", (n_embd, rows, n_expert)),
                (p + "ffn_up_exps.weight", (n_embd, rows, n_expert)),
                (p + "ffn_down_exps.weight", (n_ff, rows, n_expert)),
            ]
        else:
            t += [
                (p + "ffn_gate.weight", (n_embd, rows)),
                (p + "ffn_up.weight", (n_embd, rows)),
                (p + "ffn_down.weight", (n_ff, rows)),
            ]
    return t


def llama_kv(n_layer, n_embd, n_head, n_head_kv, n_ff, n_expert=0):
    kv = {
        "block_count": n_layer,
        "n_embd": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "attention.layer_norm_rms_epsilon": 1e-5,
    }
    if n_expert:
        kv["expert_count"] = n_expert
        kv["expert_used_count"] = 2
    return kv


# The fixture models: name -> (arch, kv, tensors). Each exercises a different set of rules.
MODELS: dict[str, tuple[str, dict, list]] = {
    # GQA 4 (attn_v bumps), 16 layers (use_more_bits, n/8 and n/16 cut-offs, numeric "blk.10" after "blk.9")
    "llama_gqa": ("llama", llama_kv(16, 256, 8, 2, 512), llama_like_tensors(16, 256, 512)),
    # no GQA, tied embeddings, ffn_down rows of 352 (K-quant fallbacks) and 360 (not even a 32-multiple: F16)
    "llama_tied_odd": (
        "llama",
        llama_kv(12, 256, 4, 4, 352),
        llama_like_tensors(12, 256, 352, output=False) + [("blk.3.ffn_down_shexp.weight", (360, 8))],
    ),
    # a width that is no multiple of 256 anywhere but ffn_down; tied embeddings (the output rule's Q8_0 branch)
    "llama_narrow": ("llama", llama_kv(8, 160, 5, 5, 256), llama_like_tensors(8, 160, 256, output=False)),
    # Mixtral: 8 experts (its own rules), layers parsed from names for ffn_*
    "mixtral": (
        "llama",
        llama_kv(8, 256, 8, 8, 256, n_expert=8),
        llama_like_tensors(8, 256, 256, n_expert=8, rows=4),
    ),
    # 4 experts: n_expert >= 4 counts in the IQ2 rules, == 8 does not; shared experts make two ffn_down tensors
    # per layer (the IQ2 rules count them, the others parse the layer from the name)
    "moe4_gqa2": (
        "llama",
        llama_kv(8, 256, 8, 4, 256, n_expert=4),
        llama_like_tensors(8, 256, 256, n_expert=4, rows=4)
        + [(f"blk.{i}.ffn_{part}_shexp.weight", (256, 4)) for i in range(8) for part in ("gate", "up", "down")],
    ),
    # LLM_TYPE_70B: llama with 80 layers and GQA
    "llama_70b": ("llama", llama_kv(80, 256, 8, 1, 256), llama_like_tensors(80, 256, 256, rows=2, n_vocab=16)),
    # falcon: fused attn_qkv, its own ffn_down / attn_output / output rules
    "falcon": (
        "falcon",
        {
            "block_count": 16,
            "n_embd": 256,
            "feed_forward_length": 512,
            "attention.head_count": 8,
            "attention.head_count_kv": 1,
            "attention.layer_norm_epsilon": 1e-5,
        },
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output_norm.bias", (256,)),
         ("output.weight", (256, 64))]
        + [
            (f"blk.{i}.{n}", s)
            for i in range(16)
            for n, s in (
                ("attn_norm.weight", (256,)),
                ("attn_norm.bias", (256,)),
                ("attn_qkv.weight", (256, 8)),
                ("attn_output.weight", (256, 8)),
                ("ffn_up.weight", (256, 8)),
                ("ffn_down.weight", (512, 8)),
            )
        ],
    ),
}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("preset_models")
    for name, (arch, kv, tensors) in MODELS.items():
        write_model(d / f"{name}.gguf", arch, dict(kv), tensors)
    return d


# --------------------------------------------------------------------------------------------------------------------
# the oracle: llama_model_quantize, for real or as a dry run (which logs the type it picks for every tensor)

_LOG: list[str] = []


@llama_cpp.llama_log_callback
def _log_to_list(level, text, user_data):
    _LOG.append(text.decode(errors="replace"))


@pytest.fixture(scope="module", autouse=True)
def capture_llama_log():
    llama_cpp.llama_log_set(_log_to_list, ctypes.c_void_p(0))
    yield
    from llama_cpp import _logger

    llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


# "[  12/ 147] blk.0.ffn_up.weight   - [   256,      8,      1,      1], type =    f16, size = ... -> ... (q4_K)"
_DRY_RUN_LINE = re.compile(r"\[\s*\d+/\s*\d+\] (\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^\n(]*(?:\((\w+)\))?")


def type_id(name: str) -> int:
    return int(gguf.GGMLQuantizationType[name])


@dataclasses.dataclass
class Quantized:
    types: dict[str, str] | None  # name -> type in file order; None when llama.cpp refused
    wants_imatrix: bool  # a dry run said the real run would need an imatrix


@functools.cache
def read_model_cached(path: Path) -> tuple[dict[str, Any], tuple[T, ...]]:
    kv, tensors = read_model(path)
    return kv, tuple(tensors)


@functools.cache
def ones_imatrix(src: Path):
    """An importance matrix of ones for every 2-D/3-D tensor: (the C array, the buffers it points into)."""
    entries = [t for t in read_model_cached(src)[1] if len(t.shape) >= 2]
    arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()  # zeroed: the last entry ends the list
    buffers = []
    for i, t in enumerate(entries):
        values = np.ones(t.shape[0] * (t.shape[2] if len(t.shape) > 2 else 1), dtype=np.float32)  # ne0 per expert
        buffers.append(values)
        arr[i].name = t.name.encode()
        arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = values.size
    return ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data)), (arr, buffers)


def llama_quantize(
    src: Path,
    dst: Path,
    preset: str,
    *,
    dry_run: bool = False,
    imatrix: bool = False,
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    overrides: tuple[tuple[str, str], ...] = (),
    quantize_output_tensor: bool = True,
) -> Quantized:
    """Run llama.cpp's quantizer with an all-ones importance matrix if asked."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[preset].id
    params.nthread = 2
    params.dry_run = dry_run
    params.pure = pure
    params.quantize_output_tensor = quantize_output_tensor
    if output_tensor_type:
        params.output_tensor_type = type_id(output_tensor_type)
    if token_embedding_type:
        params.token_embedding_type = type_id(token_embedding_type)
    keep: list[Any] = []  # the ctypes buffers must outlive the call
    if imatrix:
        params.imatrix = ones_imatrix(src)[0]
    if overrides:
        ov = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, qtype) in enumerate(overrides):
            ov[i].pattern = pattern.encode()
            ov[i].type = type_id(qtype)
        keep.append(ov)
        params.tt_overrides = ctypes.cast(ov, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if dst.exists():
        dst.unlink()
    _LOG.clear()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    log = "".join(_LOG)
    if rc != 0:
        return Quantized(None, False)
    if dry_run:
        current = {t.name: t.type for t in read_model_cached(src)[1]}
        types = {m[1]: (m[3] or current[m[1]]).upper() for m in _DRY_RUN_LINE.finditer(log)}
        assert len(types) == len(current), f"could not parse the dry-run log:\n{log[-3000:]}"
        return Quantized(types, "will require an imatrix" in log)
    _, out = read_model(dst)
    return Quantized({t.name: t.type for t in out}, False)


def assert_same(src: Path, dst: Path, preset: str, imatrix: bool, dry_run: bool = True, **options) -> int:
    """Quantize with llama.cpp and compare with preset_types; returns the number of tensors compared."""
    kv, tensors = read_model_cached(src)
    try:
        choices = preset_types(tensors, PresetHParams.from_kv(kv), preset, has_imatrix=imatrix, **options)
    except ValueError as exc:  # we refuse: llama.cpp must refuse too (e.g. no row-length fallback for Q1_0)
        got = llama_quantize(src, dst, preset, dry_run=dry_run, imatrix=imatrix, **options)
        assert got.types is None, f"{src.name} {preset}: we refused ({exc}) but llama.cpp quantized it"
        return 0
    needs_imatrix = [c.name for c in choices.values() if c.requires_imatrix]
    got = llama_quantize(src, dst, preset, dry_run=dry_run, imatrix=imatrix, **options)
    what = f"{src.name} {preset} imatrix={imatrix} dry_run={dry_run} {options}"
    if not imatrix and needs_imatrix and not dry_run:
        assert got.types is None, f"{what}: llama.cpp quantized it; we said {needs_imatrix} need an imatrix"
        return 0
    assert got.types is not None, f"{what}: llama.cpp refused:\n{''.join(_LOG)[-3000:]}"
    if dry_run and not imatrix:
        assert got.wants_imatrix == bool(needs_imatrix), f"{what}: we said {needs_imatrix} need an imatrix"
    assert list(got.types) == list(choices), f"{what}: tensor order differs from weights_map order"
    diff = {n: (t, choices[n].type, choices[n].reason) for n, t in got.types.items() if t != choices[n].type}
    assert not diff, f"{what}: name: (llama.cpp, ours, our reason): {diff}"
    return len(got.types)


# --------------------------------------------------------------------------------------------------------------------
# every preset on every fixture model, with and without an importance matrix: dry runs (types from llama.cpp's log)

ALL_PRESETS = list(FILE_TYPES)


@pytest.mark.parametrize("model", list(MODELS))
def test_every_preset_matches_llama_cpp_dry_run(model_dir, tmp_path, model):
    src = model_dir / f"{model}.gguf"
    for preset in ALL_PRESETS:
        for imatrix in (False, True):
            assert_same(src, tmp_path / "out.gguf", preset, imatrix)


# the same, quantizing for real and reading the written file back (IQ types quantize with the all-ones imatrix)
REAL_PRESETS = ["Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
                "Q8_0", "Q4_0", "Q5_1", "IQ4_NL", "IQ4_XS", "IQ3_M", "IQ3_XXS", "IQ2_XS", "MXFP4_MOE", "F16"]


@pytest.mark.parametrize("model", ["llama_gqa", "llama_tied_odd", "llama_narrow", "mixtral", "falcon"])
def test_presets_match_llama_cpp_output(model_dir, tmp_path, model):
    src = model_dir / f"{model}.gguf"
    kv, tensors = read_model_cached(src)
    for preset in REAL_PRESETS:
        assert_same(src, tmp_path / "out.gguf", preset, True, dry_run=False)
        # without an imatrix, llama.cpp refuses exactly when we say a tensor requires one (types: see the dry runs)
        choices = preset_types(tensors, PresetHParams.from_kv(kv), preset)
        if any(c.requires_imatrix for c in choices.values()):
            assert llama_quantize(src, tmp_path / "out.gguf", preset).types is None


# --------------------------------------------------------------------------------------------------------------------
# options: --pure, --output-tensor-type, --token-embedding-type, --leave-output-tensor, --tensor-type

OPTION_CASES = [
    ("llama_gqa", "Q4_K_M", {"pure": True}),
    ("llama_tied_odd", "Q3_K_M", {"pure": True}),
    ("llama_gqa", "Q4_K_M", {"output_tensor_type": "Q8_0", "token_embedding_type": "Q4_0"}),
    ("llama_gqa", "IQ2_XS", {"token_embedding_type": "IQ4_XS"}),
    ("llama_gqa", "Q5_K_M", {"quantize_output_tensor": False}),
    # tied: output_tensor_type reaches token_embd through the mixture rule, and then the fallback applies
    ("llama_tied_odd", "Q4_K_S", {"output_tensor_type": "IQ4_XS"}),
    ("llama_narrow", "Q4_K_S", {"output_tensor_type": "Q6_K"}),
    ("llama_narrow", "Q4_K_M", {"token_embedding_type": "Q8_0", "output_tensor_type": "Q5_0"}),
    # first match wins; attn_v tensors taken by an override do not advance the attn_v counter
    ("llama_gqa", "Q3_K_M", {"overrides": (("blk\\.0\\.attn_v", "Q8_0"), ("attn_v", "Q2_K"))}),
    ("llama_gqa", "Q3_K_M", {"overrides": (("blk\\.0\\.attn_v", "Q8_0"),)}),
    ("llama_gqa", "Q4_K_M", {"overrides": (("ffn_down", "IQ4_NL"), ("blk\\.1[0-9]\\.", "Q8_0"))}),
    ("llama_gqa", "Q4_K_M", {"overrides": (("blk\\.(0|1)\\.ffn_down", "Q8_0"),)}),
    # routers and norms cannot be overridden; the F16 preset ignores overrides; an override can fall back
    ("mixtral", "Q4_K_M", {"overrides": (("ffn_gate_inp", "Q8_0"), ("norm", "Q8_0"), ("exps", "Q6_K"))}),
    ("mixtral", "F16", {"overrides": (("exps", "Q8_0"),)}),
    ("mixtral", "MXFP4_MOE", {"overrides": (("attn", "Q4_0"),)}),
    ("llama_tied_odd", "Q8_0", {"overrides": (("ffn_down", "Q4_K"), ("token_embd", "Q5_K"))}),
    ("llama_gqa", "Q2_K", {"overrides": (("output", "Q4_0"), ("token_embd", "Q2_K"))}),
    # token_embd follows --token-embedding-type whatever the patterns say
    ("llama_gqa", "Q4_K_M", {"token_embedding_type": "Q8_0", "overrides": (("token_embd", "Q4_0"),)}),
]


@pytest.mark.parametrize("model,preset,options", OPTION_CASES)
def test_options_match_llama_cpp(model_dir, tmp_path, model, preset, options):
    src = model_dir / f"{model}.gguf"
    for imatrix in (False, True):
        assert_same(src, tmp_path / "out.gguf", preset, imatrix, **options)
    assert_same(src, tmp_path / "out.gguf", preset, True, dry_run=False, **options)


def test_per_layer_token_embd(tmp_path):
    """gemma3n-style per_layer_token_embd is a token embedding, but a --tensor-type pattern can name it despite
    --token-embedding-type."""
    arch, kv, tensors = MODELS["llama_gqa"]
    src = write_model(tmp_path / "ple.gguf", arch, dict(kv), tensors + [("per_layer_token_embd.weight", (256, 64))])
    for preset, options in [
        ("Q4_K_M", {}),
        ("IQ2_M", {}),
        ("Q4_K_M", {"token_embedding_type": "Q8_0"}),
        ("Q4_K_M", {"token_embedding_type": "Q8_0", "overrides": (("per_layer", "Q5_0"),)}),
        ("Q4_K_M", {"token_embedding_type": "Q8_0", "overrides": (("token_embd", "Q5_0"),)}),
    ]:
        assert_same(src, tmp_path / "out.gguf", preset, True, **options)


def test_llama_cpp_failures_are_errors(model_dir, tmp_path):
    """Where llama.cpp refuses (no fallback for a type) or aborts (an option type that does not fit), we raise."""
    src = model_dir / "llama_narrow.gguf"  # rows of 160
    kv, tensors = read_model_cached(src)
    hp = PresetHParams.from_kv(kv)
    assert llama_quantize(src, tmp_path / "out.gguf", "Q8_0", overrides=(("attn_q", "NVFP4"),)).types is None
    with pytest.raises(ValueError, match="no row-length fallback"):
        preset_types(tensors, hp, "Q8_0", overrides=(("attn_q", "NVFP4"),))
    with pytest.raises(ValueError, match="llama.cpp would abort"):
        preset_types(tensors, hp, "Q8_0", token_embedding_type="Q4_K")
    with pytest.raises(ValueError, match="duplicated"):
        preset_types(list(tensors) + [tensors[0]], hp, "Q8_0")


def test_choice_reasons(model_dir):
    kv, tensors = read_model_cached(model_dir / "llama_tied_odd.gguf")
    choices = preset_types(tensors, PresetHParams.from_kv(kv), "Q4_K_M", overrides=(("blk\\.0\\.ffn_up", "Q8_0"),))
    assert choices["blk.0.attn_norm.weight"].reason == "not quantized (1-D)"
    assert choices["blk.0.ffn_up.weight"].reason == "override 'blk\\\\.0\\\\.ffn_up'"
    assert choices["blk.1.ffn_up.weight"].reason == "preset default"
    assert choices["token_embd.weight"].reason == "mixture rule"  # tied: the output tensor's Q6_K
    down = choices["blk.0.ffn_down.weight"]  # use_more_bits layer: Q6_K, but rows of 352
    assert (down.type, down.fallback_from) == ("Q8_0", "Q6_K")
    assert down.reason == "fallback Q6_K->Q8_0 (row 352 not a multiple of 256; mixture rule)"
    assert choices["blk.3.ffn_down_shexp.weight"].type == "F16"  # 360: not even Q8_0 fits


# --------------------------------------------------------------------------------------------------------------------
# the tiny models of cerebellum_ray.formats.tiny (gemma4, llama, mixtral)

TINY_REAL_PRESETS = ["Q2_K_S", "Q4_K_M", "IQ4_XS", "MXFP4_MOE"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from cerebellum_ray.formats.tiny import make_tiny

    d = tmp_path_factory.mktemp("tiny")
    for arch in ("gemma4", "llama", "mixtral"):
        make_tiny(arch, d / f"{arch}.gguf", seed=0)
    return d


@pytest.mark.parametrize("arch", ["gemma4", "llama", "mixtral"])
def test_tiny_models_match_llama_cpp(tiny_dir, tmp_path, arch):
    src = tiny_dir / f"{arch}.gguf"
    for preset in ALL_PRESETS:
        for imatrix in (False, True):
            assert_same(src, tmp_path / "out.gguf", preset, imatrix)
    for preset in TINY_REAL_PRESETS:
        assert_same(src, tmp_path / "out.gguf", preset, True, dry_run=False)


# --------------------------------------------------------------------------------------------------------------------
# units


def test_hparams_from_kv(model_dir):
    kv, _ = read_model(model_dir / "llama_70b.gguf")
    hp = PresetHParams.from_kv(kv)
    assert (hp.arch, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_gqa, hp.n_expert, hp.is_70b) == (
        "llama", 80, 8, 1, 8, 0, True)
    kv, _ = read_model(model_dir / "mixtral.gguf")
    hp = PresetHParams.from_kv(kv)
    assert (hp.n_expert, hp.is_70b, hp.n_gqa) == (8, False, 1)
    # head counts may be per-layer arrays; layer 0 counts; head_count_kv defaults to head_count
    hp = PresetHParams.from_kv({"general.architecture": "qwen2", "qwen2.block_count": 80,
                                "qwen2.attention.head_count": [8] * 80})
    assert (hp.n_head, hp.n_head_kv, hp.n_gqa, hp.is_70b) == (8, 8, 1, True)
    with pytest.raises(ValueError, match="expected 3"):
        PresetHParams.from_kv({"general.architecture": "llama", "llama.block_count": 3,
                               "llama.attention.head_count": [8, 8]})
    # MTP layers count in n_layer_all but not in the 70B test
    hp = PresetHParams.from_kv({"general.architecture": "llama", "llama.block_count": 81,
                                "llama.nextn_predict_layers": 1, "llama.attention.head_count": 64,
                                "llama.attention.head_count_kv": 8})
    assert (hp.n_layer, hp.is_70b) == (81, True)


def test_allows_quantization_rules():
    assert allows_quantization("blk.0.attn_q.weight", 2, "llama")
    assert allows_quantization("blk.0.ffn_up_exps.weight", 3, "llama")
    assert not allows_quantization("blk.0.attn_q.weight", 1, "llama")
    assert not allows_quantization("blk.0.attn_q.bias", 2, "llama")
    assert not allows_quantization("blk.0.attn_norm.weight", 2, "llama")
    assert not allows_quantization("blk.0.ffn_gate_inp.weight", 2, "llama")
    assert allows_quantization("blk.0.ffn_gate_inp_shexp.weight", 2, "qwen2moe")
    assert not allows_quantization("output.weight", 2, "llama", quantize_output_tensor=False)
    assert not allows_quantization("position_embd.weight", 2, "bert")
    assert not allows_quantization("blk.0.time_mix_w1.weight", 2, "rwkv6")
    assert not allows_quantization("v.blk.0.attn_rel_b.weight", 2, "t5")
    assert not allows_quantization("blk.0.hc_attn.weight", 2, "glm5-next")
    assert allows_quantization("blk.0.hc_attn.weight", 2, "llama")
    assert allows_quantization("abcde", 2, "llama")  # llama.cpp's size_t wrap-around in its "ends with weight" test


def test_requires_imatrix_rules():
    assert requires_imatrix("blk.0.attn_q.weight", "IQ2_XS", "IQ2_XS")
    assert not requires_imatrix("token_embd.weight", "IQ2_XS", "IQ2_XS")
    assert not requires_imatrix("output.weight", "IQ1_S", "IQ1_S")
    assert requires_imatrix("blk.0.ffn_up.weight", "Q2_K", "Q2_K_S")
    assert not requires_imatrix("blk.0.ffn_up.weight", "Q2_K", "Q2_K")
    assert not requires_imatrix("blk.0.ffn_up.weight", "IQ3_S", "IQ3_M")


def test_weight_order():
    names = ["output.weight", "blk.10.attn_q.weight", "blk.2.ffn_up.weight", "blk.2.attn_q.weight", "token_embd.weight"]
    assert sorted(names, key=weight_order_key) == [
        "output.weight", "token_embd.weight", "blk.2.attn_q.weight", "blk.2.ffn_up.weight", "blk.10.attn_q.weight"]


def test_moe_tensor_without_layer_is_an_error():
    hp = PresetHParams("llama", 4, 8, 8, 8, False)
    tensors = [T("ffn_down_exps.weight", (256, 4, 8), "F16")]
    with pytest.raises(ValueError, match="Failed to determine layer"):
        preset_types(tensors, hp, "Q4_K_M")
    assert preset_types(tensors, hp, "Q4_K_M", pure=True)["ffn_down_exps.weight"].type == "Q4_K"
