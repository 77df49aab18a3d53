"""Split GGUFs (llama.cpp's gguf-split layout): read as sources everywhere, written with --split-max-size.

The oracle tests against llama-gguf-split itself are in test_llama_tools.py (marked); here: our split output loads
in llama.cpp and scores exactly as the single file does, a split source builds byte for byte what the single file
builds, every bad or missing part is named, and a split output appears whole or not at all.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cerebellum_ray.formats import gguf_io
from cerebellum_ray.quant.build import build, output_paths
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.evaluate.corpus import default_text
from cerebellum_ray.formats.precision_map import MapSpec, resolve
from cerebellum_ray.evaluate.score import EvalSpec, score


def _q4(source):
    return resolve(load_catalog(source), MapSpec(base="Q4_K_M"))


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory):
    """(single Q4_K_M file, its three-part split, the source): built once for the module."""
    d = tmp_path_factory.mktemp("split")
    source = tiny_models["gemma4"]
    single = d / "q.gguf"
    build(source, _q4(source), single)
    report = build(source, _q4(source), d / "qs.gguf", split_max_bytes=3 * 10**6)
    return single, [Path(p) for p in report.parts], source


def _tensor_bytes(path) -> dict[str, bytes]:
    cat = load_catalog(path)
    out = {}
    for t in cat.tensors:
        with open(cat.parts[t.file], "rb") as f:
            f.seek(t.data_offset)
            out[t.name] = f.read(t.n_bytes)
    return out


def test_parse_split_size_reads_gguf_splits_spelling_and_ours():
    assert gguf_io.parse_split_size("10G") == 10 * 10**9
    assert gguf_io.parse_split_size("500M") == 500 * 10**6
    assert gguf_io.parse_split_size("2GiB") == 2 * 2**30
    assert gguf_io.parse_split_size("123456") == 123456
    for bad in ("0G", "ten G", "-1G", "5X"):
        with pytest.raises(Exception, match="--split-max-size"):
            gguf_io.parse_split_size(bad)


def test_split_ranges_cut_where_gguf_split_cuts():
    def slots(*sizes):
        return [gguf_io.TensorSlot(f"t{i}", (n,), 0, n) for i, n in enumerate(sizes)]

    # padded to 32: 40 -> 64; parts hold at most 128 bytes of padded data
    assert gguf_io.split_ranges(slots(40, 40, 40, 40), 128) == (range(0, 2), range(2, 4))
    assert gguf_io.split_ranges(slots(64, 64), 128) == (range(0, 2),)  # exactly full: no cut
    assert gguf_io.split_ranges(slots(500, 10, 10), 128) == (range(0, 1), range(1, 3))  # too large: a part alone
    assert gguf_io.split_ranges(slots(10, 500, 10), 128) == (range(0, 1), range(1, 2), range(2, 3))


def test_split_output_has_gguf_splits_names_keys_and_the_same_tensors(built):
    single, parts, _ = built
    assert [p.name for p in parts] == [f"qs-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    headers = [gguf_io.read_header(p) for p in parts]
    for i, h in enumerate(headers):
        kv = {e.key: e for e in h.kv}
        assert (kv["split.no"].value, kv["split.count"].value, kv["split.tensors.count"].value) == (i, 3, 134)
        assert [kv[k].vtype.name for k in gguf_io.SPLIT_KEYS] == ["UINT16", "UINT16", "INT32"]
        if i:  # the other parts carry only the split keys
            assert set(kv) == set(gguf_io.SPLIT_KEYS)
    one = {e.key: e.value for e in gguf_io.read_header(single).kv}
    first = {e.key: e.value for e in headers[0].kv if e.key not in gguf_io.SPLIT_KEYS}
    assert first == one
    cat = load_catalog(parts[0])
    for i in range(3):  # each part's data within the limit (counted as gguf-split counts: padded to 32) ...
        held = [t for t in cat.tensors if t.file == i]
        assert sum(-(-t.n_bytes // 32) * 32 for t in held) <= 3 * 10**6
    nxt = next(t for t in cat.tensors if t.file == 1)  # ... and full: the next tensor would not have fitted
    assert sum(-(-t.n_bytes // 32) * 32 for t in cat.tensors if t.file == 0) + nxt.n_bytes > 3 * 10**6
    assert _tensor_bytes(parts[0]) == _tensor_bytes(single)  # read back as one model: same names, same bytes


def test_split_output_scores_exactly_as_the_single_file(built):
    single, parts, _ = built
    spec = EvalSpec(default_text(), n_ctx=64, n_chunks=3)
    assert score(parts[0], spec).ppl == score(single, spec).ppl


def test_a_split_source_builds_what_the_single_file_builds(built, tmp_path):
    single, parts, _ = built
    pmap = resolve(load_catalog(single), MapSpec(rules=()))  # the model's own types, then two recast
    types = dict(pmap.types)
    types["blk.0.attn_q.weight"] = "Q8_0"
    types["token_embd.weight"] = "Q8_0"
    pmap = type(pmap)(types=types, base=pmap.base)
    a, b = tmp_path / "from-single.gguf", tmp_path / "from-split.gguf"
    build(single, pmap, a)
    build(parts[0], pmap, b)
    assert a.read_bytes() == b.read_bytes()  # split keys are no part of the model: the provenance digest agrees


def test_a_split_models_digest_covers_every_part(built, tmp_path):
    """A reference given by its first part is known by all its bytes: a changed last part is another reference."""
    _, parts, _ = built
    copies = []
    for p in parts:
        shutil.copy(p, tmp_path / p.name)
        copies.append(tmp_path / p.name)
    before = gguf_io.model_digest(copies[0], tmp_path / "memo")
    assert before == gguf_io.model_digest(copies[0], tmp_path / "memo")  # remembered, the same
    data = bytearray(copies[-1].read_bytes())
    data[-1] ^= 0xFF  # last byte of the last tensor's data
    copies[-1].write_bytes(bytes(data))
    assert gguf_io.model_digest(copies[0], tmp_path / "memo") != before


def test_a_split_source_is_given_by_its_first_part(built):
    _, parts, _ = built
    with pytest.raises(gguf_io.GGUFError, match="is part 2 of a split model; give its first part"):
        load_catalog(parts[1])


def test_a_missing_part_is_named(built, tmp_path):
    _, parts, _ = built
    for p in parts[:2]:
        shutil.copy(p, tmp_path / p.name)
    with pytest.raises(gguf_io.GGUFError, match=r"part 3 of 3, .*qs-00003-of-00003.gguf, is missing"):
        load_catalog(tmp_path / parts[0].name)


def test_a_part_from_another_split_is_named(built, tiny_models, tmp_path):
    _, parts, source = built
    other = build(source, resolve(load_catalog(source), MapSpec(base="Q8_0")), tmp_path / "other.gguf",
                  split_max_bytes=3 * 10**6)
    for p in parts:
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(other.parts[2], tmp_path / parts[1].name)  # part 3 of another model where part 2 belongs
    with pytest.raises(gguf_io.GGUFError, match=r"qs-00002-of-00003.gguf: says it is part 3, expected 2 of 3"):
        load_catalog(tmp_path / parts[0].name)
    shutil.copy(other.parts[1], tmp_path / parts[1].name)  # right index, another model's tensors
    with pytest.raises(gguf_io.GGUFError, match="appears in two parts|should hold"):
        load_catalog(tmp_path / parts[0].name)


def test_a_renamed_first_part_is_refused_with_the_naming_rule(built, tmp_path):
    _, parts, _ = built
    renamed = tmp_path / "model.gguf"
    shutil.copy(parts[0], renamed)
    with pytest.raises(gguf_io.GGUFError, match="must be named PREFIX-00001-of-00003.gguf"):
        load_catalog(renamed)


def test_a_failed_split_build_leaves_no_part(tiny_models, tmp_path, monkeypatch):
    import cerebellum_ray.quant.build as build_module

    source = tiny_models["gemma4"]
    calls = []
    real = build_module._write_tensor

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 100:  # in the second part
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "_write_tensor", failing)
    with pytest.raises(OSError, match="No space left"):
        build(source, _q4(source), tmp_path / "qs.gguf", split_max_bytes=3 * 10**6)
    assert sorted(os.listdir(tmp_path)) == []


def test_output_paths_are_known_before_the_build(tiny_models, tmp_path):
    source = tiny_models["gemma4"]
    predicted = output_paths(source, _q4(source), tmp_path / "x.gguf", 3 * 10**6)
    report = build(source, _q4(source), tmp_path / "x.gguf", split_max_bytes=3 * 10**6)
    assert [str(p) for p in predicted] == list(report.parts)
    assert report.file_size == sum(os.path.getsize(p) for p in report.parts)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cerebellum_ray.cli", *map(str, args)], capture_output=True,
                          text=True)


def test_cli_build_and_export_write_split_outputs(demo_store, tmp_path):
    store_dir, source = demo_store
    r = _cli("build", "--source", source, "--base", "Q4_K_M", "--out", tmp_path / "b.gguf", "--split-max-size", "3M",
             "--no-cache", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [Path(p).name for p in out["parts"]] == [f"b-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    r = _cli("inspect", out["out"], "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["tensors"]) == 134, r.stderr

    r = _cli("export", "--store", store_dir, "--trial", "t2", "--source", source, "--out", tmp_path / "final.gguf",
             "--split-max-size", "3M", "--json")
    assert r.returncode == 0, r.stderr
    ex = json.loads(r.stdout)
    assert len(ex["parts"]) == 3 and all(Path(p).exists() for p in ex["parts"])
    card = json.loads(Path(ex["card"]).read_text())
    assert card["parts"] == [Path(p).name for p in ex["parts"]] and card["file"] == Path(ex["parts"][0]).name
    assert not (tmp_path / "final.gguf").exists()

    r = _cli("build", "--source", source, "--base", "Q4_K_M", "--out", tmp_path / "c.gguf", "--split-max-size",
             "3 parsecs")
    assert r.returncode != 0 and "--split-max-size: '3 parsecs' is not a size" in r.stderr


def test_page_aligned_scratch_builds_load_score_alike_and_report_the_exported_size(built, tmp_path):
    single, _, source = built
    report = build(source, _q4(source), tmp_path / "paged.gguf", page_aligned=True, split_max_bytes=3 * 10**6)
    cat = load_catalog(report.parts[0])
    assert cat.alignment == 4096 and all(t.data_offset % 4096 == 0 for t in cat.tensors)
    assert {e.key: e.value for e in gguf_io.read_header(report.parts[1]).kv}["general.alignment"] == 4096
    assert report.export_size == single.stat().st_size < report.file_size
    spec = EvalSpec(default_text(), n_ctx=64, n_chunks=2)
    assert score(report.parts[0], spec).ppl == score(single, spec).ppl
