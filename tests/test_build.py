"""The trial builder: sizes, overrides llama-quantize cannot do, provenance, cache, concurrency, bad inputs."""

import llama_cpp

import multiprocessing
import shutil

import numpy as np
import pytest
from gguf import GGUFReader

from cerebellum_ray.quant.build import BuildError, build, predicted_file_size
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.formats.gguf_io import GGUFError
from cerebellum_ray.formats.imatrix import Imatrix, load_imatrix
from cerebellum_ray.formats.precision_map import MapError, MapSpec, Rule, resolve
from cerebellum_ray.core.atomic import OutputError
from cerebellum_ray.quant.tensor_cache import ENTRY_HEADER, TensorCache


def _map(model, base="Q4_K_M", rules=(), fallback=False, has_imatrix=False):
    return resolve(load_catalog(model), MapSpec(rules=tuple(Rule(p, t) for p, t in rules), base=base,
                                                fallback=fallback), has_imatrix=has_imatrix)


def _eval_logits(path):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog.")
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)])
    llm.close()
    return logits


def test_predicted_size_equals_built_file(tiny_models, tmp_path):
    for arch, model in tiny_models.items():
        pmap = _map(model, "Q3_K_M", [("attn_q", "Q5_K")])
        out = tmp_path / f"{arch}.gguf"
        report = build(model, pmap, out, n_threads=2)
        assert predicted_file_size(model, pmap) == out.stat().st_size == report.file_size
        assert report.tensor_bytes == sum(t.n_bytes for t in load_catalog(out).tensors)


def test_router_override_is_honoured_and_runs(tiny_models, tmp_path):
    model = tiny_models["gemma4"]
    router = "blk.1.ffn_gate_inp.weight"
    assert load_catalog(model)[router].type == "F32"
    pmap = _map(model, "Q4_K_M", [(router, "Q8_0")])
    out = tmp_path / "router.gguf"
    build(model, pmap, out, n_threads=2)
    cat = load_catalog(out)
    assert cat[router].type == "Q8_0"
    assert cat["blk.0.ffn_gate_inp.weight"].type == "F32"  # other routers untouched, as llama.cpp leaves them
    logits = _eval_logits(out)
    assert np.isfinite(logits).all() and logits.std() > 0
    # the router really changed what the model computes
    same_without = tmp_path / "plain.gguf"
    build(model, _map(model, "Q4_K_M"), same_without, n_threads=2)
    assert not np.array_equal(logits, _eval_logits(same_without))


def test_provenance_and_metadata_copied(tiny_models, tiny_imatrix, tmp_path):
    model = tiny_models["llama"]
    imatrix = load_imatrix(tiny_imatrix["llama"]["gguf"])
    pmap = _map(model, "Q4_K_M")
    out = tmp_path / "p.gguf"
    report = build(model, pmap, out, imatrix=imatrix, n_threads=2)
    src, dst = GGUFReader(model), GGUFReader(out)
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name in ("general.file_type", "general.quantization_version"):
            continue
        assert dst.fields[name].contents() == field.contents(), name
    assert dst.fields["cerebellum.map_digest"].contents() == pmap.digest
    assert dst.fields["cerebellum.imatrix_digest"].contents() == imatrix.digest
    assert dst.fields["cerebellum.source_digest"].contents() == report.provenance.source_digest
    assert dst.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_cache_rebuild_quantizes_only_changed_tensors(tiny_models, tmp_path, cache):
    model = tiny_models["gemma4"]
    first = build(model, _map(model, "Q4_K_M"), tmp_path / "a.gguf", cache=cache, n_threads=2)
    assert first.count("quantized") > 5 and first.count("cached") == 0
    changed = [(f"blk.{i}.attn_q.weight", "Q8_0") for i in range(5)]
    second_map = _map(model, "Q4_K_M", changed)
    second = build(model, second_map, tmp_path / "b.gguf", cache=cache, n_threads=2)
    assert second.count("quantized") == 5
    assert second.count("cached") == first.count("quantized") - 5
    # the cached build is byte-identical to an uncached one
    build(model, second_map, tmp_path / "c.gguf", n_threads=2)
    assert (tmp_path / "b.gguf").read_bytes() == (tmp_path / "c.gguf").read_bytes()


def test_cache_is_size_bounded_lru(tmp_path):
    n = 100_000
    cache = TensorCache(tmp_path / "lru", size_limit=350_000)
    try:
        for key in "abc":
            cache.put(key, np.full(n, ord(key), np.uint8))
        with cache.get("a", n) as hit:  # touch a: now b is the least recently used
            assert hit.file.read(1) == b"a"
        cache.put("d", np.full(n, ord("d"), np.uint8))
        assert cache.volume == 3 * (n + ENTRY_HEADER)
        assert cache.get("b", n) is None
        assert [cache.get(k, n) is not None for k in "acd"] == [True, True, True]
        with cache.get("d", n) as hit:
            assert hit.file.read() == b"d" * n
    finally:
        cache.close()


def test_builds_with_a_small_cache_stay_within_its_bound(tiny_models, tmp_path):
    model = tiny_models["llama"]
    small = TensorCache(tmp_path / "small", size_limit=300_000)
    try:
        build(model, _map(model, "Q8_0"), tmp_path / "a.gguf", cache=small, n_threads=2)
        assert 0 < len(small) and small.volume <= 300_000
    finally:
        small.close()


def _build_in_process(args):
    model, cache_dir, out = args
    cache = TensorCache(cache_dir, size_limit=1 << 30)
    try:
        report = build(model, _map(model, "Q4_K_M"), out, cache=cache, n_threads=1)
        return report.count("quantized"), report.count("cached")
    finally:
        cache.close()


def test_concurrent_builders_share_one_cache(tiny_models, tmp_path):
    model = tiny_models["gemma4"]
    cache_dir = tmp_path / "shared"
    outs = [tmp_path / f"out{i}.gguf" for i in range(4)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_build_in_process, [(model, cache_dir, o) for o in outs])
    contents = {o.read_bytes() for o in outs}
    assert len(contents) == 1  # no torn entry ever reached an output
    reference = tmp_path / "ref.gguf"
    build(model, _map(model, "Q4_K_M"), reference, n_threads=2)
    assert contents == {reference.read_bytes()}
    n_quantizable = results[0][0] + results[0][1]
    cache = TensorCache(cache_dir)
    try:
        names = [path.name for _, _, path in cache.entries()]
        assert len(names) == len(set(names)) == n_quantizable  # one entry per key, none duplicated
        assert not [p for p in cache_dir.rglob("*") if p.name.endswith(".partial")]  # no leftover partial writes
    finally:
        cache.close()


# ---- bad inputs: a clear error, and no output file ---------------------------------------------------------------


def _no_output(tmp_path, out):
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_truncated_source_is_refused(tiny_models, tmp_path):
    src = tmp_path / "trunc.gguf"
    data = tiny_models["llama"].read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match="truncated"):
        build(src, _map(tiny_models["llama"], "Q4_K_M"), tmp_path / "out.gguf")
    _no_output(tmp_path, tmp_path / "out.gguf")


def test_wrong_magic_is_refused(tiny_models, tmp_path):
    src = tmp_path / "bad.gguf"
    src.write_bytes(b"GGML" + tiny_models["llama"].read_bytes()[4:])
    with pytest.raises(GGUFError, match="not a GGUF file"):
        load_catalog(src)


def test_unknown_tensor_is_refused(tiny_models):
    with pytest.raises(MapError, match="unknown tensor"):
        _map(tiny_models["llama"], "Q4_K_M", [("blk.99.attn_q.weight", "Q4_K")])


def test_regex_matching_nothing_is_refused(tiny_models):
    with pytest.raises(MapError, match="matches no"):
        _map(tiny_models["llama"], "Q4_K_M", [(r"attn_qq", "Q4_K")])


def test_illegal_type_for_row_length_names_tensor_rule_and_alternatives(tiny_models):
    cat = load_catalog(tiny_models["gemma4"])
    narrow = next(t for t in cat.tensors if t.quantizable and t.n_per_row % 256 != 0)
    with pytest.raises(MapError) as err:
        _map(tiny_models["gemma4"], None, [(narrow.name, "Q4_K")])
    msg = str(err.value)
    assert narrow.name in msg and "Q4_K" in msg and str(narrow.n_per_row) in msg and "Q5_0" in msg
    pmap = _map(tiny_models["gemma4"], None, [(narrow.name, "Q4_K")], fallback=True)
    assert pmap.types[narrow.name] == "Q5_0"
    assert [f.tensor for f in pmap.fallbacks] == [narrow.name]


def test_imatrix_from_another_model_is_refused(tiny_models, tiny_imatrix, tmp_path):
    other = load_imatrix(tiny_imatrix["mixtral"]["gguf"])
    out = tmp_path / "out.gguf"
    with pytest.raises(BuildError, match="another model"):
        build(tiny_models["gemma4"], _map(tiny_models["gemma4"], "Q4_K_M"), out, imatrix=other)
    _no_output(tmp_path, out)


def test_type_needing_imatrix_is_refused_without_one(tiny_models, tmp_path):
    out = tmp_path / "out.gguf"
    with pytest.raises(BuildError, match="importance matrix"):
        build(tiny_models["llama"], _map(tiny_models["llama"], None, [("attn_q", "IQ2_XXS")]), out)
    _no_output(tmp_path, out)


@pytest.mark.parametrize("where", ["missing-dir/out.gguf", "is-a-dir", "/proc/cerebellum-out.gguf"])
def test_unwritable_output_is_refused(tiny_models, tmp_path, where):
    (tmp_path / "is-a-dir").mkdir()
    out = tmp_path / where
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputError, match="cannot write"):
        build(tiny_models["llama"], _map(tiny_models["llama"], "Q4_K_M"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list((tmp_path / "is-a-dir").iterdir()) == []


def test_failure_mid_build_leaves_no_file(tiny_models, tmp_path, monkeypatch):
    import cerebellum_ray.quant.build as b

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(b, "quantize_tensor", boom)
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        build(tiny_models["llama"], _map(tiny_models["llama"], "Q4_K_M"), out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_a_changed_imatrix_misses_the_cache(tiny_models, tiny_imatrix, tmp_path):
    """The entry key holds the digest of each tensor's importance vector: another imatrix quantizes again."""
    model = tiny_models["llama"]
    cache = TensorCache(tmp_path / "c", size_limit=1 << 30)
    pmap = _map(model, "Q4_K_M", has_imatrix=True)
    first = load_imatrix(tiny_imatrix["llama"]["gguf"])
    build(model, pmap, tmp_path / "a.gguf", imatrix=first, cache=cache, n_threads=2)
    again = build(model, pmap, tmp_path / "b.gguf", imatrix=first, cache=cache, n_threads=2)
    assert again.count("quantized") == 0 and again.count("cached") > 0
    scaled = Imatrix.build({k: np.asarray(v) * 3.0 + 1.0 for k, v in first.entries.items()}, n_mat=first.n_mat)
    other = build(model, pmap, tmp_path / "c.gguf", imatrix=scaled, cache=cache, n_threads=2)
    with_entries = {a.name for a in other.actions if a.action != "copied" and first.vector(a.name) is not None}
    assert with_entries and {a.name for a in other.actions if a.action == "quantized"} >= with_entries
    build(model, pmap, tmp_path / "d.gguf", imatrix=scaled, n_threads=2)  # no cache
    assert (tmp_path / "c.gguf").read_bytes() == (tmp_path / "d.gguf").read_bytes()


def test_a_changed_source_tensor_misses_the_cache(tiny_models, tmp_path):
    """Rewrite one tensor's bytes of a copy of the source: that tensor alone is quantized again."""
    src = tmp_path / "m.gguf"
    shutil.copyfile(tiny_models["llama"], src)
    cache = TensorCache(tmp_path / "c", size_limit=1 << 30)
    pmap = _map(src, "Q4_K_M")
    build(src, pmap, tmp_path / "a.gguf", cache=cache, n_threads=2)
    cat = load_catalog(src)
    victim = next(t for t in cat.tensors if t.name.endswith("attn_q.weight"))
    with open(src, "r+b") as f:
        f.seek(victim.data_offset)
        data = bytearray(f.read(victim.n_bytes))
        data[:64] = bytes(reversed(data[:64]))
        f.seek(victim.data_offset)
        f.write(data)
    report = build(src, pmap, tmp_path / "b.gguf", cache=cache, n_threads=2)
    assert [a.name for a in report.actions if a.action == "quantized"] == [victim.name]
    build(src, pmap, tmp_path / "c.gguf", n_threads=2)
    assert (tmp_path / "b.gguf").read_bytes() == (tmp_path / "c.gguf").read_bytes()
