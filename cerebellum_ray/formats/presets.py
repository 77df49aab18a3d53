"""The tensor types llama.cpp's file-type presets (Q4_K_M, IQ3_M, MXFP4_MOE, ...) give every tensor of a model.

A line-by-line port of the type selection in llama.cpp's ``src/llama-quant.cpp`` as vendored in llama-cpp-python
0.3.36, so that a precision map can start "exactly as llama-quantize assigns it" without running llama.cpp:

- ``allows_quantization``          ports ``tensor_allows_quantization`` (which tensors are never quantized);
- ``tensor_category``              ports ``tensor_get_category``;
- ``_mixture_type``                ports ``llama_tensor_get_type_impl`` (the per-preset mixture rules);
- ``preset_types``                 ports ``llama_tensor_get_type`` (options, ``--tensor-type`` overrides, fallback)
                                   driven the way ``llama_model_quantize_impl`` drives it: tensors in
                                   ``llama_model_loader::weights_map`` order, counters from
                                   ``init_quantize_state_counters``;
- ``requires_imatrix``             ports ``tensor_requires_imatrix``;
- ``PresetHParams.from_kv``        reads the few hyper-parameters the rules use the way
                                   ``llama_model_base::load_hparams`` (``src/llama-model.cpp``) and the
                                   per-arch ``load_arch_hparams`` read them.

The row-length fallback (``tensor_type_fallback``) and the preset -> default type table
(``llama_ftype_get_default_type``) live in ``ggml_types`` (``fallback_type``, ``FILE_TYPES``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .ggml_types import FILE_TYPES, TYPES, FileType, fallback_type, file_type, ggml_type

__all__ = [
    "Category",
    "PresetChoice",
    "PresetHParams",
    "allows_quantization",
    "ggml_n_dims",
    "preset_names",
    "preset_types",
    "requires_imatrix",
    "tensor_category",
    "weight_order_key",
]


class TensorLike(Protocol):
    name: str
    shape: Sequence[int]  # ggml order: ne0 (the row length) first
    type: str  # ggml type name, e.g. "F16"


# --------------------------------------------------------------------------------------------------------------------
# hyper-parameters


@dataclass(frozen=True)
class PresetHParams:
    """What the mixture rules read from ``llama_model``: arch name, ``hparams.n_layer_all``, ``n_head(0)``,
    ``n_head_kv(0)``, ``hparams.n_expert`` and whether ``model.type == LLM_TYPE_70B``."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int
    is_70b: bool = False

    @property
    def n_gqa(self) -> int:
        """``llama_hparams::n_gqa(0)``: integer division, 0 when there are no KV heads."""
        return 0 if self.n_head_kv == 0 else self.n_head // self.n_head_kv

    @classmethod
    def from_kv(cls, kv: Mapping[str, Any]) -> PresetHParams:
        """Read them from GGUF key/values (key -> python value, arrays as lists), as llama.cpp's loader does."""
        if "general.architecture" not in kv:
            raise ValueError("GGUF metadata has no general.architecture; not a llama.cpp model file")
        arch = str(kv["general.architecture"])

        def get(suffix: str, default: Any = None) -> Any:
            return kv.get(f"{arch}.{suffix}", default)

        block_count = get("block_count")
        if block_count is None:
            raise ValueError(f"GGUF metadata has no {arch}.block_count (llama.cpp requires it)")
        n_layer_all = int(block_count)
        n_layer_nextn = int(get("nextn_predict_layers", 0))
        n_layer = n_layer_all - n_layer_nextn  # llama_hparams::n_layer(): the layers without MTP ones
        n_expert = int(get("expert_count", 0))

        def layer0(value: Any, key: str) -> int:
            # get_key_or_arr: a scalar applies to every layer, an array must have one entry per layer
            if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
                if len(value) != n_layer_all:
                    raise ValueError(f"{arch}.{key} has {len(value)} entries, expected {n_layer_all} (block_count)")
                return int(value[0])
            return int(value)

        n_head = layer0(get("attention.head_count", 0), "attention.head_count")
        n_head_kv_value = get("attention.head_count_kv")
        n_head_kv = n_head if n_head_kv_value is None else layer0(n_head_kv_value, "attention.head_count_kv")

        # per-arch load_arch_hparams that change n_layer_all (layer 0's head counts stay as read)
        if arch == "graniteswitch":
            n_layer_all = n_layer + 1  # an extra router layer after the real ones
        elif arch == "nanbeige":
            n_loops = int(get("num_loops", 1))
            if n_loops > 1:
                n_layer_all = n_layer * n_loops

        return cls(
            arch=arch,
            n_layer=n_layer_all,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_expert=n_expert,
            is_70b=_is_llm_type_70b(arch, n_layer, n_head, n_head_kv, n_expert),
        )


def _is_llm_type_70b(arch: str, n_layer: int, n_head: int, n_head_kv: int, n_expert: int) -> bool:
    """The ``load_arch_hparams`` (src/models/*.cpp) that set ``type = LLM_TYPE_70B``."""
    if arch in ("llama", "llama-embed"):
        return n_expert != 8 and n_layer == 80 and n_head != n_head_kv  # else 8x7B/8x22B, or 65B without GQA
    if arch in ("qwen2", "deci", "olmo"):
        return n_layer == 80
    if arch == "jais2":
        return n_layer == 68
    return False


# --------------------------------------------------------------------------------------------------------------------
# which tensors may be quantized: tensor_allows_quantization

# name substrings of tensors that are never quantized, with the reason llama.cpp's comments give
_NEVER_QUANTIZED_SUBSTRINGS: tuple[tuple[str, str], ...] = (
    ("_norm.weight", "norm"),
    ("ffn_gate_inp.weight", "MoE router"),
    ("ffn_gate_tid2eid.weight", "token-id to expert-id table"),
    ("altup", "altup, tiny"),
    ("laurel", "laurel, tiny"),
    ("per_layer_model_proj", "per-layer model projection"),
    ("ssm_conv1d", "conv1d"),
    ("shortconv.conv.weight", "conv1d"),
    ("indexer.k_proj.weight", "indexer projection, tiny"),
    ("indexer.q_proj.weight", "indexer projection, tiny"),
    *(
        (f"time_mix_{part}.weight", "RWKV small 2-D weight")
        for part in (
            "first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2",
            "decay_w1", "decay_w2", "lerp_fused",
        )
    ),
    ("attn_rel_b.weight", "relative position bias"),
    (".position_embd", "multimodal"),
    ("sam.pos_embd", "multimodal"),
    ("sam.neck.", "multimodal"),
    ("sam.net_", "multimodal"),
    (".rel_pos", "multimodal"),
    (".patch_embd", "multimodal"),
    (".patch_merger", "multimodal"),
    ("a.rvq.codebook", "audio codebook"),
    ("mm.a.code_embd", "audio codebook"),
)

# LLM_TN(arch)(LLM_TENSOR_POS_EMBD / LLM_TENSOR_TOKEN_TYPES, "weight"): the same names for every arch
_NEVER_QUANTIZED_NAMES: dict[str, str] = {
    "position_embd.weight": "positional embedding",
    "token_types.weight": "token types",
}

_GLM5_NEXT_NEVER_QUANTIZED: tuple[str, ...] = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate", "indexer_compressor_ape",
    "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight", "ssm_beta.weight",
    "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def ggml_n_dims(shape: Sequence[int]) -> int:
    """``ggml_n_dims``: 1 + the index of the last dimension larger than 1 (so [4096, 1] is 1-D)."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] > 1:
            return i + 1
    return 1


def _not_quantized_reason(name: str, n_dims: int, arch: str, quantize_output_tensor: bool = True) -> str | None:
    """Why ``tensor_allows_quantization`` refuses a tensor, or None when it allows it."""
    if n_dims < 2:
        return "1-D"
    # C++: name.rfind("weight") == name.size() - 6. For a 5-character name both sides are npos, so such a name
    # counts as ending in "weight".
    if not (name.endswith("weight") or len(name) == 5):
        return "not a weight"
    if not quantize_output_tensor and name == "output.weight":
        return "output tensor kept"
    if name in _NEVER_QUANTIZED_NAMES:
        return _NEVER_QUANTIZED_NAMES[name]
    for substring, reason in _NEVER_QUANTIZED_SUBSTRINGS:
        if substring in name:
            return reason
    if arch == "glm5-next" and any(s in name for s in _GLM5_NEXT_NEVER_QUANTIZED):
        return "glm5-next small tensor"
    return None


def allows_quantization(name: str, n_dims: int, arch: str, quantize_output_tensor: bool = True) -> bool:
    """``tensor_allows_quantization``: may llama.cpp change this tensor's type at all? (n_dims as ``ggml_n_dims``)"""
    return _not_quantized_reason(name, n_dims, arch, quantize_output_tensor) is None


# --------------------------------------------------------------------------------------------------------------------
# tensor categories: tensor_get_category


class Category(enum.Enum):
    TOKEN_EMBD = "token_embd"
    ATTENTION_Q = "attn_q"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


_TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")

# checked in this order, the first substring the name contains decides ("ffn_gate_up_exps" has no "ffn_up": FFN_GATE)
_CATEGORY_SUBSTRINGS: tuple[tuple[str, Category], ...] = (
    ("attn_qkv.weight", Category.ATTENTION_QKV),
    ("attn_kv_b.weight", Category.ATTENTION_KV_B),
    ("attn_v.weight", Category.ATTENTION_V),
    ("attn_k.weight", Category.ATTENTION_K),
    ("attn_q.weight", Category.ATTENTION_Q),
    ("attn_output.weight", Category.ATTENTION_OUTPUT),
    ("ffn_up", Category.FFN_UP),
    ("ffn_gate", Category.FFN_GATE),
    ("ffn_down", Category.FFN_DOWN),
)

_ATTN_V_LIKE = (Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B)


def tensor_category(name: str) -> Category:
    """``tensor_get_category``: the broad role the mixture rules key on."""
    if name == "output.weight":
        return Category.OUTPUT
    if name in _TOKEN_EMBD_NAMES:
        return Category.TOKEN_EMBD
    for substring, category in _CATEGORY_SUBSTRINGS:
        if substring in name:
            return category
    return Category.OTHER


# --------------------------------------------------------------------------------------------------------------------
# iteration order: llama_model_loader::weights_map with weight_name_comparer

# sscanf(name, "blk.%d.", &layer) == 1: "blk." at the start, then %d (which skips white space and takes a sign)
_BLK_RE = re.compile(r"blk\.[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _parse_layer(name: str) -> int | None:
    m = _BLK_RE.match(name)
    return int(m.group(1)) if m else None


def weight_order_key(name: str) -> tuple[int, bytes]:
    """``weight_name_comparer``: by layer number ("blk.N.", -1 when absent), then by name (byte order)."""
    layer = _parse_layer(name)
    return (-1 if layer is None else layer, name.encode())


# --------------------------------------------------------------------------------------------------------------------
# the mixture rules: llama_tensor_get_type_impl

_IQ2_FAMILY = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})

# output.weight (or token_embd.weight when tied to it): presets that use Q5_K there instead of Q6_K
_OUTPUT_Q5_K_PRESETS = frozenset({"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})

# token_embd.weight of untied models: presets that change its type (all others keep the preset's default type)
_TOKEN_EMBD_TYPES: dict[str, str] = {
    "IQ2_XXS": "Q2_K",
    "IQ2_XS": "Q2_K",
    "IQ1_S": "Q2_K",
    "IQ1_M": "Q2_K",
    "IQ2_S": "IQ3_S",
    "IQ2_M": "IQ3_S",
    "IQ3_XXS": "IQ3_S",
    "TQ1_0": "Q4_K",
    "TQ2_0": "Q4_K",
    "Q2_0": "Q4_K",
}

# attn_output.weight of 8-expert models: presets that give it Q5_K
_ATTN_OUTPUT_8_EXPERT_Q5_K = frozenset(
    {"Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS"}
)

# attn_output.weight of other models (not falcon)
_ATTN_OUTPUT_TYPES: dict[str, str] = {
    "Q2_K": "Q3_K",
    "IQ3_XXS": "IQ3_S",
    "Q3_K_M": "Q4_K",
    "Q3_K_L": "Q5_K",
    "IQ3_M": "Q4_K",
}

# attn_q.weight; attn_k.weight when the model does not have 8 experts
_ATTN_Q_K_TYPES: dict[str, str] = {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}


@dataclass
class _QuantizeState:
    """The counters of ``quantize_state_impl`` (they advance in weights_map order)."""

    n_attention_wv: int
    n_ffn_down: int
    n_ffn_gate: int
    n_ffn_up: int
    has_imatrix: bool
    has_tied_embeddings: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # both are >= 0 wherever this is reached, so Python's // and % agree with C's
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer_info(i_layer: int, n_layer: int, name: str, hp: PresetHParams) -> tuple[int, int]:
    """The ``layer_info`` lambda: the running counter, except for MoE models, where the layer is parsed from the
    name (Mixtral's expert tensors are not in layer order in old files)."""
    if hp.n_expert > 1:
        parsed = _parse_layer(name)
        if parsed is None:
            raise ValueError(f"Failed to determine layer for tensor {name}")
        if parsed < 0 or parsed >= n_layer:
            raise ValueError(f"Bad layer {parsed} for tensor {name}. Must be in [0, {n_layer})")
        i_layer = parsed
    return i_layer, n_layer


def _mixture_type(
    qs: _QuantizeState,
    hp: PresetHParams,
    preset: str,
    name: str,
    shape: Sequence[int],
    category: Category,
    new_type: str,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
) -> str:
    """``llama_tensor_get_type_impl``: the preset's type for one tensor (before the row-length fallback).

    ``new_type`` is the preset's default type; ``qs`` counters advance as in llama.cpp."""
    arch = hp.arch
    falcon = arch == "falcon"
    n_gqa = hp.n_gqa
    n_expert = hp.n_expert

    glm5_q8 = arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj"))
    if glm5_q8 and new_type not in ("F32", "BF16", "F16"):
        return "Q8_0"

    if category is Category.OUTPUT or (qs.has_tied_embeddings and category is Category.TOKEN_EMBD):
        if output_tensor_type is not None:
            return output_tensor_type
        if preset == "MXFP4_MOE":
            return "Q8_0"
        if falcon or shape[0] % TYPES[new_type].block_size != 0:
            return "Q8_0"
        if preset in _OUTPUT_Q5_K_PRESETS:
            return "Q5_K"
        return new_type if new_type == "Q8_0" else "Q6_K"

    if preset == "MXFP4_MOE":
        # expert tensors (3-D) -> MXFP4, everything else -> Q8_0
        n_mat = shape[2] if len(shape) > 2 else 1
        is_expert_role = category in (Category.FFN_UP, Category.FFN_GATE, Category.FFN_DOWN)
        if n_mat > 1 and (arch != "bailingmoe3" or is_expert_role):
            return "MXFP4"
        return "Q8_0"

    if category is Category.TOKEN_EMBD:
        if token_embedding_type is not None:
            return token_embedding_type
        return _TOKEN_EMBD_TYPES.get(preset, new_type)

    if preset in _IQ2_FAMILY:
        iq2_s_or_m = preset in ("IQ2_S", "IQ2_M")
        if category in _ATTN_V_LIKE:
            if n_gqa >= 4 or n_expert >= 4:
                new_type = "Q4_K"
            else:
                new_type = "IQ3_S" if iq2_s_or_m else "Q2_K"
            qs.i_attention_wv += 1
        elif n_expert == 8 and category is Category.ATTENTION_K:
            new_type = "Q4_K"
        elif category is Category.FFN_DOWN:
            # the raw counter here, not layer_info
            if qs.i_ffn_down < qs.n_ffn_down // 8:
                new_type = "IQ3_S" if iq2_s_or_m else "Q2_K"
            qs.i_ffn_down += 1
        elif category is Category.ATTENTION_OUTPUT:
            if n_expert == 8:
                new_type = "Q5_K"
            elif preset in ("IQ1_S", "IQ1_M"):
                new_type = "IQ2_XXS"
            elif iq2_s_or_m:
                new_type = "IQ3_S"
        return new_type

    if category in _ATTN_V_LIKE:
        if preset == "Q2_K":
            new_type = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif preset == "Q2_K_S" and n_gqa >= 4:
            new_type = "Q4_K"
        elif preset == "IQ3_XXS":
            new_type = "Q4_K" if n_gqa >= 4 else ("IQ3_XXS" if qs.has_imatrix else "IQ3_S")
        elif (preset in ("IQ3_XS", "IQ3_S") and n_gqa >= 4) or preset == "IQ3_M":
            new_type = "Q4_K"
        elif preset == "Q3_K_M":
            new_type = "Q5_K" if qs.i_attention_wv < 2 else "Q4_K"
        elif preset == "Q3_K_L" or (preset in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4):
            new_type = "Q5_K"
        elif preset in ("Q4_K_M", "Q5_K_M") and _use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
            new_type = "Q6_K"
        elif preset == "Q4_K_S" and qs.i_attention_wv < 4:
            new_type = "Q5_K"
        if hp.is_70b and new_type in ("Q3_K", "Q4_K"):
            # 8 heads share each attn_v in the 70B model: more bits there cost little
            new_type = "Q5_K"
        if n_expert == 8:
            new_type = "Q8_0"
        qs.i_attention_wv += 1
        return new_type

    if category is Category.ATTENTION_K:
        if n_expert == 8:
            return "Q8_0"
        return _ATTN_Q_K_TYPES.get(preset, new_type)

    if category is Category.ATTENTION_Q:
        return _ATTN_Q_K_TYPES.get(preset, new_type)

    if category is Category.FFN_DOWN:
        i_layer, n_layer = _layer_info(qs.i_ffn_down, qs.n_ffn_down, name, hp)
        qs.i_ffn_down += 1
        return _ffn_down_type(preset, new_type, i_layer, n_layer, hp, qs.has_imatrix)

    if category is Category.ATTENTION_OUTPUT:
        if falcon:
            return "Q4_K" if preset == "Q3_K_L" else new_type
        if n_expert == 8:
            return "Q5_K" if preset in _ATTN_OUTPUT_8_EXPERT_Q5_K else new_type
        return _ATTN_OUTPUT_TYPES.get(preset, new_type)

    # llama.cpp's own attn_qkv branch here is dead code: attn_qkv is attn_v-like and was handled above

    if category in (Category.FFN_GATE, Category.FFN_UP):
        if category is Category.FFN_GATE:
            i_layer, n_layer = _layer_info(qs.i_ffn_gate, qs.n_ffn_gate, name, hp)
            qs.i_ffn_gate += 1
        else:
            i_layer, n_layer = _layer_info(qs.i_ffn_up, qs.n_ffn_up, name, hp)
            qs.i_ffn_up += 1
        if preset == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            return "IQ3_XXS"
        return new_type

    return new_type


def _ffn_down_type(preset: str, new_type: str, i_layer: int, n_layer: int, hp: PresetHParams, has_imatrix: bool) -> str:
    """The ffn_down branch of ``llama_tensor_get_type_impl`` (first matching preset condition wins)."""
    falcon = hp.arch == "falcon"
    first_eighth = i_layer < n_layer // 8
    more_bits = _use_more_bits(i_layer, n_layer)
    if preset == "Q2_K":
        return "Q3_K"
    if preset == "Q2_K_S":
        return "Q4_K" if first_eighth else new_type
    if preset == "IQ3_XXS" and not has_imatrix:
        return "Q4_K" if first_eighth else "Q3_K"
    if preset == "Q3_K_M":
        if i_layer < n_layer // 16:
            return "Q5_K"
        return "Q4_K" if not falcon or more_bits else "Q3_K"
    if preset == "IQ3_M" and (first_eighth or (hp.n_expert == 8 and more_bits)):
        return "Q4_K"
    if preset == "Q3_K_L":
        return "Q4_K" if falcon else "Q5_K"
    if preset == "Q4_K_M":
        if falcon:
            return "Q6_K" if i_layer < n_layer // 16 else "Q5_K" if more_bits else "Q4_K"
        return "Q6_K" if more_bits else new_type
    if first_eighth and preset in ("IQ4_NL", "IQ4_XS") and not has_imatrix:
        return "Q5_K"
    if preset == "Q5_K_M" and more_bits:
        return "Q6_K"
    if preset == "Q4_K_S" and not falcon and first_eighth:
        return "Q5_K"
    if preset in ("Q4_0", "Q5_0") and has_imatrix and first_eighth:
        # llama.cpp guards the first ffn_down layers of Q4_0/Q5_0 only when an imatrix is given
        return "Q4_1" if preset == "Q4_0" else "Q5_1"
    return new_type


# --------------------------------------------------------------------------------------------------------------------
# the driver: llama_tensor_get_type over all tensors


@dataclass(frozen=True)
class PresetChoice:
    name: str
    type: str  # ggml type name llama.cpp writes
    # why: "not quantized (MoE router)", "preset default", "pure: preset default", "mixture rule",
    # "override 'ffn_.*'", "output_tensor_type", "token_embedding_type", or
    # "fallback Q4_K->Q5_0 (row 352 not a multiple of 256; mixture rule)"
    reason: str
    requires_imatrix: bool = False  # llama.cpp refuses to write this tensor without an importance matrix
    fallback_from: str | None = None  # the type chosen before the row-length fallback replaced it


def _is_quantized(type_name: str) -> bool:
    """``ggml_is_quantized``: block types (the float and integer types have one element per block)."""
    return TYPES[type_name].block_size > 1


def _type_name(value: str | int) -> str:
    return ggml_type(value).name


def requires_imatrix(name: str, type_name: str, preset: str) -> bool:
    """``tensor_requires_imatrix``: does llama.cpp refuse to quantize this tensor to this type without an imatrix?"""
    if name in _TOKEN_EMBD_NAMES or name == "output.weight":
        return False
    type_name = _type_name(type_name)
    if type_name in ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"):
        return True
    # k-quants do not, except the Q2_K tensors of a Q2_K_S file
    return type_name == "Q2_K" and file_type(preset).name == "Q2_K_S"


def preset_types(
    tensors: Iterable[TensorLike],
    hparams: PresetHParams,
    preset: str,
    *,
    has_imatrix: bool = False,
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    overrides: Sequence[tuple[str, str]] = (),
    quantize_output_tensor: bool = True,
) -> dict[str, PresetChoice]:
    """The type llama-quantize writes for every tensor with this preset (``--pure``, ``--output-tensor-type``,
    ``--token-embedding-type``, ``--tensor-type PATTERN=TYPE`` and ``--leave-output-tensor`` as keyword arguments).

    Returns an entry for every tensor, in the order llama.cpp processes them. ``overrides`` are regexes searched in
    the name, first match wins; they apply only to tensors llama.cpp may quantize and only when the preset's default
    type is a quantized one. Python's ``re`` stands in for C++ ``std::regex`` (ECMAScript): the same for ordinary
    patterns. Raises ValueError where llama.cpp would fail (duplicate tensor, MoE tensor without a layer number,
    a type without a row-length fallback, an output/token-embedding type that does not fit the rows)."""
    ft: FileType = file_type(preset)
    preset_name = ft.name
    default_type = ft.default_type
    output_tensor_type = None if output_tensor_type is None else _type_name(output_tensor_type)
    token_embedding_type = None if token_embedding_type is None else _type_name(token_embedding_type)
    patterns = [(re.compile(pattern), _type_name(qtype)) for pattern, qtype in overrides]

    ordered = sorted(tensors, key=lambda t: weight_order_key(t.name))
    names = [t.name for t in ordered]
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"invalid model: tensor '{dup}' is duplicated")

    # init_quantize_state_counters
    categories = [tensor_category(n) for n in names]
    qs = _QuantizeState(
        n_attention_wv=sum(c in _ATTN_V_LIKE for c in categories),
        n_ffn_down=hparams.n_layer,
        n_ffn_gate=hparams.n_layer,
        n_ffn_up=hparams.n_layer,
        has_imatrix=has_imatrix,
        has_tied_embeddings=Category.OUTPUT not in categories,
    )

    choices: dict[str, PresetChoice] = {}
    for tensor, category in zip(ordered, categories):
        name = tensor.name
        shape = tuple(int(d) for d in tensor.shape)
        current = _type_name(tensor.type)
        why_not = _not_quantized_reason(name, ggml_n_dims(shape), hparams.arch, quantize_output_tensor)
        if why_not is not None:
            choices[name] = PresetChoice(name, current, f"not quantized ({why_not})")
            continue

        new_type, reason, fallback_from = _tensor_type(
            qs, hparams, preset_name, default_type, name, shape, category, pure,
            output_tensor_type, token_embedding_type, patterns,
        )
        choices[name] = PresetChoice(
            name, new_type, reason, requires_imatrix(name, new_type, preset_name), fallback_from
        )
    return choices


def _unchecked(option: str, type_name: str, name: str, shape: tuple[int, ...]) -> str:
    # llama.cpp applies no row-length fallback to these two options: a type that does not fit aborts it
    # (GGML_ASSERT in gguf_set_tensor_type)
    if not TYPES[type_name].fits_row(shape[0]):
        raise ValueError(
            f"{option} {type_name} does not fit {name}: its rows of {shape[0]} are no multiple of "
            f"{TYPES[type_name].block_size} (llama.cpp would abort)"
        )
    return option


def _tensor_type(
    qs: _QuantizeState,
    hp: PresetHParams,
    preset: str,
    default_type: str,
    name: str,
    shape: tuple[int, ...],
    category: Category,
    pure: bool,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
    patterns: list[tuple[re.Pattern[str], str]],
) -> tuple[str, str, str | None]:
    """``llama_tensor_get_type`` for a tensor llama.cpp may quantize: (type, reason, type before the fallback)."""
    if token_embedding_type is not None and category is Category.TOKEN_EMBD:
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type pattern names it
        named = name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in patterns)
        if not named:
            return token_embedding_type, _unchecked("token_embedding_type", token_embedding_type, name, shape), None
    if output_tensor_type is not None and category is Category.OUTPUT:
        return output_tensor_type, _unchecked("output_tensor_type", output_tensor_type, name, shape), None

    if not _is_quantized(default_type):
        return default_type, "preset default", None

    new_type, reason = default_type, "preset default"
    manual = False
    for pattern, qtype in patterns:
        if pattern.search(name):
            new_type, reason, manual = qtype, f"override {pattern.pattern!r}", True
            break
    if pure and not manual:
        reason = "pure: preset default"
    elif not manual:
        new_type = _mixture_type(qs, hp, preset, name, shape, category, new_type, output_tensor_type,
                                 token_embedding_type)
        if new_type != default_type:
            reason = "mixture rule"

    n_per_row = shape[0]
    fallback = fallback_type(new_type, n_per_row)  # tensor_type_fallback
    if fallback == new_type:
        return new_type, reason, None
    block = TYPES[new_type].block_size
    return fallback, f"fallback {new_type}->{fallback} (row {n_per_row} not a multiple of {block}; {reason})", new_type


def preset_names() -> tuple[str, ...]:
    """The presets ``preset_types`` knows (llama-quantize's names)."""
    return tuple(FILE_TYPES)
