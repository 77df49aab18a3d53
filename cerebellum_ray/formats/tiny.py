"""Tiny, deterministic GGUF models that llama.cpp loads and runs: fixtures for tests and benchmarks.

Three architectures, each a miniature of a real model family:

- ``gemma4``: the Gemma 4 26B-A4B layout (``src/models/gemma4.cpp``): 5 sliding-window layers then 1 full-attention
  layer without ``attn_v`` (K doubles as V there), a dense GELU FFN *and* a routed MoE in every layer, merged
  ``ffn_gate_up_exps``, router ``ffn_gate_inp`` with its ``.scale``, per-expert ``ffn_down_exps.scale``,
  ``layer_output_scale``, proportional RoPE through ``rope_freqs``, tied embeddings, final logit soft-capping and the
  ``gemma4`` BPE tokenizer. Like the real model, ``ffn_down`` (352) and ``ffn_down_exps`` (96) have rows that are a
  multiple of 32 but not of 256, so K-quants do not fit them.
- ``llama``: a dense Llama with grouped-query attention and a separate ``output.weight``; SentencePiece vocabulary.
- ``mixtral``: the ``llama`` architecture with 4 experts (top-2), separate ``ffn_{gate,up,down}_exps``; its expert
  width (384) is again not a multiple of 256.

Weights are F16 for matrices (what llama-quantize expects as input) and F32 for norms, scales and MoE routers, as
convert_hf_to_gguf.py writes them. The same ``(arch, seed)`` always gives the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, TokenType

from ..core.atomic import atomic_path
from ..core.errors import CerebellumError
from .imatrix import write_collected_imatrix

TINY_ARCHS = ("gemma4", "llama", "mixtral")

# ---- vocabulary --------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, the Gemma order
PAD_ID, EOS_ID, BOS_ID, UNK_ID = range(4)
_SPACE = "\u2581"  # SentencePiece's visible space

# Common English words; each becomes "▁word" plus every "▁prefix" on the way there.
_WORD_TEXT = """
the of and to in a is that for it as was with be by on not he this are or his from at which but have an they you
were her she there one all we can their has been if more when will would who so no what up out about into than them
time like other some only then its also two my first could people over any these may new most very after did made
where way many before through good just well our each those because such must how long should while much see years
world day life men know work said down back even still great use own here get year might both between being under
never same another go think last come part small large number word text model token test quick brown fox jumps lazy
dog hello sentence language data value weight layer expert
"""
_WORDS = tuple(_WORD_TEXT.split())
_CAPITALIZED = ("The", "This", "It", "In", "We", "Hello")  # start-of-text words (gemma4 adds no space prefix)
_SUFFIXES = ("ing", "ed", "er", "ly", "es", "tion")


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]  # gguf.TokenType values
    merges: tuple[str, ...]  # BPE merges "left right", rank order (used by the gemma4 tokenizer)


def tiny_vocab() -> Vocab:
    """The shared small vocabulary: 4 specials, 256 byte-fallback tokens, characters, words and their prefixes.

    Every multi-character piece is reachable by a chain of merges (prefix + next character), so SentencePiece (by
    score) and BPE (by merge rank) both tokenize plain English into words, and anything else falls back to bytes.
    """
    tokens = list(SPECIAL_TOKENS)
    types = [TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.UNKNOWN]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces = [_SPACE] + [chr(c) for c in range(33, 127)]
    merges: list[str] = []
    seen = set(pieces)
    chains = [_SPACE + w for w in _WORDS] + list(_CAPITALIZED) + list(_SUFFIXES)
    for word in chains:
        for end in range(2, len(word) + 1):
            piece = word[:end]
            if piece not in seen:
                seen.add(piece)
                pieces.append(piece)
                merges.append(f"{word[:end - 1]} {word[end - 1]}")
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    n_fixed = len(SPECIAL_TOKENS) + 256
    # SentencePiece merges the highest-scoring pair first: earlier (shorter, commoner) pieces score higher.
    scores = [0.0] * n_fixed + [-float(i) for i in range(len(pieces))]
    return Vocab(tuple(tokens), tuple(scores), tuple(int(t) for t in types), tuple(merges))


def padded_vocab(n_vocab: int) -> Vocab:
    """The tiny vocabulary padded with unused tokens to `n_vocab` entries (a real model's output projection size)."""
    v = tiny_vocab()
    extra = n_vocab - len(v.tokens)
    if extra < 0:
        raise TinyError(f"a vocabulary of {n_vocab} tokens is smaller than the tiny one ({len(v.tokens)})")
    return Vocab(v.tokens + tuple(f"<unused{i}>" for i in range(extra)), v.scores + (-1e9,) * extra,
                 v.types + (int(TokenType.UNUSED),) * extra, v.merges)


# ---- shapes --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gemma4Shape:
    n_embd: int = 256  # a multiple of 256, as the real 2816: K-quants fit rows of this length
    n_layer: int = 6
    swa_period: int = 6  # 5 sliding-window layers then 1 full-attention layer (layer 5)
    n_head: int = 4
    n_head_kv_swa: int = 2
    n_head_kv_full: int = 1
    head_dim_swa: int = 64
    head_dim_full: int = 128  # twice the sliding head, as 512 vs 256
    rotary_full: float = 0.25  # partial rotary factor of the full-attention layers (proportional RoPE)
    n_ff: int = 352  # dense FFN width: 11 x 32, not a multiple of 256 (real: 2112)
    # Not 8: llama-quant.cpp has Mixtral-8x7B rules keyed on n_expert == 8 that the real 128-expert model never hits.
    n_expert: int = 16
    n_expert_used: int = 2
    n_ff_exp: int = 96  # expert width: 3 x 32, not a multiple of 256 (real: 704)
    sliding_window: int = 32  # shorter than a test context, so the window actually masks
    n_ctx_train: int = 4096
    rms_eps: float = 1e-6
    rope_base_full: float = 1_000_000.0
    rope_base_swa: float = 10_000.0
    logit_softcap: float = 30.0

    def is_swa(self, il: int) -> bool:
        """Sliding-window layer? The period's last layer is full attention; a model shorter than one period (a
        rehearsal of a few layers) still ends with a full-attention layer, so both kinds are present."""
        if self.n_layer < self.swa_period and il == self.n_layer - 1:
            return False
        return il % self.swa_period < self.swa_period - 1


@dataclass(frozen=True)
class LlamaShape:
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512  # dense FFN width, or the expert width when n_expert > 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ctx_train: int = 4096
    rms_eps: float = 1e-5
    rope_base: float = 10_000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


GEMMA4 = Gemma4Shape()
LLAMA = LlamaShape()
MIXTRAL = LlamaShape(n_ff=384, n_expert=4, n_expert_used=2)  # ffn_down_exps rows 384 long: 12 x 32, not x 256

# Real shapes, for rehearsals at the scale the project exists for (random weights, so only speed and memory mean
# anything). ../shared/notes/gemma4-26b-a4b.md: hidden 2816, 16 heads of 256 (sliding, 8 KV heads) / 512 (full, 2 KV
# heads), dense FFN 2112, 128 experts of 704 (top 8), sliding window 1024, vocabulary 262144.
GEMMA4_26B_A4B = Gemma4Shape(n_embd=2816, n_layer=30, n_head=16, n_head_kv_swa=8, n_head_kv_full=2, head_dim_swa=256,
                             head_dim_full=512, n_ff=2112, n_expert=128, n_expert_used=8, n_ff_exp=704,
                             sliding_window=1024, n_ctx_train=131072)
# Gemma 3 270M's sizes on the llama architecture (hidden 640, 18 layers, 4 heads, 1 KV head, FFN 2048, 262k vocab,
# untied output): a stand-in of the real model's cost where the real file cannot go (a device without the network).
LLAMA_270M = LlamaShape(n_embd=640, n_layer=18, n_head=4, n_head_kv=1, n_ff=2048, n_ctx_train=32768)
REAL_VOCAB = 262144
# --shape NAME: (architectures it applies to, shape, vocabulary size or None for the tiny vocabulary)
SHAPES = {
    "tiny": (TINY_ARCHS, None, None),
    "gemma4-26b-a4b": (("gemma4",), GEMMA4_26B_A4B, REAL_VOCAB),
    "llama-270m": (("llama",), LLAMA_270M, REAL_VOCAB),
}

# ---- weights -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """One tensor to draw: numpy shape (row length last), what kind of values, their parameters; drawn in order."""

    shape: tuple[int, ...]
    kind: str  # "matrix" (F16/BF16/F32 weights), "norm" (F32 near a centre), "router" (F32), "const"
    gain: float = 1.0
    center: float = 1.0
    spread: float = 0.05
    value: np.ndarray | None = None  # kind "const"

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class _Weights:
    """Describes tensors now and draws them later, from one generator in list order, so a model's bytes depend only
    on the seed, and writing needs about one tensor of memory (a 26B-shaped layer is gigabytes)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def matrix(*shape: int, gain: float = 1.0) -> _Spec:
        """Weights ~ N(0, gain^2 / fan_in); shape in numpy order, so the row (fan-in) length is shape[-1]."""
        return _Spec(tuple(shape), "matrix", gain=gain)

    @staticmethod
    def norm(n: int, center: float = 1.0, spread: float = 0.05) -> _Spec:
        """F32 norm or scale weights near `center`."""
        return _Spec((n,), "norm", center=float(center), spread=spread)

    @staticmethod
    def router(n_expert: int, n_embd: int, gain: float) -> _Spec:
        """F32 router [n_embd, n_expert] (ggml order): routers are kept F32 and never quantized by llama-quantize."""
        return _Spec((n_expert, n_embd), "router", gain=gain)

    def draw(self, spec: _Spec) -> np.ndarray:
        """The values of `spec`: float32 (matrices are converted to the file's type by the writer; routers are
        F16-rounded F32, as convert_hf_to_gguf.py leaves an F16 checkpoint's router)."""
        if spec.kind == "const":
            return spec.value
        if spec.kind == "norm":
            return (np.float32(spec.center) + np.float32(spec.spread)
                    * self.rng.standard_normal(spec.shape[0], dtype=np.float32)).astype(np.float32)
        w = self.rng.standard_normal(spec.shape, dtype=np.float32)
        w *= np.float32(spec.gain / np.sqrt(spec.shape[-1]))
        return w if spec.kind == "matrix" else w.astype(np.float16).astype(np.float32)


def to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even as PyTorch and ggml's fp32_to_bf16 do."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


# matrix storage: numpy dtype written, GGUF raw type (None: derived from the numpy dtype), bytes per element
MATRIX_DTYPES = {"F16": (np.float16, None, 2), "BF16": (np.uint16, GGMLQuantizationType.BF16, 2),
                 "F32": (np.float32, None, 4)}


TensorList = list[tuple[str, _Spec]]


def _gemma4_tensors(w: type[_Weights], s: Gemma4Shape, n_vocab: int) -> TensorList:
    n_rot_half = int(s.head_dim_full * s.rotary_full / 2)
    # Proportional RoPE (converter's generate_extra_tensors): 1e30 freezes the unrotated dimensions.
    rope_freqs = np.array([1.0] * n_rot_half + [1e30] * (s.head_dim_full // 2 - n_rot_half), dtype=np.float32)
    out: TensorList = [
        ("rope_freqs.weight", _Spec(rope_freqs.shape, "const", value=rope_freqs)),
        # Tied output (logits = E . h) and the input is E[token] * sqrt(n_embd): a large gain would make every position
        # predict its own input token; a small one, with output_norm gain below, lets the layers decide the logits.
        ("token_embd.weight", w.matrix(n_vocab, s.n_embd, gain=0.5)),
    ]
    for il in range(s.n_layer):
        swa = s.is_swa(il)
        hd = s.head_dim_swa if swa else s.head_dim_full
        n_kv = s.n_head_kv_swa if swa else s.n_head_kv_full
        p = f"blk.{il}."
        out += [
            (p + "attn_norm.weight", w.norm(s.n_embd)),
            (p + "attn_q.weight", w.matrix(s.n_head * hd, s.n_embd)),
            (p + "attn_k.weight", w.matrix(n_kv * hd, s.n_embd)),
        ]
        if swa:  # full-attention layers reuse K as V (attention_k_eq_v): no attn_v there
            out.append((p + "attn_v.weight", w.matrix(n_kv * hd, s.n_embd)))
        out += [
            (p + "attn_output.weight", w.matrix(s.n_embd, s.n_head * hd)),
            # Gemma 4 does not scale q.k (f_attention_scale = 1): small q/k norm weights keep q.k near unit variance.
            (p + "attn_q_norm.weight", w.norm(hd, center=hd**-0.25)),
            (p + "attn_k_norm.weight", w.norm(hd, center=hd**-0.25)),
            (p + "post_attention_norm.weight", w.norm(s.n_embd)),
            (p + "layer_output_scale.weight", w.norm(1, center=0.9)),
            # dense (shared) FFN
            (p + "ffn_norm.weight", w.norm(s.n_embd)),
            (p + "ffn_gate.weight", w.matrix(s.n_ff, s.n_embd)),
            (p + "ffn_up.weight", w.matrix(s.n_ff, s.n_embd)),
            (p + "ffn_down.weight", w.matrix(s.n_embd, s.n_ff)),
            (p + "post_ffw_norm.weight", w.norm(s.n_embd)),
            # routed experts: router input is rms_norm(x) / sqrt(n_embd) * scale, so scale ~ sqrt(n_embd)
            (p + "ffn_gate_inp.weight", w.router(s.n_expert, s.n_embd, gain=2.0)),
            (p + "ffn_gate_inp.scale", w.norm(s.n_embd, center=np.sqrt(s.n_embd), spread=0.5)),
            (p + "pre_ffw_norm_2.weight", w.norm(s.n_embd)),
            (p + "post_ffw_norm_1.weight", w.norm(s.n_embd)),
            (p + "post_ffw_norm_2.weight", w.norm(s.n_embd)),
            (p + "ffn_gate_up_exps.weight", w.matrix(s.n_expert, 2 * s.n_ff_exp, s.n_embd)),
            (p + "ffn_down_exps.weight", w.matrix(s.n_expert, s.n_embd, s.n_ff_exp)),
            (p + "ffn_down_exps.scale", w.norm(s.n_expert, spread=0.1)),
        ]
    out.append(("output_norm.weight", w.norm(s.n_embd, center=5.0, spread=0.25)))  # sharpens the logits
    return out


def _llama_tensors(w: type[_Weights], s: LlamaShape, n_vocab: int) -> TensorList:
    hd = s.head_dim
    out: TensorList = [("token_embd.weight", w.matrix(n_vocab, s.n_embd, gain=np.sqrt(s.n_embd)))]
    for il in range(s.n_layer):
        p = f"blk.{il}."
        out += [
            (p + "attn_norm.weight", w.norm(s.n_embd)),
            (p + "attn_q.weight", w.matrix(s.n_head * hd, s.n_embd)),
            (p + "attn_k.weight", w.matrix(s.n_head_kv * hd, s.n_embd)),
            (p + "attn_v.weight", w.matrix(s.n_head_kv * hd, s.n_embd)),
            (p + "attn_output.weight", w.matrix(s.n_embd, s.n_head * hd)),
            (p + "ffn_norm.weight", w.norm(s.n_embd)),
        ]
        if s.n_expert == 0:
            out += [
                (p + "ffn_gate.weight", w.matrix(s.n_ff, s.n_embd)),
                (p + "ffn_up.weight", w.matrix(s.n_ff, s.n_embd)),
                (p + "ffn_down.weight", w.matrix(s.n_embd, s.n_ff)),
            ]
        else:
            out += [
                (p + "ffn_gate_inp.weight", w.router(s.n_expert, s.n_embd, gain=2.0)),
                (p + "ffn_gate_exps.weight", w.matrix(s.n_expert, s.n_ff, s.n_embd)),
                (p + "ffn_up_exps.weight", w.matrix(s.n_expert, s.n_ff, s.n_embd)),
                (p + "ffn_down_exps.weight", w.matrix(s.n_expert, s.n_embd, s.n_ff)),
            ]
    out += [
        ("output_norm.weight", w.norm(s.n_embd)),
        ("output.weight", w.matrix(n_vocab, s.n_embd, gain=3.0)),
    ]
    return out


# ---- metadata ------------------------------------------------------------------------------------------------------


def _add_gemma4_tokenizer(gw: GGUFWriter, v: Vocab) -> None:
    # Gemma 4's own tokenizer: SentencePiece-style BPE ("▁" for spaces, <0xXX> byte fallback, merges by rank).
    gw.add_tokenizer_model("gemma4")
    gw.add_token_list(list(v.tokens))
    gw.add_token_scores(list(v.scores))
    gw.add_token_types(list(v.types))
    gw.add_token_merges(list(v.merges))
    _add_special_ids(gw)
    gw.add_add_space_prefix(False)


def _add_spm_tokenizer(gw: GGUFWriter, v: Vocab) -> None:
    gw.add_tokenizer_model("llama")
    gw.add_token_list(list(v.tokens))
    gw.add_token_scores(list(v.scores))
    gw.add_token_types(list(v.types))
    _add_special_ids(gw)


def _add_special_ids(gw: GGUFWriter) -> None:
    gw.add_bos_token_id(BOS_ID)
    gw.add_eos_token_id(EOS_ID)
    gw.add_unk_token_id(UNK_ID)
    gw.add_pad_token_id(PAD_ID)
    gw.add_add_bos_token(True)
    gw.add_add_eos_token(False)


def _gemma4_metadata(gw: GGUFWriter, s: Gemma4Shape) -> None:
    swa = [s.is_swa(il) for il in range(s.n_layer)]
    gw.add_context_length(s.n_ctx_train)
    gw.add_embedding_length(s.n_embd)
    gw.add_block_count(s.n_layer)
    gw.add_feed_forward_length(s.n_ff)
    gw.add_head_count(s.n_head)
    gw.add_head_count_kv([s.n_head_kv_swa if x else s.n_head_kv_full for x in swa])
    gw.add_layer_norm_rms_eps(s.rms_eps)
    gw.add_key_length(s.head_dim_full)
    gw.add_value_length(s.head_dim_full)
    gw.add_key_length_swa(s.head_dim_swa)
    gw.add_value_length_swa(s.head_dim_swa)
    gw.add_rope_dimension_count(s.head_dim_full)  # partial rotation is done by rope_freqs, as the converter does
    gw.add_rope_dimension_count_swa(s.head_dim_swa)
    gw.add_rope_freq_base(s.rope_base_full)
    gw.add_rope_freq_base_swa(s.rope_base_swa)
    gw.add_sliding_window(s.sliding_window)
    gw.add_sliding_window_pattern(swa)
    gw.add_final_logit_softcapping(s.logit_softcap)
    gw.add_shared_kv_layers(0)
    gw.add_embedding_length_per_layer_input(0)  # required key; 0 = no per-layer embeddings (26B-A4B has none)
    gw.add_expert_count(s.n_expert)
    gw.add_expert_used_count(s.n_expert_used)
    gw.add_expert_feed_forward_length(s.n_ff_exp)


def _llama_metadata(gw: GGUFWriter, s: LlamaShape) -> None:
    gw.add_context_length(s.n_ctx_train)
    gw.add_embedding_length(s.n_embd)
    gw.add_block_count(s.n_layer)
    gw.add_feed_forward_length(s.n_ff)
    gw.add_head_count(s.n_head)
    gw.add_head_count_kv(s.n_head_kv)
    gw.add_layer_norm_rms_eps(s.rms_eps)
    gw.add_rope_dimension_count(s.head_dim)
    gw.add_rope_freq_base(s.rope_base)
    if s.n_expert:
        gw.add_expert_count(s.n_expert)
        gw.add_expert_used_count(s.n_expert_used)


# ---- writing -------------------------------------------------------------------------------------------------------

_FILE_TYPES = {"F16": 1, "BF16": 32, "F32": 0}  # llama_ftype: LLAMA_FTYPE_MOSTLY_F16, _MOSTLY_BF16, _ALL_F32


@dataclass(frozen=True)
class _Recipe:
    gguf_arch: str
    default_shape: Gemma4Shape | LlamaShape
    metadata: Callable[[GGUFWriter, Gemma4Shape | LlamaShape], None]
    tokenizer: Callable[[GGUFWriter, Vocab], None]
    tensors: Callable[[Gemma4Shape | LlamaShape, int], TensorList]


_RECIPES: dict[str, _Recipe] = {
    "gemma4": _Recipe("gemma4", GEMMA4, _gemma4_metadata, _add_gemma4_tokenizer,
                      lambda s, n_vocab: _gemma4_tensors(_Weights, s, n_vocab)),
    "llama": _Recipe("llama", LLAMA, _llama_metadata, _add_spm_tokenizer,
                     lambda s, n_vocab: _llama_tensors(_Weights, s, n_vocab)),
    "mixtral": _Recipe("llama", MIXTRAL, _llama_metadata, _add_spm_tokenizer,
                       lambda s, n_vocab: _llama_tensors(_Weights, s, n_vocab)),
}


def _shape_for(arch: str, shape: str, n_layer: int | None):
    if shape not in SHAPES:
        raise TinyError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    archs, real, n_vocab = SHAPES[shape]
    if arch not in archs:
        raise TinyError(f"shape {shape} is for --arch {' or '.join(archs)}, not {arch}")
    chosen = real or _RECIPES[arch].default_shape
    if n_layer is not None:
        if n_layer < 1:
            raise TinyError(f"--layers must be at least 1, got {n_layer}")
        if arch == "gemma4" and n_layer < 2:  # one layer is the full-attention one: llama.cpp aborts on load
            raise TinyError("--layers must be at least 2 for gemma4: llama.cpp needs a sliding-window layer and a "
                            "full-attention one (it aborts loading a model without a sliding-window layer)")
        chosen = replace(chosen, n_layer=n_layer)
    return chosen, n_vocab


def make_tiny(arch: str, out_path: str | os.PathLike, seed: int = 0, shape: str = "tiny", n_layer: int | None = None,
              dtype: str = "F16") -> Path:
    """Write the tiny `arch` model ("gemma4", "llama" or "mixtral") to `out_path` and return the path.

    `shape` "tiny" (default) is the small test model; "gemma4-26b-a4b" and "llama-270m" give real models' tensor
    shapes and a 262144-token vocabulary, with `n_layer` layers (the real count if None). `dtype` is the matrices'
    type: F16 (default), BF16 or F32; norms, scales and routers are F32. The file loads in llama.cpp
    (llama-cpp-python 0.3.36) and is byte-identical for the same arguments. It is streamed (memory: about one
    tensor) and written atomically: on error `out_path` is left untouched.
    """
    if arch not in _RECIPES:
        raise TinyError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    if dtype not in MATRIX_DTYPES:
        raise TinyError(f"unknown matrix type {dtype!r}; choose one of {', '.join(MATRIX_DTYPES)}")
    recipe = _RECIPES[arch]
    model_shape, n_vocab = _shape_for(arch, shape, n_layer)
    vocab = tiny_vocab() if n_vocab is None else padded_vocab(n_vocab)
    specs = recipe.tensors(model_shape, len(vocab.tokens))
    np_dtype, raw_dtype, n_bytes = MATRIX_DTYPES[dtype]
    weights = _Weights(seed)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        gw = GGUFWriter(tmp, recipe.gguf_arch)
        gw.add_name(f"cerebellum-tiny-{arch}-seed{seed}" + ("" if shape == "tiny" else f"-{shape}"))
        gw.add_file_type(_FILE_TYPES[dtype])
        recipe.metadata(gw, model_shape)
        recipe.tokenizer(gw, vocab)
        for name, spec in specs:
            if spec.kind == "matrix":
                gw.add_tensor_info(name, spec.shape, np.dtype(np_dtype), spec.n_elements * n_bytes, raw_dtype)
            else:
                gw.add_tensor_info(name, spec.shape, np.dtype(np.float32), spec.n_elements * 4)
        gw.write_header_to_file()
        gw.write_kv_data_to_file()
        gw.write_ti_data_to_file()
        for _, spec in specs:
            values = weights.draw(spec)
            if spec.kind == "matrix":
                values = to_bf16(values) if dtype == "BF16" else values.astype(np_dtype)
            gw.write_tensor_data(values)
            del values
        gw.close()
    return out_path


class TinyError(CerebellumError):
    """An unknown architecture, shape or type for make-tiny."""


# ---- importance matrices -------------------------------------------------------------------------------------------

def _imatrix_targets(reader: GGUFReader) -> list[tuple[str, int, int]]:
    """(name, ne0, n_mat) of every matrix llama-imatrix collects for, in file order.

    llama-imatrix records the inputs of every matrix multiplication by a "blk.*" weight (routers included); it skips
    token_embd and output.weight (the latter unless --process-output).
    """
    targets = []
    for t in reader.tensors:
        ne = [int(x) for x in t.shape]  # ggml order: ne0 first
        if not (t.name.startswith("blk.") and t.name.endswith(".weight")) or len(ne) < 2:
            continue
        targets.append((t.name, ne[0], ne[2] if len(ne) > 2 else 1))
    return targets


def _expert_used_count(reader: GGUFReader) -> int:
    arch = str(reader.fields["general.architecture"].contents())
    field = reader.fields.get(f"{arch}.expert_used_count")
    return int(field.contents()) if field is not None else 0


def make_tiny_imatrix(model_path: str | os.PathLike, out_path: str | os.PathLike, fmt: str = "gguf",
                      seed: int = 0) -> Path:
    """Write a deterministic importance matrix for `model_path` in llama-imatrix's "gguf" or legacy "dat" format.

    The numbers imitate what llama-imatrix collects over 4 chunks of 64 tokens: per-column sums of squared
    activations and per-matrix token counts. Expert tensors count the tokens routed to each expert (the same routing
    for all expert tensors of a layer), and the last expert of the first MoE layer is never routed, as happens with
    real data. Both formats are written exactly as llama-imatrix writes them, so the importances llama-quantize
    derives from the two files agree to float rounding (not bit for bit: the legacy format stores mean * ncall,
    which rounds). Every importance is positive and finite.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    reader = GGUFReader(model_path, "r")
    n_used = _expert_used_count(reader)
    chunk_count, chunk_size = 4, 64
    n_tokens = chunk_count * chunk_size
    rng = np.random.default_rng(seed)
    routing: dict[str, np.ndarray] = {}  # layer prefix -> tokens per expert
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, ne0, n_mat in _imatrix_targets(reader):
        if n_mat == 1:
            counts = np.array([n_tokens], dtype=np.int64)
        else:
            layer = name.split(".")[1]
            if layer not in routing:
                routing[layer] = rng.multinomial(n_tokens * n_used, np.full(n_mat, 1.0 / n_mat)).astype(np.int64)
                if len(routing) == 1:
                    routing[layer][-1] = 0  # an expert the calibration text never reached
            counts = routing[layer]
        mean_sq = np.exp(rng.normal(0.0, 0.75, size=(n_mat, ne0))).astype(np.float32)
        sums = (mean_sq * counts[:, None].astype(np.float32)).reshape(-1)
        stats[name] = (sums, counts)
    write_collected_imatrix(
        out_path, stats, fmt=fmt, datasets=(f"tiny-calibration-seed{seed}.txt",),
        chunk_count=chunk_count, chunk_size=chunk_size,
    )
    return out_path


__all__ = [
    "GEMMA4", "GEMMA4_26B_A4B", "Gemma4Shape", "LLAMA", "LLAMA_270M", "LlamaShape", "MATRIX_DTYPES", "MIXTRAL",
    "REAL_VOCAB", "SHAPES", "SPECIAL_TOKENS", "TINY_ARCHS", "TensorList", "TinyError", "Vocab", "make_tiny",
    "make_tiny_imatrix", "padded_vocab", "tiny_vocab", "to_bf16"
]
