"""Scoring: perplexity against a plain numpy computation, KL divergence, streaming, refusals."""

import llama_cpp

import numpy as np
import pytest

from cerebellum_ray.quant.build import build
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.evaluate.llama_runner import LlamaRunner, RunnerConfig
from cerebellum_ray.evaluate.logprobs import full_kld
from cerebellum_ray.formats.precision_map import MapSpec, resolve
from cerebellum_ray.evaluate.reference import ReferenceMismatch, load_reference, save_reference
from cerebellum_ray.evaluate.score import EvalSpec, ScoreError, chunk_logits, compute_reference, score, score_stream

N_CTX = 128


@pytest.fixture(scope="module")
def text():
    words = ("the quick brown fox jumps over the lazy dog while a model of language counts every token it sees "
             "and the search keeps what measures best ").split()
    rng = np.random.default_rng(1)
    return " ".join(rng.choice(words, size=1500))


@pytest.fixture(scope="module")
def quantized(tiny_models, tmp_path_factory):
    """{(arch, preset): path} of quantized tiny models."""
    out = {}
    d = tmp_path_factory.mktemp("q")
    for arch in ("gemma4", "llama"):
        src = tiny_models[arch]
        for preset in ("Q8_0", "Q4_K_M", "Q2_K"):
            path = d / f"{arch}-{preset}.gguf"
            build(src, resolve(load_catalog(src), MapSpec(base=preset)), path, n_threads=2)
            out[arch, preset] = path
    return out


def numpy_reference_ppl(model, text, n_ctx, n_chunks):
    """Independent path: llama-cpp-python's high-level API, every position's logits, float64 numpy NLL."""
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                          flash_attn=True)
    try:
        tokens = np.array(llm.tokenize(text.encode(), add_bos=True))
        nll = []
        for c in range(n_chunks):
            chunk = tokens[c * n_ctx:(c + 1) * n_ctx].copy()
            chunk[0] = llm.token_bos()
            llm.reset()
            llm.eval(chunk.tolist())
            logits = np.array(llm.scores[:n_ctx], dtype=np.float64)
            m = logits.max(axis=1, keepdims=True)
            logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
            half = n_ctx // 2
            nll.extend(-logp[np.arange(half, n_ctx - 1), chunk[half + 1:]])
        return float(np.exp(np.mean(nll))), len(nll)
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ["gemma4", "llama", "mixtral"])
def test_ppl_equals_numpy_over_full_logits(tiny_models, text, arch):
    rec = score(tiny_models[arch], EvalSpec(text, n_ctx=N_CTX, n_chunks=3))
    expected, n = numpy_reference_ppl(tiny_models[arch], text, N_CTX, 3)
    assert rec.n_scored == n == 3 * (N_CTX // 2 - 1)
    assert rec.ppl == pytest.approx(expected, rel=1e-5)
    assert rec.ppl_se > 0 and rec.done and rec.chunks_done == 3


def test_kld_of_a_model_against_itself_is_zero(tiny_models, text):
    spec = EvalSpec(text, n_ctx=N_CTX, n_chunks=3)
    ref = compute_reference(tiny_models["gemma4"], spec)
    rec = score(tiny_models["gemma4"], spec, ref)
    assert rec.kld == pytest.approx(0.0, abs=1e-6) and rec.kld_max < 1e-5
    assert rec.same_top == 1.0 and rec.rms_dp < 1e-5
    assert rec.ppl == pytest.approx(ref.ppl, rel=1e-6) == rec.reference_ppl


@pytest.mark.parametrize("arch", ["gemma4", "llama"])
def test_kld_grows_as_bits_drop(tiny_models, quantized, text, arch):
    spec = EvalSpec(text, n_ctx=N_CTX, n_chunks=3)
    ref = compute_reference(tiny_models[arch], spec)
    kld = {p: score(quantized[arch, p], spec, ref).kld for p in ("Q8_0", "Q4_K_M", "Q2_K")}
    assert 0 < kld["Q8_0"] < kld["Q4_K_M"] < kld["Q2_K"]


def _all_logits(model, text, n_chunks):
    with LlamaRunner(model, RunnerConfig(n_ctx=N_CTX)) as r:
        tokens = r.tokenize(text)
        return np.concatenate([chunk_logits(r, tokens, [c], N_CTX)[0] for c in range(n_chunks)])


@pytest.mark.parametrize("arch", ["gemma4", "llama"])
def test_kld_estimate_against_the_full_vocabulary(tiny_models, quantized, text, arch):
    """The default estimate (top 128 + 128 tail samples) is within 1 % of the exact full-vocabulary mean KLD; top-K
    alone (no tail samples) is a lower bound, about 10 % low at K = 32; K covering the vocabulary is exact."""
    model = quantized[arch, "Q4_K_M"]
    exact = full_kld(_all_logits(tiny_models[arch], text, 2), _all_logits(model, text, 2)).mean()

    def kld(**kw):
        spec = EvalSpec(text, n_ctx=N_CTX, n_chunks=2, **kw)
        return score(model, spec, compute_reference(tiny_models[arch], spec)).kld

    assert kld() == pytest.approx(exact, rel=0.01)
    assert kld(top_k=32, tail_samples=32) == pytest.approx(exact, rel=0.02)
    assert 0.5 * exact <= kld(top_k=32, tail_samples=0) <= exact * (1 + 1e-6)
    assert kld(top_k=100_000) == pytest.approx(exact, rel=1e-5)


def test_a_model_against_itself_has_zero_kld_with_tail_samples(tiny_models, text):
    spec = EvalSpec(text, n_ctx=N_CTX, n_chunks=2, top_k=16, tail_samples=16)
    rec = score(tiny_models["llama"], spec, compute_reference(tiny_models["llama"], spec))
    assert abs(rec.kld) < 1e-6 and rec.kld_max < 1e-5


def test_streamed_final_equals_non_streamed(tiny_models, quantized, text):
    spec = EvalSpec(text, n_ctx=N_CTX, n_chunks=4)
    ref = compute_reference(tiny_models["llama"], spec)
    records = list(score_stream(quantized["llama", "Q2_K"], spec, ref))
    assert [r.chunks_done for r in records] == [1, 2, 3, 4] and [r.done for r in records] == [False] * 3 + [True]
    assert all(r.kld_se is not None for r in records[1:])
    final = score(quantized["llama", "Q2_K"], spec, ref)
    strip = lambda r: {k: v for k, v in r.as_dict().items() if k not in ("seconds", "tokens_per_second")}  # noqa
    assert strip(records[-1]) == strip(final)


def test_text_shorter_than_two_contexts_is_refused(tiny_models):
    with pytest.raises(ScoreError, match="at least 256"):
        score(tiny_models["llama"], EvalSpec("a short text", n_ctx=N_CTX))


def test_mismatched_reference_caches_are_refused(tiny_models, text, tmp_path):
    spec = EvalSpec(text, n_ctx=N_CTX, n_chunks=2)
    ref = load_reference(save_reference(compute_reference(tiny_models["llama"], spec), tmp_path / "ref"))
    with pytest.raises(ReferenceMismatch, match="context size"):
        score(tiny_models["llama"], EvalSpec(text, n_ctx=64, n_chunks=2), ref)
    with pytest.raises(ReferenceMismatch, match="another text or another tokenizer"):
        score(tiny_models["llama"], EvalSpec(text[100:], n_ctx=N_CTX, n_chunks=2), ref)
    with pytest.raises(ReferenceMismatch, match="chunk count"):
        score(tiny_models["llama"], EvalSpec(text, n_ctx=N_CTX, n_chunks=3), ref)
    with pytest.raises(ReferenceMismatch, match="another text or another tokenizer"):
        score(tiny_models["gemma4"], spec, ref)  # gemma4's BPE tokenizer splits the text differently
    with pytest.raises(ReferenceMismatch, match="not a reference cache"):
        load_reference(tmp_path)


@pytest.mark.parametrize("arch", ["gemma4", "llama"])
def test_several_sequences_per_decode_score_as_one_at_a_time(tiny_models, quantized, text, arch):
    """Chunks decoded together (one KV stream per sequence) give the per-token values of one chunk per decode."""
    spec = EvalSpec(text, n_ctx=N_CTX, n_chunks=6)
    ref = compute_reference(tiny_models[arch], spec)
    one = score(quantized[arch, "Q4_K_M"], spec, ref, RunnerConfig(n_ctx=N_CTX, n_seq=1))
    four = score(quantized[arch, "Q4_K_M"], spec, ref, RunnerConfig(n_ctx=N_CTX, n_seq=4))
    assert (one.chunks_done, four.chunks_done) == (6, 6)
    # rounding differs with the batch's shape: 1.2e-4 relative measured on gemma4 with ggml's plain CPU weight layout
    # (llama_runner.use_extra_buffers False, as on AMX machines); below 1e-4 with the repacked layout
    assert four.nll == pytest.approx(one.nll, rel=2.5e-4)
    assert four.kld == pytest.approx(one.kld, rel=1e-3, abs=1e-6)
    assert four.same_top == pytest.approx(one.same_top, abs=2 / one.n_scored)


@pytest.mark.parametrize("extra, env, expected", [
    (("AMX", "CPU_REPACK"), "", False),  # ggml's AMX matmul crashed on K-quant models: not used by default
    (("CPU_REPACK",), "", True),
    ((), "", True),
    (("AMX", "CPU_REPACK"), "1", True),  # the switch wins either way
    (("CPU_REPACK",), "0", False),
])
def test_extra_weight_buffers_are_off_where_the_build_has_amx(monkeypatch, extra, env, expected):
    from cerebellum_ray.native import ggml as _ggml
    from cerebellum_ray.evaluate.llama_runner import llama_tool_flags, use_extra_buffers

    monkeypatch.setattr(_ggml, "cpu_extra_buffer_types", lambda: extra)
    monkeypatch.setenv("CEREBELLUM_EXTRA_BUFFERS", env)
    assert use_extra_buffers() is expected
    assert llama_tool_flags() == ([] if expected else ["--no-repack"])


def test_this_build_reports_its_extra_buffer_types():
    from cerebellum_ray.native.ggml import cpu_extra_buffer_types

    names = cpu_extra_buffer_types()
    assert len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names)
    assert "CPU_REPACK" in names  # llama-cpp-python builds ggml with GGML_CPU_REPACK on (its default)
