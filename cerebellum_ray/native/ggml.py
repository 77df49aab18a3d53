"""The one ctypes boundary: ggml's quantizer and type helpers from the libggml-base that llama-cpp-python installs,
and the ``struct ggml_tensor`` that llama.cpp's evaluation callback hands over.

Nothing outside this module touches ctypes. The library is loaded lazily (on the first quantization), so light
commands such as ``inspect`` never load it. ctypes releases the GIL during foreign calls, so the row-range thread
pool in ``quantize.py`` runs in parallel.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import threading
from pathlib import Path

import numpy as np

from ..core.errors import CerebellumError

_init_lock = threading.Lock()
_initialised: set[int] = set()


def _llama_cpp_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "llama-cpp-python is not installed: the quantizer is ggml's own, from the libggml-base that "
            "llama-cpp-python ships. Install it with: pip install llama-cpp-python==0.3.36"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits (ggml/include/ggml.h)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_ToFloat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib_dir = _llama_cpp_lib_dir()
    candidates = sorted(lib_dir.glob("libggml-base.*"))
    if not candidates:
        raise RuntimeError(f"no libggml-base library in {lib_dir}; reinstall llama-cpp-python==0.3.36")
    lib = ctypes.CDLL(str(candidates[0]))
    f32p = ctypes.POINTER(ctypes.c_float)
    sigs = {
        "ggml_quantize_chunk": (
            ctypes.c_size_t,
            [ctypes.c_int, f32p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, f32p],
        ),
        "ggml_quantize_requires_imatrix": (ctypes.c_bool, [ctypes.c_int]),
        "ggml_quantize_init": (None, [ctypes.c_int]),
        "ggml_blck_size": (ctypes.c_int64, [ctypes.c_int]),
        "ggml_type_size": (ctypes.c_size_t, [ctypes.c_int]),
        "ggml_row_size": (ctypes.c_size_t, [ctypes.c_int, ctypes.c_int64]),
        "ggml_type_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ggml_validate_row_data": (ctypes.c_bool, [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]),
        "ggml_get_type_traits": (ctypes.POINTER(_TypeTraits), [ctypes.c_int]),
        "ggml_fp16_to_fp32_row": (None, [ctypes.c_void_p, f32p, ctypes.c_int64]),
        "ggml_bf16_to_fp32_row": (None, [ctypes.c_void_p, f32p, ctypes.c_int64]),
        # graph tensors (the evaluation callback)
        "ggml_op_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ggml_nbytes": (ctypes.c_size_t, [ctypes.c_void_p]),
        "ggml_nrows": (ctypes.c_int64, [ctypes.c_void_p]),
        "ggml_element_size": (ctypes.c_size_t, [ctypes.c_void_p]),
        "ggml_backend_buffer_is_host": (ctypes.c_bool, [ctypes.c_void_p]),
        "ggml_backend_tensor_get": (None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def _f32_ptr(a: np.ndarray | None):
    if a is None:
        return None
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def type_name(type_id: int) -> str:
    return _lib().ggml_type_name(type_id).decode().upper()


def block_size(type_id: int) -> int:
    return int(_lib().ggml_blck_size(type_id))


def type_size(type_id: int) -> int:
    return int(_lib().ggml_type_size(type_id))


def requires_imatrix(type_id: int) -> bool:
    """ggml's own rule: ggml_quantize_chunk aborts the process without an imatrix for these types."""
    return bool(_lib().ggml_quantize_requires_imatrix(type_id))


def quantize_init(type_id: int) -> None:
    """Build ggml's lookup grids for IQ types once, before worker threads race to do it."""
    with _init_lock:
        if type_id not in _initialised:
            _lib().ggml_quantize_init(type_id)
            _initialised.add(type_id)


def quantize_rows(type_id: int, src: np.ndarray, dst: np.ndarray, imatrix: np.ndarray | None) -> int:
    """ggml_quantize_chunk over all rows of `src` (float32, C-contiguous, shape (nrows, n_per_row)) into `dst`.

    `imatrix` is one n_per_row float32 vector shared by these rows (the caller slices per expert) or None.
    Returns the bytes written. The caller guarantees the imatrix rule (see requires_imatrix) and the row length.
    """
    assert src.dtype == np.float32 and src.flags.c_contiguous and src.ndim == 2
    assert dst.flags.c_contiguous and dst.dtype == np.uint8
    nrows, n_per_row = src.shape
    if imatrix is not None:
        assert imatrix.dtype == np.float32 and imatrix.shape == (n_per_row,) and imatrix.flags.c_contiguous
    written = _lib().ggml_quantize_chunk(
        type_id, _f32_ptr(src), dst.ctypes.data_as(ctypes.c_void_p), 0, nrows, n_per_row, _f32_ptr(imatrix)
    )
    return int(written)


def validate_rows(type_id: int, data: np.ndarray) -> bool:
    """ggml_validate_row_data: the check llama-quantize runs on every quantized chunk (NaN/inf scales)."""
    return bool(_lib().ggml_validate_row_data(type_id, data.ctypes.data_as(ctypes.c_void_p), data.nbytes))


@functools.cache
def _to_float_fn(type_id: int):
    traits = _lib().ggml_get_type_traits(type_id).contents
    if not traits.to_float:
        raise ValueError(f"ggml has no dequantization for type {type_name(type_id)}")
    return _ToFloat(traits.to_float)


def to_float(type_id: int, src: np.ndarray, n_elements: int, out: np.ndarray) -> None:
    """Dequantize/convert `n_elements` of raw ggml data (uint8 buffer) into `out` (float32) with ggml's own code.

    This is exactly what llama-quantize does before requantizing (llama_tensor_dequantize_impl): F16 and BF16
    through ggml_fp16_to_fp32_row / ggml_bf16_to_fp32_row, quantized types through their type traits' to_float.
    F32 (which has no to_float in ggml) is copied.
    """
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.size >= n_elements
    if type_id == 0:
        out.reshape(-1)[:n_elements] = np.frombuffer(src, np.float32, n_elements)
        return
    src_ptr = src.ctypes.data_as(ctypes.c_void_p)
    out_ptr = _f32_ptr(out)
    lib = _lib()
    if type_id == 1:
        lib.ggml_fp16_to_fp32_row(src_ptr, out_ptr, n_elements)
    elif type_id == 30:
        lib.ggml_bf16_to_fp32_row(src_ptr, out_ptr, n_elements)
    else:
        _to_float_fn(type_id)(src_ptr, out_ptr, n_elements)


# ---- graph tensors, as llama.cpp's evaluation callback (cb_eval) hands them over ----------------------------------

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64  # bytes
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26
# enum ggml_op at the llama.cpp commit llama-cpp-python 0.3.36 vendors (0c1e57098). The enum moves between versions
# (ops were inserted before MUL_MAT), so both values are checked against ggml_op_name before a callback is trusted.
GGML_OP_MUL_MAT = 29
GGML_OP_MUL_MAT_ID = 30


class GgmlAbiError(CerebellumError):
    """The installed ggml does not have the struct layout or enum values this module was written for."""


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h), x86-64 / aarch64 LP64: 336 bytes (GGML_TENSOR_SIZE)."""

    _fields_ = [
        ("type", ctypes.c_int),  # enum ggml_type
        ("buffer", ctypes.c_void_p),  # struct ggml_backend_buffer *
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),  # elements per dimension
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),  # stride in bytes per dimension
        ("op", ctypes.c_int),  # enum ggml_op
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),  # struct ggml_tensor *
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


# offsetof / sizeof printed by a C probe compiled against the vendored ggml.h (x86-64 Linux)
GGML_TENSOR_OFFSETS = {
    "type": 0, "buffer": 8, "ne": 16, "nb": 48, "op": 80, "op_params": 84, "flags": 148, "src": 152, "view_src": 232,
    "view_offs": 240, "data": 248, "name": 256, "extra": 320, "padding": 328,
}
GGML_TENSOR_SIZE = 336


def check_tensor_layout() -> None:
    """Refuse a platform on which the ctypes mirror of struct ggml_tensor does not match ggml's own layout."""
    got = {name: getattr(GgmlTensor, name).offset for name in GGML_TENSOR_OFFSETS}
    if got != GGML_TENSOR_OFFSETS or ctypes.sizeof(GgmlTensor) != GGML_TENSOR_SIZE:
        raise GgmlAbiError(
            f"struct ggml_tensor mirror has size {ctypes.sizeof(GgmlTensor)} and offsets {got}, ggml's is "
            f"{GGML_TENSOR_SIZE} bytes with {GGML_TENSOR_OFFSETS}; this platform's ABI is not supported: compute the "
            "imatrix with llama-imatrix instead"
        )


@functools.lru_cache(maxsize=1)
def check_op_enums() -> None:
    """Before a callback reads graph tensors: refuse a platform whose struct ggml_tensor differs from the mirror, and
    a ggml whose enum ggml_op puts MUL_MAT / MUL_MAT_ID elsewhere (ggml_op_name of the values we use). Not done at
    import, so that quantizing still works where only the callback's struct would not."""
    check_tensor_layout()
    lib = _lib()
    for value, name in ((GGML_OP_MUL_MAT, b"MUL_MAT"), (GGML_OP_MUL_MAT_ID, b"MUL_MAT_ID")):
        got = lib.ggml_op_name(value)
        if got != name:
            raise GgmlAbiError(
                f"ggml_op_name({value}) is {got!r}, expected {name!r}: the installed ggml's enum ggml_op differs from "
                "the one this module was written for (llama-cpp-python 0.3.36); install llama-cpp-python==0.3.36"
            )


def tensor_at(address: int) -> GgmlTensor:
    """The ggml tensor at `address` (no copy: valid while ggml keeps it, i.e. during the callback)."""
    return GgmlTensor.from_address(address)


def tensor_name(t: GgmlTensor) -> str:
    return t.name.decode("utf-8", errors="replace")


def tensor_nrows(t: GgmlTensor) -> int:
    return int(t.ne[1]) * int(t.ne[2]) * int(t.ne[3])


def element_size(t: GgmlTensor) -> int:
    return int(_lib().ggml_element_size(ctypes.addressof(t)))


def tensor_array(t: GgmlTensor, dtype, copy: bool = False) -> np.ndarray:
    """The tensor's data as a numpy array of shape (ne3, ne2, ne1, ne0) with ggml's byte strides.

    Host memory is viewed in place (valid only during the callback) unless `copy`; any other buffer (a GPU), and
    host memory with `copy`, is copied with ggml_backend_tensor_get: ggml_nbytes raw bytes, strides kept, as
    llama-imatrix copies it.
    """
    dtype = np.dtype(dtype)
    lib = _lib()
    addr = ctypes.addressof(t)
    nbytes = int(lib.ggml_nbytes(addr))
    shape = tuple(int(t.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(int(t.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
    if not copy and t.buffer and lib.ggml_backend_buffer_is_host(t.buffer) and t.data:
        raw = np.frombuffer((ctypes.c_char * nbytes).from_address(t.data), dtype=np.uint8)
    else:
        raw = np.empty(nbytes, dtype=np.uint8)
        lib.ggml_backend_tensor_get(addr, raw.ctypes.data, 0, nbytes)
    return np.ndarray(shape, dtype=dtype, buffer=raw, strides=strides)


# ---- llama.cpp's own whole-model quantizer (the oracle for tests and benchmarks) ----------------------------------


def llama_quantize(
    src: str,
    dst: str,
    ftype_id: int,
    imatrix: dict[str, np.ndarray] | None = None,
    overrides: list[tuple[str, int]] | None = None,
    n_threads: int = 0,
    allow_requantize: bool = True,
    pure: bool = False,
    kv_overrides: list[tuple[str, str | int]] | None = None,
) -> None:
    """Run llama.cpp's llama_model_quantize (what llama-quantize does) through llama-cpp-python's bindings.

    `imatrix` maps tensor names to float32 vectors; `overrides` are (regex, ggml type id) pairs as --tensor-type;
    `kv_overrides` are (key, str or int) pairs written after general.file_type, as llama-quantize passes its
    quantize.imatrix.* keys and --override-kv (ints are written as UINT32 by this llama.cpp).
    Raises RuntimeError when llama.cpp reports a failure.
    """
    from .llama import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_id
    params.nthread = n_threads
    params.allow_requantize = allow_requantize
    params.pure = pure
    keep = []  # keep ctypes buffers alive until the call returns
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, vec) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(vec, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = _f32_ptr(arr)
            entries[i].size = arr.size
        entries[len(imatrix)].name = None
        keep.append(entries)
        params.imatrix = entries
    if overrides:
        tts = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, type_id) in enumerate(overrides):
            tts[i].pattern = pattern.encode()
            tts[i].type = type_id
        tts[len(overrides)].pattern = None
        keep.append(tts)
        params.tt_overrides = tts
    if kv_overrides:
        kvs = (llama_cpp.llama_model_kv_override * (len(kv_overrides) + 1))()  # zeroed: the last one ends the list
        for i, (key, value) in enumerate(kv_overrides):
            kvs[i].key = key.encode()
            if isinstance(value, str):
                kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                kvs[i].value.val_str = value.encode()[:127]
            else:
                kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                kvs[i].value.val_i64 = int(value)
        keep.append(kvs)
        params.kv_overrides = kvs
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, ftype {ftype_id}) failed with code {rc}")


# ---- compute devices ----------------------------------------------------------------------------------------------

DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL", "META")  # enum ggml_backend_dev_type, in order


@functools.lru_cache(maxsize=1)
def _backend_registry():
    """(libggml, libggml-base) with ggml's device-registry calls declared, backends registered; None without
    libggml."""
    from .llama import llama_cpp

    llama_cpp.llama_backend_init()  # registers the backends (CPU, and CUDA in a CUDA build)
    candidates = [c for c in sorted(_llama_cpp_lib_dir().glob("libggml.*")) if c.name.split(".")[0] == "libggml"]
    if not candidates:
        return None
    reg = ctypes.CDLL(str(candidates[0]))
    reg.ggml_backend_dev_count.restype = ctypes.c_size_t
    reg.ggml_backend_dev_get.restype = ctypes.c_void_p
    reg.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    base = _lib()
    base.ggml_backend_dev_description.restype = ctypes.c_char_p
    base.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype = ctypes.c_int
    base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    return reg, base


@functools.lru_cache(maxsize=1)
def devices() -> tuple[tuple[str, str], ...]:
    """(type, description) of every device llama.cpp's ggml can run on, e.g. ("GPU", "NVIDIA H200")."""
    registry = _backend_registry()
    if registry is None:
        return ()
    reg, base = registry
    out = []
    for i in range(int(reg.ggml_backend_dev_count())):
        dev = reg.ggml_backend_dev_get(i)
        kind = int(base.ggml_backend_dev_type(dev))
        name = (base.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace").strip()
        out.append((DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else str(kind), name))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def cpu_extra_buffer_types() -> tuple[str, ...]:
    """Names of the CPU backend's extra weight buffer types (e.g. "CPU_REPACK", "AMX"): the repacked layouts
    llama.cpp loads weights into when `use_extra_bufts` is on (its default). Asked through ggml's public registry
    (`ggml_backend_dev_get_extra_bufts`), as llama.cpp itself does; () when the build has none."""
    registry = _backend_registry()
    if registry is None:
        return ()
    reg, base = registry
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)
    for i in range(int(reg.ggml_backend_dev_count())):
        dev = reg.ggml_backend_dev_get(i)
        if DEVICE_TYPES[int(base.ggml_backend_dev_type(dev))] != "CPU":
            continue
        address = base.ggml_backend_reg_get_proc_address(base.ggml_backend_dev_backend_reg(dev),
                                                         b"ggml_backend_dev_get_extra_bufts")
        if not address:
            return ()
        bufts = get_extra(address)(dev)
        names = []
        while bufts and bufts[len(names)]:
            names.append((base.ggml_backend_buft_name(bufts[len(names)]) or b"").decode("utf-8", "replace"))
        return tuple(names)
    return ()


def device_name(gpu: bool) -> str:
    """What runs a model: the first GPU's description when layers are offloaded, else "CPU: <description>"."""
    devs = devices()
    if gpu:
        names = [n for kind, n in devs if kind in ("GPU", "IGPU")]
        if names:
            return names[0]
    cpu = [n for kind, n in devs if kind == "CPU"]
    return f"CPU: {cpu[0]}" if cpu and cpu[0] else "CPU"


__all__ = [
    "DEVICE_TYPES", "GGML_MAX_DIMS", "GGML_MAX_NAME", "GGML_MAX_OP_PARAMS", "GGML_MAX_SRC", "GGML_OP_MUL_MAT",
    "GGML_OP_MUL_MAT_ID", "GGML_TENSOR_OFFSETS", "GGML_TENSOR_SIZE", "GGML_TYPE_F32", "GGML_TYPE_I32", "GgmlAbiError",
    "GgmlTensor", "block_size", "check_op_enums", "check_tensor_layout", "cpu_extra_buffer_types", "device_name",
    "devices", "element_size", "llama_quantize", "quantize_init", "quantize_rows", "requires_imatrix", "tensor_array",
    "tensor_at", "tensor_name", "tensor_nrows", "to_float", "type_name", "type_size", "validate_rows"
]
