"""The bridge to llama.cpp's quantizer, through llama-cpp-python's ctypes bindings.

    from quantize.llama import quantize_file
    quantize_file("ref-F32.gguf", "out-Q4_K_XL.gguf", ftype=gguf.LlamaFileType.MOSTLY_Q4_K_M,
                  overrides=[("^token_embd\\.weight$", gguf.GGMLQuantizationType.Q8_0)],
                  imatrix={"blk.0.ffn_down.weight": np.ones(2048, np.float32)})

No quantization kernels live here: `llama_model_quantize` does the work, multi-threaded.
We only fill its parameter struct (llama.h, `llama_model_quantize_params`):

- `tt_overrides`: an array of `{pattern, type}` ending with a NULL pattern; llama.cpp
  `std::regex_search`es each tensor name against each pattern. Our recipes resolve every tensor
  in Python first and pass one anchored pattern per tensor, so llama.cpp's match order (first
  or last match, which changed between versions) never matters.
- `imatrix`: an array of `{name, float *data, size}` ending with a NULL name; `size` is the
  tensor's row length (ne[0]); the values are mean squared input activations.

The output is written under a temporary name and renamed when llama.cpp returns success.
llama.cpp's log lines are captured (not printed) and returned, so callers can report the
"required fallback quantization" count or show the log when something fails.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError
from edge.fsutil import atomic_path
from edge.llamacpp import captured_log, lib


@dataclass
class QuantizeResult:
    """What one llama.cpp quantize call produced."""

    path: Path
    seconds: float
    size_bytes: int
    n_fallback: int = 0
    log: list[str] = field(default_factory=list)


def _override_array(overrides):
    llama_cpp = lib()
    arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
    keep = []
    for i, (pattern, qtype) in enumerate(overrides):
        b = ctypes.c_char_p(pattern.encode())
        keep.append(b)
        arr[i].pattern = b.value
        arr[i].type = int(qtype)
    arr[len(overrides)].pattern = None
    arr[len(overrides)].type = 0
    return arr, keep


def _imatrix_array(imatrix: dict[str, np.ndarray]):
    llama_cpp = lib()
    arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    keep = []
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(v)) or (v < 0).any():
            raise EdgeError(f"importance matrix entry {name!r} has negative or non-finite values; "
                            "recompute it with `edge imatrix`")
        keep.append(v)
        arr[i].name = name.encode()
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(imatrix)].name = None
    return arr, keep


def quantize_file(src: str | Path, dst: str | Path, *, ftype: int, overrides=(), imatrix: dict | None = None,
                  nthread: int = 0, allow_requantize: bool = False, pure: bool = False,
                  force: bool = True) -> QuantizeResult:
    """Quantize GGUF `src` into `dst` with llama.cpp. `overrides`: [(regex, GGMLQuantizationType)].

    Raises EdgeError when llama.cpp refuses (the last log line says why).
    """
    llama_cpp = lib()
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise EdgeError(f"GGUF {src} not found; give the reference GGUF from `edge export`")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = int(nthread) if nthread else (os.cpu_count() or 1)
    params.ftype = int(ftype)
    params.allow_requantize = bool(allow_requantize)
    params.pure = bool(pure)
    ov_arr = im_arr = None
    keep: list = []
    if overrides:
        ov_arr, k = _override_array(list(overrides))
        keep += k
        params.tt_overrides = ctypes.cast(ov_arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if imatrix:
        im_arr, k = _imatrix_array(imatrix)
        keep += k
        params.imatrix = ctypes.cast(im_arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    t0 = time.perf_counter()
    with atomic_path(dst, force=force) as tmp, captured_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            lines = [ln.strip() for ln in "".join(log).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if "error" in ln.lower() or "failed" in ln.lower()),
                       lines[-1] if lines else "no log")
            raise EdgeError(f"llama.cpp could not quantize {src.name} -> {dst.name} (code {rc}): {why}")
    seconds = time.perf_counter() - t0
    del keep, ov_arr, im_arr
    m = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", "".join(log))
    return QuantizeResult(path=dst, seconds=seconds, size_bytes=dst.stat().st_size,
                          n_fallback=int(m.group(1)) if m else 0, log=log)
