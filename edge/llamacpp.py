"""Opening a GGUF with llama.cpp: the one place in the tree that does (chat, scoring, the budget's RSS child).

    from edge.llamacpp import open_llama, Model
    llm = open_llama("m-XL6.2-Q8_0.gguf", n_ctx=2048)        # llama-cpp-python's `Llama`: sampling, chat
    with Model("m-XL6.2-Q8_0.gguf") as m, m.context(n_ctx=512, n_seq=4) as ctx:   # logits, for scoring
        ids = m.tokenize(b"Hello", add_bos=True)
        logits = ctx.decode([(0, ids, [len(ids) - 1])])   # (rows, n_vocab), in the order asked

Both check the file with the GGUF header reader first (a one-line error for a truncated or
non-GGUF file, before llama.cpp sees it) and use `threads()` unless told otherwise.

- `open_llama`: the high-level `Llama` (generation with sampling, `create_completion`), with
  llama.cpp's loading log hidden; keyword arguments go to `Llama` as they are.
- `Model`: llama.cpp's low-level C bindings (`llama_cpp.llama_*`), called deliberately, with no
  private attribute of `Llama` (its `_ctx`, `_batch` change between releases): the weights and vocabulary (`llama_model_load_from_file`), tokenize/detokenize.
- `Context`: one `llama_context` with a `llama_batch`; `decode` takes several sequences at
  once (each its own `seq_id`, positions from 0 or from where it stopped) and returns the
  logits of the positions asked for, only those going through the output head.
- `captured_log()`: routes llama.cpp's log into a list while it is open and restores the
  previous callback after (`llama_log_get` / `llama_log_set`).

Tested in tests/test_evaluate.py (the logits of chosen rows equal those of a full decode;
several sequences in one decode equal one decode each).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

_LOG_LOCK = threading.RLock()


def lib():
    """The `llama_cpp` module (its ctypes bindings), or a clear error."""
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - the set-up installs it
        raise EdgeError(f"llama-cpp-python is not importable ({e}); run the README's set-up") from None
    return llama_cpp


_THREADS: tuple[float, int] | None = None   # (when measured, threads): measured at most every THREADS_TTL s
THREADS_TTL = 10.0


def idle_cores(window: float = 0.1) -> float | None:
    """How many cores are idle right now: the idle share of /proc/stat's CPU time over `window`
    seconds, times the cores; None where /proc/stat is not there."""
    import time

    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])      # idle + iowait, user..steal

    try:
        i0, t0 = sample()
        time.sleep(window)
        i1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (i1 - i0) / max(1, t1 - t0)


def threads() -> int:
    """Threads for llama.cpp: the cores idle right now (at least 1). `EDGE_THREADS` overrides.

    llama.cpp's worker threads spin while they wait for each other; on a CPU shared with other
    work that turns into a convoy (measured here at load 13 on 2 cores: 2 threads decoded
    0.36 tok/s, 1 thread 4.1 tok/s). Idle cores are measured now (/proc/stat over 0.1 s, kept
    for 10 s), not from the load average: that lags by a minute and counts this process's own
    work just before (after a fine-tune on 2 cores it said 2 busy, and scoring ran on 1 of 2
    idle cores). Without /proc/stat: the load average.
    """
    global _THREADS
    import time

    if os.environ.get("EDGE_THREADS"):
        return max(1, int(os.environ["EDGE_THREADS"]))
    now = time.monotonic()
    if _THREADS is not None and now - _THREADS[0] < THREADS_TTL:
        return _THREADS[1]
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    idle = idle_cores()
    if idle is None:
        try:
            idle = n - os.getloadavg()[0]
        except OSError:  # not available on this platform
            idle = n
    _THREADS = (now, max(1, min(n, round(idle))))
    return _THREADS[1]


@contextmanager
def captured_log():
    """Collect llama.cpp's log lines into a list (not printed) inside the block."""
    L = lib()
    lines: list[str] = []

    @L.llama_log_callback
    def _cb(level, text, user_data):  # noqa: ARG001 - ctypes signature
        lines.append(text.decode("utf-8", "replace"))

    with _LOG_LOCK:
        prev_cb, prev_ud = L.llama_log_callback(), ctypes.c_void_p()
        L.llama_log_get(ctypes.byref(prev_cb), ctypes.byref(prev_ud))
        L.llama_log_set(_cb, ctypes.c_void_p(0))
        try:
            yield lines
        finally:
            L.llama_log_set(prev_cb, prev_ud)


def check_gguf(path: str | Path) -> Path:
    """`path`, after the GGUF header reader accepted it (not found, truncated, not a GGUF, a
    version llama.cpp cannot read: one EdgeError naming the file)."""
    from edge.ggufinfo import read_gguf

    read_gguf(path)
    return Path(path)


@contextmanager
def quiet_stderr():
    """llama.cpp logs model loading on fd 2 even with verbose=False; hide it inside the block."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def open_llama(path: str | Path, n_ctx: int = 2048, n_threads: int = 0, **kw):
    """llama-cpp-python's `Llama` for a checked GGUF (generation with sampling: `edge chat`, the
    budget's RSS measurement). `n_threads` 0: `threads()`; `kw` (logits_all, n_batch, type_k, ...)
    go to `Llama` as they are."""
    path = check_gguf(path)
    lib()   # a clear error when llama-cpp-python is missing
    from llama_cpp import Llama

    n = n_threads or threads()
    with quiet_stderr():
        try:
            return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n, n_threads_batch=n,
                         **{"verbose": False, **kw})
        except ValueError as e:  # llama-cpp-python raises ValueError when llama.cpp refuses the file
            raise EdgeError(f"llama.cpp cannot load {path} ({e}); re-export it") from None


class Model:
    """A GGUF's weights and vocabulary, loaded on the CPU (mmap), for its logits."""

    def __init__(self, path: str | Path, vocab_only: bool = False):
        L = lib()
        self.path = check_gguf(path)
        params = L.llama_model_default_params()
        params.vocab_only = bool(vocab_only)
        with captured_log() as log:
            self.model = L.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            why = next((ln.strip() for ln in reversed(log) if "error" in ln.lower() or "failed" in ln.lower()), "")
            raise EdgeError(f"llama.cpp cannot load {self.path}{': ' + why if why else ''}; is it a complete GGUF?")
        self.load_log = "".join(log)     # llama.cpp's loading log (buffer sizes: quantize.repack.logged_buffers)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self._contexts: list[Context] = []

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of UTF-8 `text`; `special`: spell `<start_of_turn>` etc. as their special tokens."""
        L = lib()
        cap = len(text) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, text, len(text), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, text, len(text), buf, cap, add_bos, special)
        return list(buf[:n])

    def detokenize(self, tokens, special: bool = False) -> bytes:
        """The UTF-8 bytes of `tokens`' pieces, concatenated."""
        L = lib()
        out, size = [], 64
        buf = ctypes.create_string_buffer(size)
        for t in tokens:
            n = L.llama_token_to_piece(self.vocab, int(t), buf, size, 0, special)
            if n < 0:
                size = -n
                buf = ctypes.create_string_buffer(size)
                n = L.llama_token_to_piece(self.vocab, int(t), buf, size, 0, special)
            out.append(buf.raw[:n])
        return b"".join(out)

    def context(self, n_ctx: int, n_seq: int = 1, n_batch: int | None = None, n_outputs: int | None = None,
                n_threads: int | None = None) -> "Context":
        ctx = Context(self, n_ctx, n_seq, n_batch or n_ctx, n_outputs, n_threads)
        self._contexts.append(ctx)
        return ctx

    def close(self) -> None:
        for c in self._contexts:
            c.close()
        self._contexts = []
        if self.model:
            with captured_log():
                lib().llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Context:
    """A `llama_context` of `n_ctx` cells shared by up to `n_seq` sequences (a unified KV cache),
    decoding at most `n_batch` tokens per `llama_decode`."""

    def __init__(self, model: Model, n_ctx: int, n_seq: int, n_batch: int, n_outputs: int | None,
                 n_threads: int | None):
        L = lib()
        self.model, self.n_batch, self.n_seq = model, int(n_batch), int(n_seq)
        p = L.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = int(n_ctx), self.n_batch, self.n_batch, self.n_seq
        p.n_outputs_max = int(n_outputs or self.n_batch)  # the logits buffer: n_outputs x n_vocab floats
        p.kv_unified = True
        p.no_perf = True
        # no flash attention, as llama-cpp-python's `Llama` defaults: its CPU kernel accumulates in
        # F16 and moved the KLD of the same files by 1-8% (0.00245 vs 0.00243 for a Q8_0 270M)
        p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.n_threads = p.n_threads_batch = int(n_threads or threads())
        with captured_log() as log:
            self.ctx = L.llama_init_from_model(model.model, p)
        if not self.ctx:
            raise EdgeError(f"llama.cpp cannot make a context for {model.path} (n_ctx {n_ctx}): "
                            + "".join(log[-2:]).strip())
        self.n_outputs = p.n_outputs_max
        self.batch = L.llama_batch_init(self.n_batch, 0, self.n_seq)
        self._pos = {}

    def clear(self) -> None:
        """Forget every sequence (the KV cache's cells and data)."""
        lib().llama_memory_clear(lib().llama_get_memory(self.ctx), True)

    def decode(self, seqs) -> np.ndarray:
        """One `llama_decode` of several sequences: `seqs` is [(seq_id, tokens, rows, pos0)] (pos0
        optional, default 0); returns the logits of each sequence's `rows` (indices into its
        tokens), concatenated in the order given, as a (n_rows, n_vocab) float32 view valid until
        the next decode."""
        L = lib()
        b = self.batch
        n = 0
        n_out = 0
        for item in seqs:
            s, toks, rows = item[0], item[1], item[2]
            pos0 = item[3] if len(item) > 3 else 0
            k = len(toks)
            if n + k > self.n_batch:
                raise EdgeError(f"internal: {n + k} tokens in one decode, more than n_batch {self.n_batch}")
            for i, t in enumerate(toks):
                j = n + i
                b.token[j] = int(t)
                b.pos[j] = pos0 + i
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = int(s)
                b.logits[j] = 0
            for r in rows:
                b.logits[n + int(r)] = 1
            n_out += len(rows)
            n += k
        if n_out > self.n_outputs:
            raise EdgeError(f"internal: {n_out} logit rows in one decode, more than n_outputs {self.n_outputs}")
        b.n_tokens = n
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise EdgeError(f"llama_decode failed (code {rc}) on {n} tokens of {self.model.path.name}")
        if not n_out:
            return np.empty((0, self.model.n_vocab), np.float32)
        ptr = L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.model.n_vocab))

    def close(self) -> None:
        L = lib()
        if self.ctx:
            with captured_log():   # llama.cpp logs its buffer sizes when a context is freed
                L.llama_batch_free(self.batch)
                L.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
