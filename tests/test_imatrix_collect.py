"""Computing importance matrices through llama.cpp's evaluation callback (imatrix_collect): the ggml ABI mirror, the
collector's arithmetic against a literal transcription of llama-imatrix's loops, and whole runs on the tiny models.
The comparison with the llama-imatrix binary itself is in test_llama_tools.py (marked llama_tools)."""

import llama_cpp  # noqa: F401, I001  (first, before numpy: a CUDA build of llama.cpp crashes otherwise)

import ctypes
import json
import re

import numpy as np
import pytest
from gguf import GGUFReader

from cerebellum_ray.native import ggml as _ggml
from cerebellum_ray.core.atomic import OutputError
from cerebellum_ray.cli import main
from cerebellum_ray.formats.imatrix import load_imatrix
from cerebellum_ray.evaluate.imatrix_collect import (
    CollectSettings, ImatrixCollectError, _accumulate, _Collector, collect_stats, compute_imatrix,
    default_calibration_text, filter_tensor_name, read_text_file,
)
from cerebellum_ray.evaluate.llama_runner import LlamaError, LlamaRunner, RunnerConfig

SMALL = CollectSettings(n_ctx=64, n_chunks=4, n_threads=2)  # 4 chunks of 64 tokens, all in one decode


# ---- the ggml ABI ------------------------------------------------------------------------------------------------


def test_ggml_tensor_mirror_has_ggmls_layout():
    assert ctypes.sizeof(_ggml.GgmlTensor) == 336
    assert {f: getattr(_ggml.GgmlTensor, f).offset for f in _ggml.GGML_TENSOR_OFFSETS} == _ggml.GGML_TENSOR_OFFSETS
    assert (_ggml.GgmlTensor.src.offset, _ggml.GgmlTensor.data.offset, _ggml.GgmlTensor.name.offset) == (152, 248, 256)
    _ggml.check_tensor_layout()


def test_op_enum_values_are_checked_against_ggml_op_name(monkeypatch):
    _ggml.check_op_enums()  # the installed ggml agrees
    monkeypatch.setattr(_ggml, "GGML_OP_MUL_MAT", 28)  # as if the enum had moved
    with pytest.raises(_ggml.GgmlAbiError, match=r"ggml_op_name\(28\) is b'L2_NORM', expected b'MUL_MAT'"):
        _ggml.check_op_enums.__wrapped__()


# ---- the arithmetic, on hand-made tensors ------------------------------------------------------------------------


def test_accumulate_is_the_sequential_float32_sum():
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((300, 40)) * rng.uniform(0.01, 100, size=(300, 1))).astype(np.float32)
    acc = rng.uniform(0, 1e4, size=40).astype(np.float32)
    expected = acc.copy()
    for r in rows:
        expected = (expected + r * r).astype(np.float32)
    got = acc.copy()
    _accumulate(got, rows)
    assert got.tobytes() == expected.tobytes()
    # summing the squares first and adding them to the running value afterwards is not the same computation
    assert (acc + np.sum(rows * rows, axis=0, dtype=np.float32)).tobytes() != expected.tobytes()


def test_filter_tensor_name():
    assert filter_tensor_name("CUDA0#blk.0.attn_k.weight#0") == "blk.0.attn_k.weight"
    assert filter_tensor_name("CPU#blk.1.ffn_up.weight") == "blk.1.ffn_up.weight"
    assert filter_tensor_name("blk.2.attn_q.weight") == "blk.2.attn_q.weight"
    assert filter_tensor_name("output.weight") == "output.weight"


class _Graph:
    """Hand-made ggml tensors whose data are numpy arrays (tensor_array is replaced by a strided view of them)."""

    def __init__(self, monkeypatch):
        self.arrays: dict[int, np.ndarray] = {}
        self.keep: list = []
        monkeypatch.setattr(_ggml, "tensor_array", lambda t, dtype, copy=False: self.arrays[ctypes.addressof(t)])

    def tensor(self, name: str, ggml_type: int, ne, data: np.ndarray | None = None, strides=None, op: int = 0):
        t = _ggml.GgmlTensor()
        t.type, t.op, t.name = ggml_type, op, name.encode()
        ne = list(ne) + [1] * (4 - len(ne))
        item = 4
        nb = strides or [item, item * ne[0], item * ne[0] * ne[1], item * ne[0] * ne[1] * ne[2]]
        for i in range(4):
            t.ne[i], t.nb[i] = ne[i], nb[i]
        if data is not None:
            view = np.lib.stride_tricks.as_strided(data, shape=tuple(reversed(ne)), strides=tuple(reversed(nb)))
            self.arrays[ctypes.addressof(t)] = view
            self.keep.append(data)
        self.keep.append(t)
        return t

    def node(self, op: int, *srcs):
        t = self.tensor("node", _ggml.GGML_TYPE_F32, [1], op=op)
        for i, s in enumerate(srcs):
            t.src[i] = ctypes.addressof(s)
        return ctypes.addressof(t)


def _c_dense(values, x, src0_ne):
    """llama-imatrix's dense loop, transcribed literally (float32 scalars)."""
    ne0 = x.shape[-1]
    for i3 in range(x.shape[0]):
        for i2 in range(x.shape[1]):
            mat_id = (i3 % src0_ne[3]) * src0_ne[2] + (i2 % src0_ne[2])
            for row in range(x.shape[2]):
                for j in range(ne0):
                    v = x[i3, i2, row, j]
                    values[mat_id * ne0 + j] = np.float32(values[mat_id * ne0 + j] + np.float32(v * v))


def _c_experts(values, counts, x, ids):
    """llama-imatrix's MUL_MAT_ID loop, transcribed literally: x[token, slot_or_0, :], ids[token, slot]."""
    ne0, ne1 = x.shape[-1], x.shape[1]
    for idx in range(ids.shape[1]):
        for row in range(ids.shape[0]):
            ex = ids[row, idx]
            counts[ex] += 1
            for j in range(ne0):
                v = x[row, idx % ne1, j]
                values[ex * ne0 + j] = np.float32(values[ex * ne0 + j] + np.float32(v * v))


def test_dense_matches_llama_imatrix_loop_and_filters_like_it(monkeypatch):
    g = _Graph(monkeypatch)
    rng = np.random.default_rng(1)
    ne0 = 24
    weight = g.tensor("CPU#blk.3.attn_q.weight#0", 1, [ne0, 8])
    collector = _Collector()
    expected = np.zeros(ne0, dtype=np.float32)
    for n_rows in (20, 16, 33):
        x = (rng.standard_normal((n_rows, ne0)) * 7).astype(np.float32)
        node = g.node(_ggml.GGML_OP_MUL_MAT, weight, g.tensor("x", _ggml.GGML_TYPE_F32, [ne0, n_rows], x))
        assert collector(node, True)
        assert collector(node, False)
        _c_dense(expected, x.reshape(1, 1, n_rows, ne0), [ne0, 8, 1, 1])
    assert collector.values["blk.3.attn_q.weight"].tobytes() == expected.tobytes()
    assert collector.counts["blk.3.attn_q.weight"].tolist() == [20 + 16 + 33]
    # what llama-imatrix does not ask for
    few = g.tensor("x", _ggml.GGML_TYPE_F32, [ne0, 15], np.ones((15, ne0), np.float32))
    assert not collector(g.node(_ggml.GGML_OP_MUL_MAT, weight, few), True)  # fewer than 16 rows
    f16 = g.tensor("x", 1, [ne0, 32])
    assert not collector(g.node(_ggml.GGML_OP_MUL_MAT, weight, f16), True)  # not F32
    x32 = g.tensor("x", _ggml.GGML_TYPE_F32, [ne0, 32], np.ones((32, ne0), np.float32))
    for name in ("token_embd.weight", "output.weight", "cache_k_l0 (view)"):
        assert not collector(g.node(_ggml.GGML_OP_MUL_MAT, g.tensor(name, 1, [ne0, 8]), x32), True)
    assert not collector(g.node(_ggml.GGML_OP_MUL_MAT + 2, weight, x32), True)  # another op


def test_dense_3d_weight_and_broadcast_rows(monkeypatch):
    """A weight with ne2 = 2 matrices multiplied by [ne0, 17, 4] input: i2 % 2 picks the matrix, counts nrows/2."""
    g = _Graph(monkeypatch)
    rng = np.random.default_rng(2)
    ne0 = 8
    weight = g.tensor("blk.0.attn_k_b.weight", 1, [ne0, 5, 2])
    x = rng.standard_normal((4, 17, ne0)).astype(np.float32)
    collector = _Collector()
    node = g.node(_ggml.GGML_OP_MUL_MAT, weight, g.tensor("x", _ggml.GGML_TYPE_F32, [ne0, 17, 4], x))
    assert collector(node, True) and collector(node, False)
    expected = np.zeros(2 * ne0, dtype=np.float32)
    _c_dense(expected, x.reshape(1, 4, 17, ne0), [ne0, 5, 2, 1])
    assert collector.values["blk.0.attn_k_b.weight"].tobytes() == expected.tobytes()
    assert collector.counts["blk.0.attn_k_b.weight"].tolist() == [17 * 4 // 2]


@pytest.mark.parametrize("broadcast", [True, False])
def test_experts_match_llama_imatrix_loop_with_strided_ids(monkeypatch, broadcast):
    g = _Graph(monkeypatch)
    rng = np.random.default_rng(3)
    n_as, n_used, n_tokens, ne0 = 6, 2, 40, 16
    ne1 = 1 if broadcast else n_used  # gate/up see one row per token, down one per chosen expert
    weight = g.tensor("blk.1.ffn_up_exps.weight", 1, [ne0, 12, n_as])
    x = (rng.standard_normal((n_tokens, ne1, ne0)) * 3).astype(np.float32)
    reachable = n_as - 1 if broadcast else n_as  # with broadcast input, the last expert is never chosen
    routing = np.stack([rng.choice(reachable, size=n_used, replace=False) for _ in range(n_tokens)]).astype(np.int32)
    # ids stored transposed ([n_tokens, n_used] memory, viewed as ne = [n_used, n_tokens]): not contiguous
    store = np.ascontiguousarray(routing.T)
    ids = g.tensor("ids", _ggml.GGML_TYPE_I32, [n_used, n_tokens], store, strides=[4 * n_tokens, 4, 0, 0])
    src1 = g.tensor("x", _ggml.GGML_TYPE_F32, [ne0, ne1, n_tokens], x)
    collector = _Collector()
    for _ in range(2):
        node = g.node(_ggml.GGML_OP_MUL_MAT_ID, weight, src1, ids)
        assert collector(node, True) and collector(node, False)
    values = np.zeros(n_as * ne0, dtype=np.float32)
    counts = np.zeros(n_as, dtype=np.int64)
    for _ in range(2):
        _c_experts(values, counts, x, routing)
    assert collector.values["blk.1.ffn_up_exps.weight"].tobytes() == values.tobytes()
    assert collector.counts["blk.1.ffn_up_exps.weight"].tolist() == counts.tolist()
    assert counts.sum() == 2 * n_tokens * n_used
    if broadcast:
        assert counts[5] == 0 and not values[5 * ne0 :].any()


def test_collector_refusals(monkeypatch):
    g = _Graph(monkeypatch)
    ne0 = 8
    weight = g.tensor("blk.0.ffn_down_exps.weight", 1, [ne0, 4, 3])
    x = np.ones((2, 1, ne0), np.float32)
    ids = g.tensor("ids", _ggml.GGML_TYPE_I32, [1, 2], np.array([[0], [7]], np.int32))
    node = g.node(_ggml.GGML_OP_MUL_MAT_ID, weight, g.tensor("x", _ggml.GGML_TYPE_F32, [ne0, 1, 2], x), ids)
    with pytest.raises(ImatrixCollectError, match=r"'blk.0.ffn_down_exps.weight': expert id 7 outside 0..2"):
        _Collector()(node, False)
    big = np.full((16, ne0), 3e38, np.float32)
    dense = g.node(_ggml.GGML_OP_MUL_MAT, g.tensor("blk.0.attn_q.weight", 1, [ne0, 4]),
                   g.tensor("x", _ggml.GGML_TYPE_F32, [ne0, 16], big))
    with pytest.raises(ImatrixCollectError, match=r"'blk.0.attn_q.weight': non-finite sums"):
        _Collector()(dense, False)


# ---- the runner's callback ---------------------------------------------------------------------------------------


def test_an_exception_in_the_callback_is_raised_after_decode(tiny_models):
    calls = []

    def boom(address, ask):
        calls.append(ask)
        if not ask:
            raise ZeroDivisionError("division by zero in the callback")
        return _ggml.tensor_at(address).op == _ggml.GGML_OP_MUL_MAT

    with LlamaRunner(tiny_models["llama"], RunnerConfig(n_ctx=32, n_threads=2), eval_callback=boom) as runner:
        tokens = runner.tokenize("the quick brown fox jumps over the lazy dog " * 2)[:20]
        n = len(tokens)
        with pytest.raises(LlamaError, match=r"evaluation callback failed .*ZeroDivisionError: division by zero"):
            runner.decode(tokens, np.arange(n), np.zeros(n), np.ones(n, bool))
        assert calls.count(False) == 1  # after the first failure nothing more is asked of it
        runner.clear()

    def refuse(address, ask):
        raise ImatrixCollectError("a one-line refusal")

    with LlamaRunner(tiny_models["llama"], RunnerConfig(n_ctx=32, n_threads=2), eval_callback=refuse) as runner:
        with pytest.raises(ImatrixCollectError, match="^a one-line refusal$"):
            runner.decode(tokens, np.arange(n), np.zeros(n), np.ones(n, bool))


# ---- whole runs on the tiny models -------------------------------------------------------------------------------


def _matrices(model) -> dict[str, list[int]]:
    """Every blk.* weight matrix of the model: name -> ggml ne."""
    return {t.name: [int(x) for x in t.shape] for t in GGUFReader(model).tensors
            if t.name.startswith("blk.") and len(t.shape) >= 2}


@pytest.mark.parametrize("arch", ["llama", "gemma4", "mixtral"])
def test_every_matrix_gets_an_entry_with_llama_imatrix_counts(tiny_models, arch):
    model = tiny_models[arch]
    got = collect_stats(model, default_calibration_text(), SMALL)
    n_tokens = SMALL.n_chunks * SMALL.n_ctx
    matrices = _matrices(model)
    assert set(got.stats) == set(matrices)
    n_used = {"gemma4": 2, "mixtral": 2}.get(arch, 0)
    experts = 0
    for name, (sums, counts) in got.stats.items():
        ne = matrices[name]
        n_mat = ne[2] if len(ne) > 2 else 1
        assert sums.dtype == np.float32 and sums.shape == (ne[0] * n_mat,) and counts.shape == (n_mat,)
        assert np.all(np.isfinite(sums)) and np.all(sums >= 0) and not sums.flags.writeable
        if n_mat == 1:
            assert counts.tolist() == [n_tokens]
            assert np.all(sums > 0)
        else:  # each token is routed to n_used distinct experts
            experts += 1
            assert counts.sum() == n_tokens * n_used and counts.max() <= n_tokens
            assert np.array_equal(sums.reshape(n_mat, -1).any(axis=1), counts > 0)
    assert experts == {"llama": 0, "gemma4": 12, "mixtral": 12}[arch]
    assert (got.chunk_count, got.chunk_size, got.n_chunks, got.n_seq) == (4, 64, 4, 32)


def test_copied_inputs_give_the_same_sums(tiny_models, monkeypatch):
    """Inputs read through ggml_backend_tensor_get (how a GPU's are read) equal inputs read in place."""
    viewed = collect_stats(tiny_models["gemma4"], default_calibration_text(), SMALL)
    real = _ggml.tensor_array
    monkeypatch.setattr(_ggml, "tensor_array", lambda t, dtype, copy=False: real(t, dtype, copy=True))
    copied = collect_stats(tiny_models["gemma4"], default_calibration_text(), SMALL)
    assert viewed.stats.keys() == copied.stats.keys()
    for name, (sums, counts) in viewed.stats.items():
        assert sums.tobytes() == copied.stats[name][0].tobytes() and np.array_equal(counts, copied.stats[name][1])


def test_deterministic_and_written_as_loaded(tiny_models, tmp_path):
    model = tiny_models["mixtral"]
    a = compute_imatrix(model, tmp_path / "a.gguf", settings=SMALL)
    compute_imatrix(model, tmp_path / "b.gguf", settings=SMALL)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert a.datasets == ("cerebellum-ray:stdlib-docs.txt",) and a.n_expert_entries == 12 and a.chunk_count == 4
    stats = collect_stats(model, default_calibration_text(), SMALL).stats
    loaded = load_imatrix(tmp_path / "a.gguf")
    assert (loaded.chunk_count, loaded.chunk_size, loaded.datasets) == (4, 64, a.datasets)
    for name, (sums, counts) in stats.items():
        n_mat = counts.size
        mean = sums.reshape(n_mat, -1) / np.maximum(counts, 1).astype(np.float32)[:, None]
        mean[counts == 0] = 1.0  # llama-quantize's rule for an expert never reached
        assert loaded.vector(name).tobytes() == mean.reshape(-1).tobytes()
        assert loaded.n_mat.get(name, 1) == n_mat
    dat = compute_imatrix(model, tmp_path / "a.dat", settings=SMALL, fmt="dat")
    assert dat.format == "dat" and load_imatrix(tmp_path / "a.dat").chunk_count == 4


def test_text_file_read_as_llama_imatrix_reads_it(tiny_models, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_bytes(default_calibration_text() + b"\n")
    assert read_text_file(text) == default_calibration_text()  # one trailing newline dropped, as -f does
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a\r\nb\n\n")
    assert read_text_file(crlf) == b"a\r\nb\n"  # bytes as they are; only one newline goes
    report = compute_imatrix(tiny_models["llama"], tmp_path / "m.gguf", text_file=text, settings=SMALL)
    assert report.datasets == (str(text),)
    from_text = compute_imatrix(tiny_models["llama"], tmp_path / "n.gguf", text=default_calibration_text(),
                                settings=SMALL)
    assert load_imatrix(tmp_path / "m.gguf").digest == load_imatrix(tmp_path / "n.gguf").digest
    assert from_text.datasets == () and load_imatrix(tmp_path / "n.gguf").datasets == ()  # as llama-imatrix without -f
    named = compute_imatrix(tiny_models["llama"], tmp_path / "o.gguf", text=default_calibration_text(),
                            dataset="chat:calib.jsonl", settings=SMALL)
    assert load_imatrix(tmp_path / "o.gguf").datasets == named.datasets == ("chat:calib.jsonl",)


def test_chunks_longer_than_a_batch(tiny_models):
    """n_ctx > n_batch: one chunk per decode, split over two batches, BOS only in the first; counts per chunk."""
    got = collect_stats(tiny_models["llama"], default_calibration_text(),
                        CollectSettings(n_ctx=96, n_batch=64, n_chunks=2, n_threads=2))
    assert (got.n_seq, got.n_chunks, got.chunk_count) == (1, 2, 2)
    assert got.stats["blk.0.attn_q.weight"][1].tolist() == [192]


def test_refusals(tiny_models, tmp_path):
    model = tiny_models["llama"]
    with pytest.raises(ImatrixCollectError, match=r"tokenizes to \d+ tokens; a context of 64 needs at least 128"):
        compute_imatrix(model, tmp_path / "x.gguf", text="the quick brown fox", settings=SMALL)
    with pytest.raises(OutputError, match="it is the model"):
        compute_imatrix(model, model, settings=SMALL)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox\n")
    with pytest.raises(OutputError, match="it is the calibration text"):
        compute_imatrix(model, text, text_file=text, settings=SMALL)
    with pytest.raises(OutputError, match="does not exist"):
        compute_imatrix(model, tmp_path / "no" / "x.gguf", settings=SMALL)
    with pytest.raises(ImatrixCollectError, match="no such calibration text file"):
        compute_imatrix(model, tmp_path / "x.gguf", text_file=tmp_path / "missing.txt", settings=SMALL)
    with pytest.raises(ImatrixCollectError, match="is a directory"):
        compute_imatrix(model, tmp_path / "x.gguf", text_file=tmp_path, settings=SMALL)
    with pytest.raises(ImatrixCollectError, match="no such model file"):
        compute_imatrix(tmp_path / "missing.gguf", tmp_path / "x.gguf", settings=SMALL)
    with pytest.raises(ImatrixCollectError, match="not several"):
        compute_imatrix(model, tmp_path / "x.gguf", text="abc", text_file=text)
    with pytest.raises(ImatrixCollectError, match="a dataset name goes with a text"):
        compute_imatrix(model, tmp_path / "x.gguf", dataset="name")
    with pytest.raises(ImatrixCollectError, match="unknown imatrix format 'imat'"):
        compute_imatrix(model, tmp_path / "x.gguf", fmt="imat")
    with pytest.raises(ImatrixCollectError, match=r"512 chunks in one decode.*at most 256 sequences.* at least 8"):
        compute_imatrix(model, tmp_path / "x.gguf", settings=CollectSettings(n_ctx=4))
    with pytest.raises(ImatrixCollectError, match="n_chunks must be a positive integer"):
        compute_imatrix(model, tmp_path / "x.gguf", settings=CollectSettings(n_chunks=0))
    assert not list(tmp_path.glob("*.gguf"))


def test_cli(tiny_models, tmp_path, capsys):
    out = tmp_path / "g.imatrix"
    assert main(["imatrix", "--model", str(tiny_models["gemma4"]), "--out", str(out), "--ctx", "64", "--chunks", "2",
                 "--threads", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_chunks"] == 2 and report["n_expert_entries"] == 12 and report["format"] == "gguf"
    assert load_imatrix(out).chunk_count == 2
    assert main(["imatrix", "--model", str(tiny_models["gemma4"]), "--out", str(tiny_models["gemma4"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to write" in err and "it is the model" in err
    assert main(["imatrix", "--model", str(tiny_models["llama"]), "--out", str(tmp_path / "d.dat"), "--ctx", "64",
                 "--chunks", "2", "--format", "dat", "--threads", "2"]) == 0
    assert re.match(r"wrote .*d\.dat \(dat\): 28 matrices .*2 chunks of 64 tokens from the built-in corpus",
                    capsys.readouterr().out)


def test_chat_text_is_rendered_with_the_models_template(tiny_chat_model, tiny_models, tmp_path, capsys):
    """--chat-text: the conversations through the model's chat template (the oracle against llama-imatrix
    --parse-special is in test_llama_tools.py); refused for a model without a template and next to --text."""
    out = tmp_path / "chat.imatrix"
    assert main(["imatrix", "--model", str(tiny_chat_model), "--chat-text", "builtin", "--out", str(out), "--ctx",
                 "64", "--chunks", "2", "--threads", "2"]) == 0
    assert "the conversations of builtin (chat template)" in capsys.readouterr().out
    chat = load_imatrix(out)
    assert chat.datasets == ("builtin",) and chat.chunk_count == 2
    plain = compute_imatrix(tiny_chat_model, tmp_path / "plain.imatrix",
                            settings=CollectSettings(n_ctx=64, n_chunks=2, n_threads=2))
    assert load_imatrix(plain.out).digest != chat.digest  # another token stream
    assert main(["imatrix", "--model", str(tiny_models["llama"]), "--chat-text", "builtin", "--out",
                 str(tmp_path / "x.imatrix")]) == 2
    assert "has no chat template" in capsys.readouterr().err
    assert main(["imatrix", "--model", str(tiny_chat_model), "--chat-text", "builtin", "--text", str(out),
                 "--out", str(tmp_path / "y.imatrix")]) == 2
    assert "not several" in capsys.readouterr().err
    assert not (tmp_path / "x.imatrix").exists() and not (tmp_path / "y.imatrix").exists()
