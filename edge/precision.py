"""Precision policy and Gemma 3's float16 fixes.

Takes a precision name (`auto`, `bf16`, `fp16`, `fp32`) and a device; gives back a
`Precision` (the dtype to load the model in, whether the fp16 fixes are needed, and why).
`apply_fp16_fixes(model)` patches a Gemma 3 model loaded in float16 so that it stays finite
(the residual stream of the real 270M reaches 103,795; float16 stops at 65,504).

    edge precision                    # what `auto` picks here, and why
    edge precision --precision fp16 --json

    p = resolve("auto", "cuda")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=p.dtype)
    if p.fp16_fixes:
        model = apply_fp16_fixes(model)      # before or after peft.get_peft_model
"""

from __future__ import annotations

import json as _json
import os
import platform
import time
from dataclasses import asdict, dataclass

from edge.errors import EdgeError
from edge.gemma3 import FP16_MAX

NAMES = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Precision:
    """The precision a stage loads and computes the model in.

    Attributes:
        name: "bf16", "fp16" or "fp32".
        dtype: the torch dtype to load the weights in.
        fp16_fixes: True when the caller must call `apply_fp16_fixes(model)` after loading.
        reason: one line saying why this precision was chosen.
    """

    name: str
    dtype: object  # torch.dtype (kept untyped so importing this module stays light)
    fp16_fixes: bool
    reason: str


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _device_type(device) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def resolve(precision: str = "auto", device=None) -> Precision:
    """Turn a precision name and a device into a `Precision`; raise EdgeError on an unknown name.

    `auto`: bf16 on a CUDA GPU that has bfloat16 (compute capability >= 8.0); fp16 with the
    fixes on an fp16-only GPU (T4, V100, RTX 20xx); on the CPU, bf16 if it was measured
    faster than fp32 on this CPU, else fp32 (see `cpu_choice`).
    """
    name = (precision or "auto").strip().lower()
    name = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(name, name)
    if name not in NAMES:
        raise EdgeError(f"unknown precision {precision!r}; use one of {', '.join(NAMES)}")
    dev = _device_type(device)
    if name == "fp16":
        return Precision("fp16", _dtype("fp16"), True,
                         "forced --precision fp16: float16 weights with the Gemma 3 fp16 fixes "
                         "(fp32 residual stream, fp32 norms/softmax, fp16 matmuls)")
    if name in ("bf16", "fp32"):
        return Precision(name, _dtype(name), False, f"forced --precision {name}")
    # auto
    if dev == "cuda":
        import torch

        idx = torch.device(device).index if device is not None else None
        idx = torch.cuda.current_device() if idx is None else idx
        major, minor = torch.cuda.get_device_capability(idx)
        gpu = torch.cuda.get_device_name(idx)
        if major >= 8:
            return Precision("bf16", _dtype("bf16"), False,
                             f"auto: {gpu} (compute {major}.{minor}) has bfloat16")
        return Precision("fp16", _dtype("fp16"), True,
                         f"auto: {gpu} (compute {major}.{minor} < 8.0) has no bfloat16; "
                         "float16 with the Gemma 3 fp16 fixes")
    if dev == "cpu":
        c = cpu_choice()
        return Precision(c["choice"], _dtype(c["choice"]), False, "auto: " + c["reason"])
    return Precision("fp32", _dtype("fp32"), False, f"auto: fp32 on device type {dev!r} (no measured policy)")


# --- CPU: bf16 or fp32 -------------------------------------------------------------------------

def _cpu_key() -> dict:
    import torch

    model = platform.processor() or ""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not model and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    has = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f" {f}" in flags]
    return {"cpu": model, "flags": has, "torch": torch.__version__, "threads": torch.get_num_threads()}


def _time_step(dtype, reps: int = 3) -> float:
    """Median seconds of a LoRA-like forward+backward through 270M-shaped linears in `dtype`."""
    import torch

    torch.manual_seed(0)
    tokens, hidden, ffn = 256, 640, 2048
    w1 = torch.randn(ffn, hidden, dtype=dtype) * 0.02
    w2 = torch.randn(hidden, ffn, dtype=dtype) * 0.02
    x0 = torch.randn(tokens, hidden, dtype=dtype)
    times = []
    for _ in range(reps + 1):
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        y = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, w1)), w2)
        y.float().square().mean().backward()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return times[len(times) // 2]


def _cache_file():
    from edge.models import cache_dir

    return cache_dir() / "precision_cpu.json"


def cpu_choice(remeasure: bool = False) -> dict:
    """bf16 or fp32 on this CPU: measured once (about a second), cached under the edge cache.

    bf16 is taken only when it is faster. Its accuracy was measured on the real 270M (see
    docs/BENCHMARKS.md, Precision): bf16 weights are accurate enough for LoRA fine-tuning;
    the measurement here decides speed.
    """
    key = _cpu_key()
    path = _cache_file()
    if not remeasure and path.is_file():
        try:
            data = _json.loads(path.read_text())
            if data.get("key") == key:
                return data
        except (OSError, ValueError):
            pass
    t32 = _time_step(_dtype("fp32"))
    t16 = _time_step(_dtype("bf16"))
    faster = t16 < t32 * 0.9  # a clear margin: the CPU is shared and timings are noisy
    choice = "bf16" if faster else "fp32"
    reason = (f"CPU {key['cpu']!r}: bf16 step {t16 * 1e3:.1f} ms vs fp32 {t32 * 1e3:.1f} ms "
              f"({t32 / t16:.2f}x) -> {choice}")
    data = {"key": key, "fp32_ms": round(t32 * 1e3, 2), "bf16_ms": round(t16 * 1e3, 2),
            "choice": choice, "reason": reason, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return data


# --- the float16 fixes -------------------------------------------------------------------------

def apply_fp16_fixes(model):
    """Patch a Gemma 3 model (weights in float16) so that it stays finite; idempotent."""
    raise NotImplementedError("apply_fp16_fixes: being written (issue 3)")


# --- CLI -----------------------------------------------------------------------------------------

def precision_cmd(*, precision: str = "auto", device: str = "", json: bool = False):
    """Show which precision `auto` (or a forced name) picks on this machine, and why.

    Args:
        precision: auto, bf16, fp16 or fp32.
        device: cpu or cuda (default: cuda if present, else cpu).
        json: print the result as JSON.
    """
    p = resolve(precision, device or None)
    out = {"precision": p.name, "dtype": str(p.dtype).replace("torch.", ""), "fp16_fixes": p.fp16_fixes,
           "reason": p.reason, "device": _device_type(device or None)}
    if out["device"] == "cpu":
        c = cpu_choice()
        out["cpu_measurement"] = {k: c[k] for k in ("fp32_ms", "bf16_ms", "choice", "measured_at")}
    if not json:
        print(f"precision: {p.name} ({out['dtype']}{', with fp16 fixes' if p.fp16_fixes else ''})")
        print(f"why: {p.reason}")
    return out
