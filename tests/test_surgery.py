"""Tensor surgery: recast single tensors of a quantized GGUF, everything else byte-identical, checked, atomic."""

import json
import os
import shutil

import llama_cpp
import numpy as np
import pytest
from gguf import GGUFReader

from cerebellum_ray.results import surgery as surgery_mod
from cerebellum_ray.core.atomic import OutputError
from cerebellum_ray.quant.build import build
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.formats.gguf_io import read_header
from cerebellum_ray.formats.imatrix import load_imatrix
from cerebellum_ray.formats.precision_map import MapError, MapSpec, resolve
from cerebellum_ray.quant.quantize import QuantJob, quantize_array
from cerebellum_ray.cli import main
from cerebellum_ray.results.surgery import SurgeryError, surgery

ROUTER = "blk.1.ffn_gate_inp.weight"
ATTN_Q = "blk.0.attn_q.weight"


@pytest.fixture(scope="module")
def quantized(tiny_models, tmp_path_factory):
    """{preset: path}: the tiny gemma4 built with Q4_K_M and Q3_K_M."""
    model = tiny_models["gemma4"]
    d = tmp_path_factory.mktemp("surgery")
    out = {}
    for preset in ("Q4_K_M", "Q3_K_M"):
        out[preset] = d / f"{preset}.gguf"
        build(model, resolve(load_catalog(model), MapSpec(base=preset)), out[preset], n_threads=2)
    return out


def _tensor_bytes(path, name):
    t = load_catalog(path)[name]
    with open(path, "rb") as f:
        f.seek(t.data_offset)
        return f.read(t.n_bytes)


def _logits(path):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    try:
        tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog.")
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)])
    finally:
        llm.close()


def _listing(directory):
    return sorted(os.listdir(directory))


def test_recast_router_and_attn_q_keeps_the_rest_byte_identical(quantized, tmp_path):
    src = quantized["Q4_K_M"]
    sets = [f"{ROUTER}=Q8_0", f"{ATTN_Q}=Q6_K"]
    dry = surgery(src, sets, dry_run=True)
    assert not dry.written and _listing(tmp_path) == []
    out = tmp_path / "recast.gguf"
    report = surgery(src, sets, out, n_threads=2)
    assert report.written and report.check.startswith("ok")
    assert _listing(tmp_path) == ["recast.gguf"]

    # sizes: the dry run predicted the file exactly
    assert out.stat().st_size == report.size_after == dry.size_after
    assert report.size_before == dry.size_before == src.stat().st_size
    assert [c.as_dict() for c in report.changes] == [c.as_dict() for c in dry.changes]
    by_name = {c.name: c for c in report.changes}
    assert (by_name[ROUTER].old_type, by_name[ROUTER].new_type) == ("F32", "Q8_0")
    assert (by_name[ATTN_Q].old_type, by_name[ATTN_Q].new_type) == ("Q4_K", "Q6_K")
    assert report.size_after - report.size_before == report.delta
    align = load_catalog(src).alignment  # padding follows the file's alignment

    def padded(n):
        return -(-n // align) * align

    assert sum(padded(c.new_bytes) - padded(c.old_bytes) for c in report.changes) == report.delta

    # our reader: every key/value's raw bytes in the same order, every tensor in the same order
    a, b = read_header(src), read_header(out)
    assert [e.raw for e in a.kv] == [e.raw for e in b.kv]
    assert (a.version, a.alignment, a.data_offset) == (b.version, b.alignment, b.data_offset)
    assert [(t.name, t.shape) for t in a.tensors] == [(t.name, t.shape) for t in b.tensors]
    first_changed = min(i for i, t in enumerate(a.tensors) if t.name in by_name)
    for i, (ta, tb) in enumerate(zip(a.tensors, b.tensors)):
        if i <= first_changed:
            assert ta.data_offset == tb.data_offset, ta.name  # nothing before the first change moves
        if ta.name not in by_name:
            assert ta.type_id == tb.type_id
            assert _tensor_bytes(src, ta.name) == _tensor_bytes(out, ta.name), ta.name

    # an independent reader agrees: same fields (raw parts), same untouched tensor data
    ra, rb = GGUFReader(src), GGUFReader(out)
    assert list(ra.fields) == list(rb.fields)
    for key, fa in ra.fields.items():
        fb = rb.fields[key]
        assert [bytes(p) for p in fa.parts] == [bytes(p) for p in fb.parts], key
    tb_by_name = {t.name: t for t in rb.tensors}
    for ta in ra.tensors:
        tb = tb_by_name[ta.name]
        if ta.name in by_name:
            assert tb.tensor_type.name == by_name[ta.name].new_type
        else:
            assert ta.tensor_type == tb.tensor_type and np.array_equal(ta.data, tb.data), ta.name

    # the recast tensors are exactly dequantize (ggml) + quantize (ggml) of the old data
    for c in report.changes:
        old = np.frombuffer(_tensor_bytes(src, c.name), dtype=np.uint8)
        want = quantize_array(QuantJob(c.name, c.shape, c.old_type, c.new_type), old, n_threads=1)
        assert _tensor_bytes(out, c.name) == want.tobytes(), c.name

    # it runs in llama.cpp, and the recast changed what the model computes
    logits = _logits(out)
    assert np.isfinite(logits).all() and logits.std() > 0
    assert not np.array_equal(logits, _logits(src))


def test_regex_sets_experts_and_no_ops(quantized, tmp_path):
    src = quantized["Q3_K_M"]
    cat = load_catalog(src)
    exps = "blk.2.ffn_gate_up_exps.weight"
    report = surgery(src, [r"blk\.[23]\.ffn_gate_inp\.weight=Q8_0", f"{exps}=Q5_K", f"{ATTN_Q}={cat[ATTN_Q].type}"],
                     tmp_path / "o.gguf", n_threads=2)
    changed = {c.name: c.new_type for c in report.changes if c.changed}
    assert changed == {"blk.2.ffn_gate_inp.weight": "Q8_0", "blk.3.ffn_gate_inp.weight": "Q8_0", exps: "Q5_K"}
    noop = [c for c in report.changes if not c.changed]
    assert [c.name for c in noop] == [ATTN_Q] and noop[0].delta == 0
    out_cat = load_catalog(tmp_path / "o.gguf")
    assert out_cat[exps].type == "Q5_K" and out_cat["blk.1.ffn_gate_inp.weight"].type == "F32"
    old = np.frombuffer(_tensor_bytes(src, exps), dtype=np.uint8)
    want = quantize_array(QuantJob(exps, cat[exps].shape, cat[exps].type, "Q5_K"), old, n_threads=2)
    assert _tensor_bytes(tmp_path / "o.gguf", exps) == want.tobytes()

    # only no-ops: the output is a byte-identical copy
    report = surgery(src, [f"{ATTN_Q}={cat[ATTN_Q].type}"], tmp_path / "same.gguf")
    assert report.n_changed == 0 and report.delta == 0
    assert (tmp_path / "same.gguf").read_bytes() == src.read_bytes()


def test_imatrix_types_need_and_use_an_imatrix(tiny_imatrix, quantized, tmp_path):
    src = quantized["Q4_K_M"]
    with pytest.raises(SurgeryError, match="importance matrix"):
        surgery(src, [f"{ATTN_Q}=IQ2_XS"], tmp_path / "o.gguf")
    assert _listing(tmp_path) == []
    imatrix = load_imatrix(tiny_imatrix["gemma4"]["gguf"])
    surgery(src, [f"{ATTN_Q}=IQ2_XS"], tmp_path / "o.gguf", imatrix=imatrix, n_threads=2)
    t = load_catalog(src)[ATTN_Q]
    old = np.frombuffer(_tensor_bytes(src, ATTN_Q), dtype=np.uint8)
    want = quantize_array(QuantJob(ATTN_Q, t.shape, t.type, "IQ2_XS"), old, imatrix.vector(ATTN_Q), n_threads=2)
    assert _tensor_bytes(tmp_path / "o.gguf", ATTN_Q) == want.tobytes()


@pytest.mark.parametrize("sets,error,needle", [
    (["blk.99.attn_q.weight=Q8_0"], MapError, "unknown tensor"),
    ([r"blk\.0\.no_such_thing=Q8_0"], MapError, "matches no 2-D/3-D tensor"),
    (["blk.0.ffn_down.weight=Q4_K"], MapError, "Legal types: .*Q5_0"),
    (["blk.0.attn_norm.weight=Q8_0"], MapError, "1-D tensors"),
    ([f"{ATTN_Q}=Q4_Z"], MapError, "unknown ggml type"),
    ([ATTN_Q], MapError, "malformed"),
    ([f"{ATTN_Q}=Q8_0", f"{ATTN_Q}=Q6_K"], MapError, "twice"),
    ([], SurgeryError, "nothing to do"),
])
def test_refusals_leave_no_file(quantized, tmp_path, sets, error, needle):
    src = quantized["Q4_K_M"]
    before = src.read_bytes()
    for dry_run in (True, False):
        with pytest.raises(error, match=needle):
            surgery(src, sets, tmp_path / "o.gguf", dry_run=dry_run)
    assert _listing(tmp_path) == []
    assert src.read_bytes() == before


@pytest.mark.parametrize("where", ["missing-dir", "proc", "a-directory"])
def test_unwritable_outputs_are_refused_without_files(quantized, tmp_path, where):
    out = {
        "missing-dir": tmp_path / "nope" / "o.gguf",
        "proc": "/proc/x.gguf",
        "a-directory": tmp_path,
    }[where]
    with pytest.raises(OutputError, match="cannot write"):
        surgery(quantized["Q4_K_M"], [f"{ROUTER}=Q8_0"], out)
    assert _listing(tmp_path) == []
    assert not os.path.exists("/proc/x.gguf")
    assert not [n for n in os.listdir("/proc") if n.startswith(".x.gguf")]


def test_in_place_replaces_atomically_after_the_check(quantized, tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copyfile(quantized["Q4_K_M"], path)
    os.chmod(path, 0o640)
    before = path.read_bytes()
    inode = path.stat().st_ino
    report = surgery(path, [f"{ROUTER}=Q8_0"], path)
    assert report.written and report.delta < 0
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_size == report.size_after
    assert load_catalog(path)[ROUTER].type == "Q8_0"
    assert _listing(tmp_path) == ["model.gguf"]
    # the input as it was is exactly what the recast was computed from
    old = read_header(quantized["Q4_K_M"])
    assert [e.raw for e in read_header(path).kv] == [e.raw for e in old.kv]
    assert before != path.read_bytes()
    # asking again for what the file now has changes nothing and writes nothing
    again = surgery(path, [f"{ROUTER}=Q8_0"], path)
    assert not again.written and again.n_changed == 0 and path.stat().st_size == report.size_after


def test_failed_check_leaves_input_untouched_and_no_temp_file(quantized, tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    shutil.copyfile(quantized["Q4_K_M"], path)
    before = path.read_bytes()

    def failing_check(p, **kw):
        assert p.exists() and p.name.endswith(".partial")  # the check sees the finished temporary file
        raise SurgeryError("simulated failure")

    monkeypatch.setattr(surgery_mod, "check_runs", failing_check)
    for out in (path, tmp_path / "other.gguf"):
        with pytest.raises(SurgeryError, match="was not written: simulated failure"):
            surgery(path, [f"{ROUTER}=Q8_0"], out)
        assert path.read_bytes() == before
        assert _listing(tmp_path) == ["model.gguf"]


def test_corrupted_result_is_caught_before_anything_is_replaced(quantized, tmp_path, monkeypatch):
    """A recast with NaN scales loads in llama.cpp but computes garbage (NaN logits with some kernels, finite ones
    with others): its dequantized values are checked, and it is refused with nothing replaced."""
    from cerebellum_ray.quant import quantize

    real = quantize.quantize_tensor

    def nan_scales(job, *args, **kw):
        data = real(job, *args, **kw).copy()
        assert job.dst_type == "Q8_0"
        data.reshape(-1, 34)[:, :2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)  # every block's d
        return data

    monkeypatch.setattr(quantize, "quantize_tensor", nan_scales)
    path = tmp_path / "model.gguf"
    shutil.copyfile(quantized["Q4_K_M"], path)
    before = path.read_bytes()
    with pytest.raises(SurgeryError, match=r"attn_q\.weight: recast to Q8_0, it dequantizes to \d+ NaN/inf values"):
        surgery(path, [r"attn_q\.weight=Q8_0"], path)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["model.gguf"]


def _cli(argv):
    return main(argv)


def test_cli_dry_run_people_and_json(quantized, tmp_path, capsys):
    src = quantized["Q4_K_M"]
    sets = ["--set", f"{ROUTER}=Q8_0", "--set", f"{ATTN_Q}=Q6_K", "--set", "blk.2.attn_q.weight=Q4_K"]
    assert _cli(["surgery", str(src), *sets, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "dry run" in text and "F32 -> Q8_0" in text and "Q4_K -> Q6_K" in text and "unchanged" in text
    assert "file size" in text
    assert _cli(["surgery", str(src), *sets, "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dry_run"] and not data["written"] and data["n_changed"] == 2
    assert {c["name"]: c["delta"] for c in data["changes"]}[ROUTER] == 4352 - 16384
    assert data["delta"] == data["size_after"] - data["size_before"]
    out = tmp_path / "o.gguf"
    assert _cli(["surgery", str(src), *sets, "--out", str(out), "--json", "--threads", "2"]) == 0
    data_written = json.loads(capsys.readouterr().out)
    assert data_written["written"] and data_written["size_after"] == data["size_after"] == out.stat().st_size
    assert data_written["check"].startswith("ok")
    assert _cli(["surgery", str(src), *sets]) == 2
    assert "--out OUT.gguf is required" in capsys.readouterr().err


def test_llama_cpp_check_refuses_a_model_that_computes_nan(quantized, tmp_path):
    """The run check itself: NaN in the final norm's weights reaches every logit, whatever the kernels."""
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.results.surgery import check_runs

    path = tmp_path / "model.gguf"
    shutil.copyfile(quantized["Q4_K_M"], path)
    assert check_runs(path).startswith("ok:")
    norm = next(t for t in load_catalog(path).tensors if t.name == "output_norm.weight")
    assert norm.type == "F32"
    with open(path, "r+b") as f:
        f.seek(norm.data_offset)
        f.write(np.full(norm.n_elements, np.nan, np.float32).tobytes())
    with pytest.raises(SurgeryError, match="NaN/inf logits|same logit for every token"):
        check_runs(path)


@pytest.mark.parametrize("new_type", ["F32", "F16"])
def test_recast_to_a_float_type_passes_the_finite_check(quantized, tmp_path, new_type):
    """Float targets go through the NaN/inf check too (F32 has no ggml dequantizer: read as floats)."""
    out = tmp_path / "out.gguf"
    report = surgery(quantized["Q4_K_M"], [rf"blk\.0\.attn_q\.weight={new_type}"], out)
    assert report.written and report.check.startswith("ok:")
    from cerebellum_ray.formats.catalog import load_catalog

    assert next(t for t in load_catalog(out).tensors if t.name == "blk.0.attn_q.weight").type == new_type
