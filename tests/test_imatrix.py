"""Importance matrices: both llama.cpp formats, llama-quantize's arithmetic bit for bit, and clear errors."""

import llama_cpp  # noqa: I001  (first, before numpy: a CUDA build of llama.cpp crashes otherwise)

import ctypes
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from cerebellum_ray.formats.imatrix import Imatrix, load_imatrix, save_imatrix, write_collected_imatrix


def _f32_div(x: float, n: int) -> np.float32:
    """x / n correctly rounded to float32, computed exactly (independent of numpy's float32 division)."""
    return np.float32(float(Fraction(float(x)) / n))  # double then float32 rounding is innocuous for one division


def _record() -> Imatrix:
    rng = np.random.default_rng(7)
    return Imatrix.build(
        {
            "blk.0.attn_q.weight": rng.random(256, dtype=np.float32) + 0.1,
            "blk.0.ffn_down.weight": rng.random(352, dtype=np.float32) * 3,
            "blk.0.ffn_down_exps.weight": rng.random(4 * 96, dtype=np.float32),
        },
        datasets=("wiki.train.raw", "code.txt"),
        chunk_count=7,
        chunk_size=512,
        n_mat={"blk.0.ffn_down_exps.weight": 4},
    )


# ---- the record ----------------------------------------------------------------------------------------------------


def test_record_is_frozen_and_read_only():
    im = _record()
    vec = im.vector("blk.0.attn_q.weight")
    assert vec.dtype == np.float32 and vec.shape == (256,)
    with pytest.raises(ValueError):
        vec[0] = 1.0
    with pytest.raises(TypeError):
        im.entries["x"] = vec
    assert im.vector("token_embd.weight") is None


def test_digest_depends_on_vectors_only():
    im = _record()
    same = Imatrix.build(dict(reversed(list(im.entries.items()))), datasets=("other",), chunk_count=1)
    assert same.digest == im.digest
    changed = dict(im.entries)
    vec = changed["blk.0.attn_q.weight"].copy()
    vec[3] = np.nextafter(vec[3], np.float32(2))  # one ulp
    changed["blk.0.attn_q.weight"] = vec
    assert Imatrix.build(changed).digest != im.digest


def test_per_expert_slices_and_size_rule():
    im = _record()
    rows = im.per_expert("blk.0.ffn_down_exps.weight", 96, 4)
    assert rows.shape == (4, 96)
    assert np.array_equal(rows[2], im.vector("blk.0.ffn_down_exps.weight")[192:288])
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_down_exps\.weight.*384 values.*96 \* 8"):
        im.per_expert("blk.0.ffn_down_exps.weight", 96, 8)
    token = Imatrix.build({"token_embd.weight": np.ones(7, np.float32)})
    assert token.per_expert("token_embd.weight", 256) is None  # llama-quantize skips it rather than failing


def test_build_refuses_non_finite():
    with pytest.raises(ValueError, match=r"'blk\.1\.ffn_up\.weight'.*non-finite.*index 2"):
        Imatrix.build({"blk.1.ffn_up.weight": [1.0, 2.0, np.inf]})


# ---- round trips ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_round_trip_is_bit_exact(tmp_path, fmt):
    im = _record()
    path = save_imatrix(im, tmp_path / f"im.{fmt}", fmt)
    back = load_imatrix(path)
    assert back.source_format == fmt
    assert back.digest == im.digest
    assert set(back.entries) == set(im.entries)
    for name, vec in im.entries.items():
        assert back.vector(name).tobytes() == vec.tobytes(), name
    assert back.chunk_count == 7
    # the legacy format has room for one dataset name (llama-imatrix writes the last one) and no chunk size
    assert back.datasets == (im.datasets if fmt == "gguf" else im.datasets[-1:])
    if fmt == "gguf":
        assert back.chunk_size == 512 and back.n_mat["blk.0.ffn_down_exps.weight"] == 4
    assert [p.name for p in tmp_path.iterdir()] == [f"im.{fmt}"]  # atomic write left no temporary file


def test_both_formats_load_identically(tmp_path):
    im = _record()
    g = load_imatrix(save_imatrix(im, tmp_path / "a.gguf", "gguf"))
    b = load_imatrix(save_imatrix(g, tmp_path / "b.dat", "dat"))
    d = load_imatrix(save_imatrix(b, tmp_path / "c.gguf", "gguf"))
    assert g.digest == d.digest == im.digest
    assert all(np.array_equal(g.vector(n), d.vector(n)) for n in im.entries)


def test_empty_dataset_list_keeps_gguf_metadata(tmp_path):
    im = Imatrix.build({"blk.0.attn_k.weight": np.ones(4, np.float32)}, chunk_count=1)
    back = load_imatrix(save_imatrix(im, tmp_path / "x.gguf", "gguf"))
    assert back.datasets == () and back.digest == im.digest


# ---- llama-quantize's arithmetic -----------------------------------------------------------------------------------


def _division_witness() -> np.float32:
    """A float32 x with x / 3 != x * (1 / 3) in float32: tells a division from a reciprocal multiplication."""
    third = np.float32(1) / np.float32(3)
    for k in range(1, 1000):
        x = np.float32(1 + k / 1024)
        if x / np.float32(3) != x * third:
            return x
    raise AssertionError("no witness found")


def _dat_bytes(entries, trailer=None) -> bytes:
    out = [struct.pack("<i", len(entries))]
    for name, ncall, values in entries:
        raw = name.encode()
        out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, len(values))]
        out.append(np.asarray(values, dtype="<f4").tobytes())
    if trailer is not None:
        chunks, dataset = trailer
        out += [struct.pack("<ii", chunks, len(dataset)), dataset.encode()]
    return b"".join(out)


def test_legacy_values_follow_llama_quantize(tmp_path):
    x = _division_witness()
    path = tmp_path / "raw.dat"
    path.write_bytes(
        _dat_bytes(
            [
                ("blk.0.attn_q.weight", 3, [x, 6.0, 1e-3]),  # stored mean * ncall: divided by ncall
                ("blk.0.attn_k.weight", 0, [2.5, 0.0]),  # ncall 0: taken as stored
                ("blk.0.attn_v.weight", -2, [4.0]),  # negative ncall: taken as stored too
            ],
            trailer=(11, "calib.txt"),
        )
    )
    im = load_imatrix(path)
    q = im.vector("blk.0.attn_q.weight")
    assert q.tolist() == [_f32_div(x, 3), _f32_div(6.0, 3), _f32_div(np.float32(1e-3), 3)]
    assert q[0] != x * (np.float32(1) / np.float32(3))  # a true division, not a reciprocal multiply
    assert im.vector("blk.0.attn_k.weight").tolist() == [2.5, 0.0]
    assert im.vector("blk.0.attn_v.weight").tolist() == [4.0]
    assert (im.chunk_count, im.datasets, im.source_format) == (11, ("calib.txt",), "dat")


def test_legacy_trailer_is_optional(tmp_path):
    path = tmp_path / "old.dat"
    path.write_bytes(_dat_bytes([("a.weight", 1, [1.0])]))
    im = load_imatrix(path)
    assert (im.chunk_count, im.datasets) == (0, ())


def _write_raw_gguf(path: Path, tensors: dict, *, metadata=True) -> Path:
    """A GGUF imatrix written with gguf-py (not our writer), from raw in_sum2 / counts arrays."""
    gw = GGUFWriter(path, "imatrix")
    gw.add_string("general.type", "imatrix")
    if metadata:
        gw.add_array("imatrix.datasets", ["calib.txt"])
        gw.add_uint32("imatrix.chunk_count", 5)
        gw.add_uint32("imatrix.chunk_size", 64)
    for name, arr in tensors.items():
        gw.add_tensor(name, np.asarray(arr, dtype=np.float32))
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    return path


def test_gguf_values_follow_llama_quantize(tmp_path):
    x = _division_witness()
    sums = np.array(
        [[x, 2.0, 9.0], [7.0, 7.0, 7.0], [3.0, 3.0, 3.0], [x, 1.0, 0.5]], dtype=np.float32
    )  # numpy [n_mat, ne0] = ggml [ne0=3, n_mat=4]
    counts = np.array([[2.5], [0.0], [0.4], [3.0]], dtype=np.float32)  # ggml [1, n_mat]
    path = _write_raw_gguf(
        tmp_path / "raw.gguf",
        {"blk.0.ffn_up_exps.weight.in_sum2": sums, "blk.0.ffn_up_exps.weight.counts": counts,
         "blk.0.ffn_down.weight.in_sum2": np.array([[4.0, 5.0]]), "blk.0.ffn_down.weight.counts": np.array([[2.0]]),
         "unrelated.tensor": np.zeros(2)},
    )
    im = load_imatrix(path)
    assert set(im.entries) == {"blk.0.ffn_up_exps.weight", "blk.0.ffn_down.weight"}  # other tensors are ignored
    vec = im.vector("blk.0.ffn_up_exps.weight").reshape(4, 3)
    # count 2.5 -> lround 3 (halves away from zero; numpy's round would give 2)
    assert vec[0].tolist() == [_f32_div(x, 3), _f32_div(2.0, 3), _f32_div(9.0, 3)]
    assert vec[1].tolist() == [1.0, 1.0, 1.0]  # count 0: ones, whatever the sums
    assert vec[2].tolist() == [1.0, 1.0, 1.0]  # count 0.4 rounds to 0: ones
    assert vec[3].tolist() == [_f32_div(x, 3), _f32_div(1.0, 3), _f32_div(0.5, 3)]
    assert vec[3, 0] != x * (np.float32(1) / np.float32(3))
    assert im.vector("blk.0.ffn_down.weight").tolist() == [2.0, 2.5]
    assert (im.chunk_count, im.chunk_size, im.datasets, im.n_mat["blk.0.ffn_up_exps.weight"]) == (
        5, 64, ("calib.txt",), 4)


def test_collected_stats_are_written_like_llama_imatrix(tmp_path):
    sums = np.array([10.0, 20.0, 30.0, 5.0, 6.0, 7.0], dtype=np.float32)  # 2 experts x ne0 3
    counts = np.array([100, 0])  # expert 1 never routed
    stats = {"blk.0.ffn_gate_exps.weight": (sums, counts), "blk.0.never.weight": (np.ones(2, np.float32), [0])}
    dat = write_collected_imatrix(tmp_path / "c.dat", stats, fmt="dat", datasets=("a", "b.txt"), chunk_count=3,
                                  chunk_size=64)
    ncall = 2  # ceil(100 / 64)
    expect = [np.float32(np.float32(v) / np.float32(100)) * np.float32(ncall) for v in (10.0, 20.0, 30.0)]
    expect += [np.float32(ncall)] * 3  # never counted: stored as 1 * ncall
    name = b"blk.0.ffn_gate_exps.weight"
    want = (struct.pack("<ii", 1, len(name)) + name + struct.pack("<ii", ncall, 6)
            + np.array(expect, "<f4").tobytes() + struct.pack("<ii", 3, 5) + b"b.txt")  # entry with no data skipped
    assert dat.read_bytes() == want
    gguf = load_imatrix(write_collected_imatrix(tmp_path / "c.gguf", stats, fmt="gguf", chunk_size=64))
    assert gguf.vector("blk.0.never.weight").tolist() == [1.0, 1.0]  # GGUF keeps it; llama-quantize reads ones
    assert gguf.vector("blk.0.ffn_gate_exps.weight")[3:].tolist() == [1.0, 1.0, 1.0]


# ---- the GGUF bytes are ggml's own -------------------------------------------------------------------------------


class _GGMLInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _ggml_lib():
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    sig = {
        "ggml_tensor_overhead": (ctypes.c_size_t, []),
        "ggml_init": (ctypes.c_void_p, [_GGMLInitParams]),
        "ggml_free": (None, [ctypes.c_void_p]),
        "ggml_new_tensor_2d": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
        "ggml_set_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        "ggml_get_data": (ctypes.c_void_p, [ctypes.c_void_p]),
        "gguf_init_empty": (ctypes.c_void_p, []),
        "gguf_free": (None, [ctypes.c_void_p]),
        "gguf_set_val_str": (None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]),
        "gguf_set_arr_str": (None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
                                    ctypes.c_size_t]),
        "gguf_set_val_u32": (None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
        "gguf_add_tensor": (None, [ctypes.c_void_p, ctypes.c_void_p]),
        "gguf_write_to_file": (ctypes.c_bool, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_bool]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _ggml_write_imatrix(path, stats, datasets, chunk_count, chunk_size):
    """llama-imatrix's save_imatrix, step for step, through libggml's own gguf writer."""
    lib = _ggml_lib()
    ctx = lib.ggml_init(_GGMLInitParams(1 << 20, None, False))
    gctx = lib.gguf_init_empty()
    try:
        lib.gguf_set_val_str(gctx, b"general.type", b"imatrix")
        arr = (ctypes.c_char_p * max(1, len(datasets)))(*[d.encode() for d in datasets])
        lib.gguf_set_arr_str(gctx, b"imatrix.datasets", arr, len(datasets))
        lib.gguf_set_val_u32(gctx, b"imatrix.chunk_count", chunk_count)
        lib.gguf_set_val_u32(gctx, b"imatrix.chunk_size", chunk_size)
        for name in sorted(stats):
            sums, counts = stats[name]
            n_mat = len(counts)
            for suffix, ne0, data in ((".in_sum2", len(sums) // n_mat, sums), (".counts", 1, counts)):
                t = lib.ggml_new_tensor_2d(ctx, 0, ne0, n_mat)
                lib.ggml_set_name(t, (name + suffix).encode())
                ctypes.memmove(lib.ggml_get_data(t), np.asarray(data, np.float32).tobytes(), 4 * ne0 * n_mat)
                lib.gguf_add_tensor(gctx, t)
        assert lib.gguf_write_to_file(gctx, str(path).encode(), False)
    finally:
        lib.gguf_free(gctx)
        lib.ggml_free(ctx)


@pytest.mark.parametrize("datasets", [("wiki.txt", "more.txt"), ()])
def test_gguf_bytes_equal_ggml_gguf_writer(tmp_path, datasets):
    rng = np.random.default_rng(1)
    stats = {
        "blk.1.ffn_down_exps.weight": (rng.random(3 * 96, dtype=np.float32), np.array([5, 0, 12])),
        "blk.0.attn_q.weight": (rng.random(256, dtype=np.float32), np.array([64])),
    }
    ours = write_collected_imatrix(tmp_path / "ours.gguf", stats, fmt="gguf", datasets=datasets, chunk_count=2,
                                   chunk_size=32)
    _ggml_write_imatrix(tmp_path / "ggml.gguf", stats, list(datasets), 2, 32)
    assert ours.read_bytes() == (tmp_path / "ggml.gguf").read_bytes()


# ---- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [2, 6, 12, 30, -3])
def test_truncated_legacy_file_is_named_with_offset(tmp_path, cut):
    full = _dat_bytes([("blk.0.attn_q.weight", 1, [1.0, 2.0]), ("blk.0.attn_k.weight", 1, [3.0])], (1, "calib.txt"))
    path = tmp_path / "cut.dat"
    path.write_bytes(full[:cut])
    with pytest.raises(ValueError, match=r"cut\.dat: truncated legacy imatrix: .* at offset \d+"):
        load_imatrix(path)


@pytest.mark.parametrize("cut", [10, 100, -8])
def test_truncated_gguf_file_is_refused(tmp_path, cut):
    full = save_imatrix(_record(), tmp_path / "full.gguf", "gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(full[:cut])
    with pytest.raises(ValueError, match=r"cut\.gguf: (truncated|.*garbled)"):
        load_imatrix(path)


def test_garbled_legacy_file(tmp_path):
    path = tmp_path / "junk.dat"
    path.write_bytes(struct.pack("<ii", 1, -5) + b"x" * 40)
    with pytest.raises(ValueError, match=r"junk\.dat: garbled legacy imatrix at offset 4: .*name length -5"):
        load_imatrix(path)
    path.write_bytes(struct.pack("<i", 0))
    with pytest.raises(ValueError, match=r"entry count 0"):
        load_imatrix(path)


def test_non_finite_values_are_refused(tmp_path):
    path = tmp_path / "nan.dat"
    path.write_bytes(_dat_bytes([("blk.3.ffn_up.weight", 1, [1.0, np.nan])]))
    with pytest.raises(ValueError, match=r"nan\.dat.*'blk\.3\.ffn_up\.weight'.*non-finite.*index 1"):
        load_imatrix(path)
    gpath = _write_raw_gguf(tmp_path / "inf.gguf", {"w.weight.in_sum2": [[np.inf]], "w.weight.counts": [[1.0]]})
    with pytest.raises(ValueError, match=r"inf\.gguf.*'w\.weight'.*non-finite"):
        load_imatrix(gpath)


def test_gguf_without_metadata_or_pairs_is_refused(tmp_path):
    path = _write_raw_gguf(tmp_path / "nometa.gguf", {"w.weight.in_sum2": [[1.0]], "w.weight.counts": [[1.0]]},
                           metadata=False)
    with pytest.raises(ValueError, match=r"nometa\.gguf.*missing imatrix\.datasets"):
        load_imatrix(path)
    path = _write_raw_gguf(tmp_path / "half.gguf", {"w.weight.in_sum2": [[1.0]]})
    with pytest.raises(ValueError, match=r"half\.gguf.*'w\.weight' needs both \.in_sum2 and \.counts"):
        load_imatrix(path)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown imatrix format 'bin'"):
        save_imatrix(_record(), tmp_path / "x", "bin")
