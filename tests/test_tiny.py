"""The tiny models: deterministic, loadable by llama.cpp, shaped like the real families, with matching imatrices."""

import llama_cpp  # noqa: I001  (first, before numpy: a CUDA build of llama.cpp crashes otherwise)

import ctypes

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from cerebellum_ray.formats import tiny
from cerebellum_ray.formats.imatrix import load_imatrix
from cerebellum_ray.formats.tiny import GEMMA4, MIXTRAL, TINY_ARCHS, make_tiny, make_tiny_imatrix

F16, F32 = GGMLQuantizationType.F16, GGMLQuantizationType.F32
TEXT = "The quick brown fox jumps over the lazy dog."


def _tensors(path):
    """name -> (ggml shape ne0.., type)"""
    return {t.name: (tuple(int(x) for x in t.shape), t.tensor_type) for t in GGUFReader(path, "r").tensors}


def _field(path, key):
    return GGUFReader(path, "r").fields[key].contents()


# ---- bytes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_same_seed_same_bytes(tmp_path, arch):
    a = make_tiny(arch, tmp_path / "a.gguf", seed=3).read_bytes()
    b = make_tiny(arch, tmp_path / "b.gguf", seed=3).read_bytes()
    c = make_tiny(arch, tmp_path / "c.gguf", seed=4).read_bytes()
    assert a == b
    assert a != c and len(a) == len(c)


def test_write_is_atomic(tmp_path, monkeypatch):
    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tiny.GGUFWriter, "write_tensor_data", boom)
    with pytest.raises(OSError, match="disk full"):
        make_tiny("llama", tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary file


def test_unknown_arch(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt2'; choose one of gemma4, llama, mixtral"):
        make_tiny("gpt2", tmp_path / "x.gguf")


def test_vocab_is_small_and_consistent():
    v = tiny.tiny_vocab()
    assert len(v.tokens) <= 1024 and len(set(v.tokens)) == len(v.tokens)
    assert len(v.scores) == len(v.types) == len(v.tokens)
    assert v.tokens[:4] == ("<pad>", "<eos>", "<bos>", "<unk>")
    assert v.tokens[4:260] == tuple(f"<0x{b:02X}>" for b in range(256))  # byte fallback
    pieces = set(v.tokens)
    assert all(left + right in pieces for left, right in (m.split(" ") for m in v.merges))


# ---- llama.cpp runs them ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llms(tiny_models):
    return {
        arch: llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False)
        for arch, path in tiny_models.items()
    }


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_logits_are_finite_and_informative(llms, arch):
    llm = llms[arch]
    llm.reset()
    tokens = llm.tokenize((TEXT + " It was a good day for the world, and we know that.").encode())
    llm.eval(tokens)
    logits = np.array(llm.scores[: llm.n_tokens])
    assert logits.shape == (len(tokens), llm.n_vocab())
    assert np.isfinite(logits).all()
    assert logits.std(axis=-1).min() > 0.5  # not flat
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert 0.05 < p.max(-1).mean() < 0.95  # neither uniform nor one-hot
    assert (logits.argmax(-1) == np.array(tokens)).mean() < 0.5  # not just echoing its input (tied embeddings)
    assert len(set(logits.argmax(-1).tolist())) > 3


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("text", [TEXT, "Hello world: 42% of the text is data, \u00fcber-Z\u00fcrich \u2014 ok?\n"])
def test_tokenize_round_trip(llms, arch, text):
    llm = llms[arch]
    tokens = llm.tokenize(text.encode())
    assert tokens[0] == tiny.BOS_ID
    assert llm.detokenize(tokens) == text.encode()
    assert max(tokens) < llm.n_vocab()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_words_are_single_tokens(llms, arch):
    tokens = llms[arch].tokenize(TEXT.encode(), add_bos=False)
    assert len(tokens) <= 12  # one token per word (plus "The" / "." pieces), not one per character


# ---- shapes ----------------------------------------------------------------------------------------------------------


def test_gemma4_tensor_set(tiny_models):
    path = tiny_models["gemma4"]
    t = _tensors(path)
    s = GEMMA4
    assert _field(path, "general.architecture") == "gemma4"
    assert _field(path, "tokenizer.ggml.model") == "gemma4"
    assert list(_field(path, "gemma4.attention.sliding_window_pattern")) == [True] * 5 + [False]
    assert "output.weight" not in t  # tied to token_embd
    assert t["token_embd.weight"] == ((s.n_embd, len(tiny.tiny_vocab().tokens)), F16)
    assert t["rope_freqs.weight"] == ((s.head_dim_full // 2,), F32)
    for il in range(s.n_layer):
        p = f"blk.{il}."
        hd = s.head_dim_swa if il < 5 else s.head_dim_full
        assert t[p + "attn_q.weight"] == ((s.n_embd, s.n_head * hd), F16)
        assert (p + "attn_v.weight" in t) == (il < 5)  # the full-attention layer shares K as V
        assert t[p + "attn_output.weight"] == ((s.n_head * hd, s.n_embd), F16)
        assert t[p + "ffn_gate.weight"] == t[p + "ffn_up.weight"] == ((s.n_embd, s.n_ff), F16)
        assert t[p + "ffn_down.weight"] == ((s.n_ff, s.n_embd), F16)
        assert t[p + "ffn_gate_inp.weight"] == ((s.n_embd, s.n_expert), F32)  # the router stays F32
        assert t[p + "ffn_gate_up_exps.weight"] == ((s.n_embd, 2 * s.n_ff_exp, s.n_expert), F16)
        assert t[p + "ffn_down_exps.weight"] == ((s.n_ff_exp, s.n_embd, s.n_expert), F16)
        assert t[p + "ffn_down_exps.scale"] == ((s.n_expert,), F32)
        assert t[p + "ffn_gate_inp.scale"] == ((s.n_embd,), F32)
        assert t[p + "layer_output_scale.weight"] == ((1,), F32)
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm", "pre_ffw_norm_2",
                     "post_ffw_norm_1", "post_ffw_norm_2"):
            assert t[f"{p}{norm}.weight"] == ((s.n_embd,), F32)
        assert t[p + "attn_q_norm.weight"] == t[p + "attn_k_norm.weight"] == ((hd,), F32)
    assert {n for n, (_, ty) in t.items() if ty == F16} == {n for n, (sh, _) in t.items() if len(sh) >= 2} - {
        n for n in t if "ffn_gate_inp" in n
    }


def test_gemma4_has_k_quant_illegal_rows_like_the_real_model(tiny_models):
    t = _tensors(tiny_models["gemma4"])
    illegal = {n.split(".", 2)[2] for n, (sh, ty) in t.items() if ty == F16 and sh[0] % 256}
    assert illegal == {"ffn_down.weight", "ffn_down_exps.weight"}
    assert all(sh[0] % 32 == 0 for sh, ty in t.values() if ty == F16)  # 32-element block types still fit


def test_llama_and_mixtral_shapes(tiny_models):
    llama, mixtral = _tensors(tiny_models["llama"]), _tensors(tiny_models["mixtral"])
    assert llama["output.weight"][0] == llama["token_embd.weight"][0]
    assert "blk.0.ffn_gate.weight" in llama and "blk.0.ffn_gate_inp.weight" not in llama
    m = MIXTRAL
    assert mixtral["blk.0.ffn_gate_inp.weight"] == ((m.n_embd, m.n_expert), F32)
    for kind in ("gate", "up"):
        assert mixtral[f"blk.0.ffn_{kind}_exps.weight"] == ((m.n_embd, m.n_ff, m.n_expert), F16)
    assert mixtral["blk.0.ffn_down_exps.weight"] == ((m.n_ff, m.n_embd, m.n_expert), F16)
    assert m.n_ff % 256 != 0
    assert _field(tiny_models["mixtral"], "llama.expert_used_count") == m.n_expert_used


# ---- importance matrices ---------------------------------------------------------------------------------------------


def _imatrix_targets(path):
    return {n: sh for n, (sh, _) in _tensors(path).items()
            if n.endswith(".weight") and len(sh) >= 2 and n not in ("token_embd.weight", "output.weight")}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_imatrix_covers_every_matrix(tiny_models, tiny_imatrix, arch):
    targets = _imatrix_targets(tiny_models[arch])
    g, d = (load_imatrix(tiny_imatrix[arch][fmt]) for fmt in ("gguf", "dat"))
    assert set(g.entries) == set(d.entries) == set(targets)
    for name, shape in targets.items():
        n_expert = shape[2] if len(shape) == 3 else 1
        vec = g.per_expert(name, shape[0], n_expert)
        assert np.all(vec > 0) and np.all(np.isfinite(vec))
        # the legacy format stores mean * ncall, so the two formats agree to rounding only (as with llama-imatrix)
        np.testing.assert_allclose(d.vector(name), g.vector(name), rtol=3e-7)
    assert g.chunk_count == d.chunk_count == 4 and g.datasets == d.datasets


def test_tiny_imatrix_has_an_unrouted_expert(tiny_models, tiny_imatrix):
    g = load_imatrix(tiny_imatrix["gemma4"]["gguf"])
    rows = g.per_expert("blk.0.ffn_down_exps.weight", GEMMA4.n_ff_exp, GEMMA4.n_expert)
    assert np.all(rows[-1] == 1.0) and not np.any(rows[0] == 1.0)  # llama-quantize's "count 0 -> ones"


def test_tiny_imatrix_is_deterministic(tiny_models, tmp_path):
    for fmt in ("gguf", "dat"):
        a = make_tiny_imatrix(tiny_models["mixtral"], tmp_path / f"a.{fmt}", fmt=fmt, seed=1).read_bytes()
        b = make_tiny_imatrix(tiny_models["mixtral"], tmp_path / f"b.{fmt}", fmt=fmt, seed=1).read_bytes()
        c = make_tiny_imatrix(tiny_models["mixtral"], tmp_path / f"c.{fmt}", fmt=fmt, seed=2).read_bytes()
        assert a == b and a != c


def test_llama_quantize_accepts_tiny_imatrix(tiny_models, tiny_imatrix, tmp_path):
    """llama.cpp's own quantizer takes the vectors (it throws on a size mismatch) and the result runs."""
    im = load_imatrix(tiny_imatrix["gemma4"]["dat"])
    keep = [np.ascontiguousarray(v) for v in im.entries.values()]
    entries = (llama_cpp.llama_model_imatrix_data * (len(keep) + 1))()
    for e, name, vec in zip(entries, im.entries, keep):
        e.name, e.data, e.size = name.encode(), vec.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), vec.size
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    params.imatrix = entries
    out = tmp_path / "q4km.gguf"
    assert llama_cpp.llama_model_quantize(str(tiny_models["gemma4"]).encode(), str(out).encode(), params) == 0
    types = {name: ty for name, (_, ty) in _tensors(out).items()}
    assert types["blk.0.ffn_down.weight"] not in (F16, GGMLQuantizationType.Q4_K)  # fell back: 352 is not x256
    assert types["blk.0.ffn_gate_inp.weight"] == F32
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(llm.tokenize(TEXT.encode()))
    assert np.isfinite(np.array(llm.scores[: llm.n_tokens])).all()


def test_a_one_layer_gemma4_is_refused_before_llama_cpp_could_abort_on_it(tmp_path):
    with pytest.raises(tiny.TinyError, match="at least 2 for gemma4"):
        tiny.make_tiny("gemma4", tmp_path / "one.gguf", n_layer=1)
    assert not (tmp_path / "one.gguf").exists()
    path = tiny.make_tiny("gemma4", tmp_path / "two.gguf", n_layer=2)
    assert list(_field(path, "gemma4.attention.sliding_window_pattern")) == [True, False]
