"""Shared fixtures: the tiny embedded models (made once per session) and llama.cpp's own quantizer as oracle."""

import llama_cpp  # noqa: F401  (must be imported before numpy: a CUDA build of llama.cpp crashes otherwise)

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from cerebellum_ray.evaluate.llama_runner import align_high_level_llama  # noqa: E402

align_high_level_llama()  # tests compare with llama_cpp.Llama: same weight layout as our runner (no AMX crash)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_models(tiny_dir):
    """{arch: path} for the three tiny F16 models."""
    from cerebellum_ray.formats.tiny import TINY_ARCHS, make_tiny

    return {arch: make_tiny(arch, tiny_dir / f"{arch}.gguf", seed=0) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def tiny_imatrix(tiny_models, tiny_dir):
    """{arch: {"gguf": path, "dat": path}}: matching importance matrices in both formats."""
    from cerebellum_ray.formats.tiny import make_tiny_imatrix

    return {
        arch: {fmt: make_tiny_imatrix(path, tiny_dir / f"{arch}.{fmt}.imatrix", fmt=fmt, seed=0)
               for fmt in ("gguf", "dat")}
        for arch, path in tiny_models.items()
    }


@pytest.fixture
def cache(tmp_path):
    from cerebellum_ray.quant.tensor_cache import TensorCache

    c = TensorCache(tmp_path / "cache", size_limit=1 << 30)
    yield c
    c.close()


@pytest.fixture
def demo_store(tiny_models, tmp_path):
    """(store dir, source path): a study "demo" of four complete rows (llama.cpp presets of a copy of the tiny gemma4
    model, with made-up KLDs), written through the store module; fast, no Ray."""
    import json
    import shutil

    from cerebellum_ray.core import store
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.precision_map import MapSpec, resolve, tensor_bytes

    source = tmp_path / "source.gguf"
    shutil.copyfile(tiny_models["gemma4"], source)
    cat = load_catalog(source)
    store_dir = tmp_path / "store"
    for i, (preset, kld) in enumerate([("Q2_K", 0.3), ("Q3_K_M", 0.1), ("Q4_K_M", 0.05), ("Q8_0", 0.01)]):
        pmap = resolve(cat, MapSpec(base=preset))
        size = tensor_bytes(cat, pmap)
        store.append(store_dir, {
            "study": "demo", "trial_id": f"t{i}", "strategy": "optuna", "status": "complete", "map": dict(pmap.types),
            "map_hash": pmap.digest, "size_bytes": size, "bpw": 8 * size / cat.n_elements, "kld": kld,
            "kld_se": 0.001, "ppl": 10 + kld, "params": json.dumps({"base": preset}), "eval_hash": "e"})
    return str(store_dir), str(source)


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else "
                 "m['role'] %}<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                 "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_model(tiny_models, tiny_dir):
    """A copy of the tiny llama model with a Gemma-style tokenizer.chat_template key."""
    from pathlib import Path

    from gguf import GGUFValueType

    from cerebellum_ray.core import atomic
    from cerebellum_ray.formats import gguf_io
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.ggml_types import TYPES

    cat = load_catalog(tiny_models["llama"])
    kv = [e.raw for e in cat.kv_entries] + [gguf_io.encode_kv("tokenizer.chat_template", CHAT_TEMPLATE,
                                                               GGUFValueType.STRING)]
    slots = [gguf_io.TensorSlot(t.name, t.shape, TYPES[t.type].id, t.n_bytes) for t in cat.tensors]
    layout = gguf_io.GGUFLayout.build(kv, slots, cat.alignment)
    data = Path(tiny_models["llama"]).read_bytes()
    out = tiny_dir / "chat-llama.gguf"
    with atomic.atomic_output(out) as f:
        f.write(layout.header)
        for t, slot in zip(cat.tensors, slots):
            f.write(data[t.data_offset:t.data_offset + t.n_bytes])
            gguf_io.write_padding(f, slot.n_bytes, layout.alignment)
    return out
