"""The model card's pieces from metadata alone (fast): front matter, license and base model from general.* keys,
ggml type names, ik_llama.cpp --custom-q folding, the Modelfile's chat family (the whole card: test_export.py)."""

import re

import yaml

from cerebellum_ray.results.card import (CardFacts, CardOptions, base_model_of, custom_q, front_matter,
                                         ggml_type_name, license_of, modelfile)


def _facts(metadata, **kw) -> CardFacts:
    base = dict(file="m.gguf", parts=("m.gguf",), size_bytes=5_000_000, bpw=4.5, n_weights=10**7, arch="gemma3",
                metadata=metadata, row={"study": "s", "trial_id": "t"}, groups=(), base_quant="Q4_K_M",
                recipe_command="", custom_q="", surgery=(), inputs={}, imatrix=None, protocol=None)
    return CardFacts(**{**base, **kw})


def test_license_and_base_model_come_from_the_general_keys():
    assert license_of({"general.license": "gemma"}) == {"license": "gemma"}
    assert license_of({"general.license": "Apache-2.0"}) == {"license": "apache-2.0"}
    assert license_of({"general.license": "My License v1", "general.license.link": "https://x/y"}) == {
        "license": "other", "license_name": "My License v1", "license_link": "https://x/y"}
    assert license_of({}) == {}
    assert base_model_of({"general.source.repo_url": "https://huggingface.co/google/gemma-3-270m"}) == \
        "google/gemma-3-270m"
    assert base_model_of({"general.repo_url": "https://huggingface.co/org/m/tree/main"}) == "org/m"
    assert base_model_of({"general.url": "https://example.com/x"}) is None
    assert base_model_of({}, "a/b") == "a/b"


def test_front_matter_is_yaml_the_hub_reads():
    facts = _facts({"general.license": "gemma", "general.tags": ["gemma3", "text-generation"],
                    "general.source.repo_url": "https://huggingface.co/google/gemma-3-270m"},
                   imatrix={"name": "x.imatrix", "datasets": [], "chunks": 4},
                   options=CardOptions(quantized_by="Jane Doe"))
    text = front_matter(facts)
    data = yaml.safe_load(text.strip().strip("-"))
    assert data["base_model"] == "google/gemma-3-270m" and data["base_model_relation"] == "quantized"
    assert data["license"] == "gemma" and data["quantized_by"] == "Jane Doe"
    assert data["tags"][0] == "gguf" and "imatrix" in data["tags"] and data["tags"].count("gemma3") == 1
    unknown = front_matter(_facts({}))
    assert "base_model:" not in unknown.replace("# base_model", "") and "--base-model" in unknown


def test_ggml_type_names():
    assert [ggml_type_name(t) for t in ("Q4_K", "Q8_0", "IQ4_XS", "BF16", "F32", "Q2_K")] == [
        "q4_K", "q8_0", "iq4_xs", "bf16", "f32", "q2_K"]


def test_custom_q_folds_layers_and_keeps_first_match_semantics():
    lines = ("^token_embd\\.weight$=q6_k\n^blk\\.0\\.attn_q\\.weight$=q5_k\n^blk\\.1\\.attn_q\\.weight$=q2_k\n"
             "^blk\\.2\\.attn_q\\.weight$=q5_k\n^blk\\.10\\.attn_q\\.weight$=q5_k\n")
    text = custom_q(lines)
    assert "," in text and " " not in text
    rules = [r.split("=") for r in text.split(",")]
    want = {"token_embd.weight": "q6_K", "blk.0.attn_q.weight": "q5_K", "blk.1.attn_q.weight": "q2_K",
            "blk.2.attn_q.weight": "q5_K", "blk.10.attn_q.weight": "q5_K"}
    for name, ty in want.items():
        assert next(t for p, t in rules if re.search(p, name)) == ty
    assert not any(re.search(p, "blk.100.attn_q.weight") for p, _ in rules)
    assert len(rules) == 3


def test_modelfile_names_the_file_and_the_gemma_turns():
    gemma3 = modelfile(_facts({"tokenizer.chat_template": "{{ bos_token }}<start_of_turn>user ...",
                               "general.license": "gemma"}))
    assert "FROM ./m.gguf" in gemma3 and 'PARAMETER stop "<end_of_turn>"' in gemma3 and "TEMPLATE" in gemma3
    assert 'LICENSE """gemma"""' in gemma3
    gemma4 = modelfile(_facts({"tokenizer.chat_template": "... <|turn>user ..."}))
    assert 'PARAMETER stop "<turn|>"' in gemma4
    other = modelfile(_facts({"tokenizer.chat_template": "<|im_start|>"}))
    assert "TEMPLATE" not in other and "PARAMETER num_ctx 4096" in other
