"""A loaded llama.cpp model and context, driven through llama-cpp-python's low-level API.

Everything that scores a model goes through `LlamaRunner`: tokenization, batched decoding over several sequence
ids, and logits requested only where they are used (copying every position's logits out costs more than the
forward pass on a GPU; see ../shared/notes/gpu.md). Logits come back as a zero-copy numpy view of llama.cpp's
output buffer, valid until the next decode.
"""

from __future__ import annotations

from ..native.llama import llama_cpp  # noqa: F401  (first: before numpy)

import collections
import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.errors import CerebellumError

_log_lock = threading.Lock()
_log_callback = None
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
LOG_LEVEL_ERROR = 4  # enum ggml_log_level: GGML_LOG_LEVEL_ERROR


def quiet_llama_logs() -> None:
    """Install (once per process) a log callback that keeps llama.cpp's last error lines for our own messages and
    prints nothing; CEREBELLUM_LLAMA_LOG=1 also echoes them to stderr."""
    global _log_callback
    with _log_lock:
        if _log_callback is not None:
            return

        @llama_cpp.llama_log_callback
        def _cb(level, text, user_data):  # pragma: no cover - called from C
            if level == LOG_LEVEL_ERROR:
                line = text.decode("utf-8", "replace").strip()
                if line:
                    _recent_errors.append(line)
                if os.environ.get("CEREBELLUM_LLAMA_LOG") == "1":
                    os.write(2, text)

        _log_callback = _cb
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _llama_says() -> str:
    """llama.cpp's own error lines since the last call (for messages), emptied."""
    lines = list(_recent_errors)
    _recent_errors.clear()
    return ("; llama.cpp: " + " / ".join(lines[-3:])) if lines else ""


def gpu_available() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload()) and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


def use_extra_buffers() -> bool:
    """Whether to let llama.cpp load CPU weights into its extra (repacked) buffer types, as it does by default.

    Not when the build has ggml's AMX buffer type (a native build on a CPU with AMX, such as Sapphire Rapids):
    with llama-cpp-python 0.3.36 its matrix multiply crashed the process (SIGSEGV in ggml_backend_amx_mul_mat) on
    K-quant models, Gemma 3 270M's Q4_K_M file among them, on an AMX Xeon of this project's machines. Weights then stay
    in ggml's plain CPU layout (the CPU_REPACK layouts are given up too: llama.cpp offers no per-type switch).
    CEREBELLUM_EXTRA_BUFFERS=1 turns them back on, =0 off everywhere."""
    choice = os.environ.get("CEREBELLUM_EXTRA_BUFFERS", "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    from ..native.ggml import cpu_extra_buffer_types

    return "AMX" not in cpu_extra_buffer_types()


def llama_tool_flags() -> list[str]:
    """Flags for llama.cpp's model-running tools (llama-perplexity, llama-imatrix) that give them the weight layout
    this runner uses: --no-repack where `use_extra_buffers()` is False."""
    return [] if use_extra_buffers() else ["--no-repack"]


def align_high_level_llama() -> None:
    """Make llama-cpp-python's high-level `llama_cpp.Llama` (which the tests and benchmarks use as an independent
    path) load weights in this runner's layout: its model parameters then carry `use_extra_buffers()`. Patches
    llama-cpp-python's own default-parameters function in this process; call it before creating a `Llama`."""
    import llama_cpp.llama_cpp as low

    default = getattr(low.llama_model_default_params, "_cerebellum_original", low.llama_model_default_params)

    def params():
        p = default()
        p.use_extra_bufts = use_extra_buffers()
        return p

    params._cerebellum_original = default
    low.llama_model_default_params = params


class LlamaError(CerebellumError):
    """llama.cpp refused a model, a context or a batch; the message says which and why."""


@dataclass(frozen=True)
class RunnerConfig:
    n_ctx: int = 512  # tokens per sequence
    n_seq: int = 1  # sequences decoded together (each has n_ctx positions)
    n_batch: int | None = None  # tokens per decode call (default n_ctx * n_seq)
    n_gpu_layers: int | None = None  # None: all layers when a GPU is visible, else 0
    n_threads: int | None = None
    kv_unified: bool = False  # True: one KV cache shared by all sequences (each token attends to all, masked)


MAX_CONTEXT = 1 << 24  # tokens per context: far beyond any model; larger values are typing mistakes


def _check_config(config: RunnerConfig) -> None:
    """Refuse settings llama.cpp would crash or fail on, before anything is loaded."""
    for name in ("n_ctx", "n_seq"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LlamaError(f"{name} must be a positive integer, got {value!r}")
    if config.n_ctx * config.n_seq > MAX_CONTEXT:
        raise LlamaError(f"a context of {config.n_ctx} x {config.n_seq} sequences = {config.n_ctx * config.n_seq} "
                         f"tokens is more than {MAX_CONTEXT}; use a smaller context")
    if config.n_batch is not None and config.n_batch < 1:
        raise LlamaError(f"n_batch must be a positive integer, got {config.n_batch!r}")


class _EvalCallback:
    """A Python function as llama.cpp's cb_eval. No exception may cross into C (ctypes would print it and return
    False, which stops the graph half-computed with no error): the first one is kept, every later call answers
    False at once, and `raise_error` raises it after llama_decode returns."""

    def __init__(self, fn: Callable[[int, bool], bool]):
        self.fn = fn
        self.error: BaseException | None = None
        self.c_func = llama_cpp.ggml_backend_sched_eval_callback(self._call)

    def _call(self, tensor, ask, user_data):  # called from C, on the thread that called llama_decode
        if self.error is not None:
            return False
        try:
            return bool(self.fn(tensor, bool(ask)))
        except BaseException as exc:  # noqa: BLE001 - SystemExit (SIGTERM) and KeyboardInterrupt too: all re-raised
            self.error = exc
            return False

    def raise_error(self, n_tokens: int) -> None:
        exc, self.error = self.error, None
        if exc is None:
            return
        if isinstance(exc, CerebellumError) or not isinstance(exc, Exception):
            raise exc  # already a one-line refusal, or an interruption
        raise LlamaError(f"the evaluation callback failed during llama_decode of a batch of {n_tokens} tokens "
                         f"({type(exc).__name__}: {exc}); the batch may not have been fully computed") from exc


class LlamaRunner:
    """One model + one context. Not thread-safe: use one runner per thread/process."""

    def __init__(self, model_path: str | os.PathLike, config: RunnerConfig = RunnerConfig(), *,
                 eval_callback: Callable[[int, bool], bool] | None = None, swa_full: bool | None = None):
        """`eval_callback(tensor_address, ask) -> bool` is installed as the context's cb_eval (ggml's scheduler
        callback: with ask=True, answer whether you want graph node `tensor_address`; then it is called again with
        ask=False once the node is computed; returning False there stops the graph). An exception inside it stops
        the graph and is raised by `decode`. `swa_full` overrides llama.cpp's default (True) for sliding-window
        caches (llama.cpp's command-line tools use False)."""
        self.model = self.ctx = self.batch = None  # what close() frees: set only once owned
        self._eval_cb = None
        _check_config(config)
        quiet_llama_logs()
        llama_cpp.llama_backend_init()
        self.config = config
        mparams = llama_cpp.llama_model_default_params()
        gpu_layers = config.n_gpu_layers
        if gpu_layers is None:
            gpu_layers = -1 if gpu_available() else 0
        mparams.n_gpu_layers = gpu_layers
        mparams.use_extra_bufts = use_extra_buffers()
        if not os.path.isfile(model_path):
            raise LlamaError(f"{model_path}: no such model file")
        _llama_says()
        model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not model:
            raise LlamaError(f"llama.cpp could not load {model_path}{_llama_says()}; check the file with "
                             "`cerebellum-ray inspect`")
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_batch = config.n_batch or config.n_ctx * config.n_seq
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = config.n_ctx * config.n_seq
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = min(self.n_batch, 512)
        cparams.n_seq_max = config.n_seq
        # default, one KV stream per sequence: a token attends only to its own sequence's cells, not to every cell
        # of every sequence under a mask (bench/RESULTS.md: 14 % more generation tokens/s on Gemma 3 270M at 8
        # sequences). llama.cpp then decodes a batch in one ubatch only while its sequence ids are consecutive: see
        # generate.py.
        cparams.kv_unified = config.kv_unified
        threads = config.n_threads or os.cpu_count() or 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        if swa_full is not None:
            cparams.swa_full = swa_full
        if eval_callback is not None:
            self._eval_cb = _EvalCallback(eval_callback)  # referenced for the context's whole life
            cparams.cb_eval = self._eval_cb.c_func
            cparams.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not ctx:
            self.close()  # frees the model once (close() is idempotent: a later close or __del__ frees nothing)
            raise LlamaError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {model_path}"
                             f"{_llama_says()}; use a smaller context")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, config.n_seq)
        self._bind_batch_views()
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.add_eos = bool(llama_cpp.llama_vocab_get_add_eos(self.vocab))
        self.gpu_layers = gpu_layers

    @property
    def device(self) -> str:
        """What runs this model: a GPU's name when layers are offloaded, else "CPU: ..." (stored with every trial)."""
        from ..native.ggml import device_name

        return device_name(self.gpu_layers != 0)

    # ---- text ----------------------------------------------------------------------------------------------------

    def tokenize(self, text: str | bytes, add_bos: bool = True, parse_special: bool = False) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else text
        n_max = len(data) + 16
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_bos, parse_special)
        if n < 0:
            raise LlamaError(f"tokenization needs {-n} tokens, more than the {n_max} allowed")
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32)

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; `special`: control tokens (BOS, turn markers) as their text, not empty."""
        token = int(token)
        cached = self._pieces.get((token, special))
        if cached is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)  # lstrip 0
            cached = self._pieces[token, special] = buf.raw[: max(n, 0)]
        return cached

    def detokenize(self, tokens) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, int(token)))

    # ---- decoding ------------------------------------------------------------------------------------------------

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)  # data too, not only the metadata

    def remove_sequence(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def move_sequence(self, src: int, dst: int) -> None:
        """Give sequence `src`'s cached tokens to sequence id `dst` (whose own are dropped); `src` ends empty."""
        llama_cpp.llama_memory_seq_rm(self.memory, dst, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        llama_cpp.llama_memory_seq_rm(self.memory, src, -1, -1)

    def decode(self, tokens, positions, seq_ids, want_logits) -> np.ndarray:
        """Decode one batch; returns logits (n_outputs, n_vocab) for the entries with want_logits, in order.

        The returned array is a view of llama.cpp's buffer: copy what must outlive the next decode.
        """
        n = len(tokens)
        if n > self.n_batch:
            raise LlamaError(f"batch of {n} tokens exceeds n_batch {self.n_batch}")
        self.batch.n_tokens = n
        self._tok[:n] = tokens
        self._pos[:n] = positions
        self._seq[:n] = seq_ids
        want = np.asarray(want_logits, dtype=bool)
        self._want[:n] = want
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if self._eval_cb is not None:
            self._eval_cb.raise_error(n)
        if rc != 0:
            raise LlamaError(f"llama_decode failed with code {rc} (batch of {n} tokens){_llama_says()}")
        n_out = int(want.sum())
        if n_out == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        ptr = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))

    def _bind_batch_views(self) -> None:
        """numpy views of the batch's arrays; every entry's seq_id pointer is aimed at one int32 array of ours,
        so a decode fills the whole batch with vectorized writes (the original pointers are restored on close)."""
        b, n = self.batch, self.n_batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(n,))
        self._want = np.ctypeslib.as_array(b.logits, shape=(n,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(n,))[:] = 1
        self._seq = np.zeros(n, dtype=np.int32)
        self._int_p = type(b.seq_id[0])
        # addresses as ints: indexing a ctypes pointer array returns a view that would follow the rewrite
        self._seq_ptrs_orig = [ctypes.cast(b.seq_id[i], ctypes.c_void_p).value for i in range(n)]
        base = self._seq.ctypes.data
        for i in range(n):
            b.seq_id[i] = ctypes.cast(base + 4 * i, self._int_p)

    def close(self) -> None:
        """Free the batch, the context and the model, each exactly once (safe to call again)."""
        if getattr(self, "batch", None) is not None:
            for i, addr in enumerate(self._seq_ptrs_orig):
                self.batch.seq_id[i] = ctypes.cast(addr, self._int_p)
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            llama_cpp.llama_model_free(self.model)
            self.model = None
        self._eval_cb = None  # only now: the context that could call it is gone

    def __enter__(self) -> LlamaRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


__all__ = [
    "LOG_LEVEL_ERROR", "LlamaError", "LlamaRunner", "MAX_CONTEXT", "RunnerConfig", "align_high_level_llama",
    "gpu_available", "llama_tool_flags", "quiet_llama_logs", "use_extra_buffers"
]
