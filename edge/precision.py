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

Training in fp16 still wants dynamic loss scaling (`torch.amp.GradScaler`; the LoRA weights
stay fp32, so it can unscale them): on the real 270M its default initial scale 2**16 overflowed
the fp16 gradients in the first 3 steps (skipped), then held at 2**13 (docs/BENCHMARKS.md).
On a CPU, fp16 matmuls run as fp32 GEMMs of fp16 values rounded to fp16 (what a GPU's tensor
cores compute): this CPU has no fast fp16 GEMM. The policy never picks fp16 on a CPU.
"""

from __future__ import annotations

import json as _json
import os
import platform
import time
from dataclasses import dataclass
from typing import Literal, get_args

from edge.errors import EdgeError
from edge.gemma3 import FP16_MAX

# One vocabulary of float type names for every flag that takes one: `--precision` (finetune,
# precision), `merge --dtype` and `export --outtype`. Canonical names first; the aliases are the
# other spellings in use (torch's names, llama.cpp's `--outtype f32`), accepted everywhere.
DType = Literal["bf16", "fp16", "fp32"]                    # the CLI offers these as choices (edge.cli)
PrecisionName = Literal["auto", "bf16", "fp16", "fp32"]   # --precision: a dtype, or `auto` (the policy below)
DTYPES = get_args(DType)
NAMES = get_args(PrecisionName)
ALIASES = {"float32": "fp32", "f32": "fp32", "float": "fp32",
           "float16": "fp16", "f16": "fp16", "half": "fp16",
           "bfloat16": "bf16"}


def dtype_name(name, flag: str = "--dtype", allowed: tuple[str, ...] = DTYPES) -> str:
    """The canonical name for `name` (any case, any alias), or one EdgeError naming `flag` and
    the names it takes."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in allowed:
        raise EdgeError(f"unknown {flag} {name!r}; use one of {', '.join(allowed)}")
    return key


def torch_dtype(name):
    """The torch dtype for a name of the vocabulary (a torch.dtype passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name(name)]


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


def _device_type(device) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        kind = str(device)
    if kind not in ("cpu", "cuda"):
        raise EdgeError(f"--device {device!r} is not supported; use cpu or cuda")
    return kind


def resolve(precision: str = "auto", device=None) -> Precision:
    """Turn a precision name and a device into a `Precision`; raise EdgeError on an unknown name.

    `auto`: bf16 on a CUDA GPU that has bfloat16 (compute capability >= 8.0); fp16 with the
    fixes on an fp16-only GPU (T4, V100, RTX 20xx); on the CPU, bf16 if it was measured
    faster than fp32 on this CPU, else fp32 (see `cpu_choice`).
    """
    name = dtype_name(precision or "auto", "--precision", NAMES)
    dev = _device_type(device)
    if name == "fp16":
        return Precision("fp16", torch_dtype("fp16"), True,
                         "forced --precision fp16: float16 weights with the Gemma 3 fp16 fixes "
                         "(fp32 residual stream, fp32 norms/softmax, fp16 matmuls)")
    if name in ("bf16", "fp32"):
        return Precision(name, torch_dtype(name), False, f"forced --precision {name}")
    # auto
    if dev == "cuda":
        import torch

        idx = torch.device(device).index if device is not None else None
        idx = torch.cuda.current_device() if idx is None else idx
        major, minor = torch.cuda.get_device_capability(idx)
        gpu = torch.cuda.get_device_name(idx)
        if major >= 8:
            return Precision("bf16", torch_dtype("bf16"), False,
                             f"auto: {gpu} (compute {major}.{minor}) has bfloat16")
        return Precision("fp16", torch_dtype("fp16"), True,
                         f"auto: {gpu} (compute {major}.{minor} < 8.0) has no bfloat16; "
                         "float16 with the Gemma 3 fp16 fixes")
    if dev == "cpu":
        c = cpu_choice()
        return Precision(c["choice"], torch_dtype(c["choice"]), False, "auto: " + c["reason"])
    return Precision("fp32", torch_dtype("fp32"), False, f"auto: fp32 on device type {dev!r} (no measured policy)")


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
    return {"cpu": model, "flags": has, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "bench": 2}  # bump when _time_step changes, so cached choices are re-measured


def _time_step(dtype, reps: int = 3) -> float:
    """Median seconds of a LoRA-like forward+backward in `dtype` through 270M-shaped layers:
    an MLP (640 -> 2048 -> 640) and a slice of the tied vocabulary head (640 -> 8,192), frozen
    weights, gradients to the input only (what LoRA training computes through the base)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    tokens, hidden, ffn, vocab = 256, 640, 2048, 8192
    w1 = torch.randn(ffn, hidden, dtype=dtype) * 0.02
    w2 = torch.randn(hidden, ffn, dtype=dtype) * 0.02
    head = torch.randn(vocab, hidden, dtype=dtype) * 0.02
    x0 = torch.randn(tokens, hidden, dtype=dtype)
    times = []
    for _ in range(reps + 1):
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        h = x + F.linear(F.gelu(F.linear(x, w1)), w2)
        F.linear(h, head).float().logsumexp(-1).mean().backward()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return times[len(times) // 2]


def _cache_file():
    from edge.fsutil import cache_dir

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
    t32 = _time_step(torch_dtype("fp32"))
    t16 = _time_step(torch_dtype("bf16"))
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
#
# Where each value lives after `apply_fp16_fixes` (lp = the weights' dtype, float16 here):
#
#   embedding lookup (lp) -> .float() * sqrt(hidden)                       -> residual stream fp32
#   input_layernorm / pre_feedforward_layernorm / final norm: fp32 math, clamp +-65504 -> lp
#   q/k/v/o, gate/up/down, lm_head: lp matmuls (tensor cores; peft LoRA layers wrap them as usual)
#   q_norm / k_norm, RoPE: fp32; q, k clamped -> lp for the attention kernel, whose softmax
#       runs in fp32 (eager upcasts it; the SDPA/flash kernels accumulate it in fp32)
#   GELU(gate) * up: fp32, clamped -> lp for down_proj
#   post_attention_layernorm / post_feedforward_layernorm: fp32 math, fp32 out -> residual add fp32
#   logits: .float() (what the loss wants)
#
# The residual stream is what overflows (103,795 measured on the real 270M, at the <bos> token);
# every branch input is an RMSNorm output or an fp32 product, so clamping at the casts keeps
# float16 finite without autocast. Source: ../shared/REFERENCE.md "Float16".

_FIXED = "_edge_fp16_fixed"
_TO_LP_NORMS = ("input_layernorm", "pre_feedforward_layernorm", "norm")  # feed a matmul
_FP32_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm", "q_norm", "k_norm")  # stay fp32


def _to_lp(x, lp):
    """Cast to the low-precision dtype, clamped to its finite range (no inf out of a cast)."""
    import torch

    if x.dtype == lp:
        return x
    big = torch.finfo(lp).max
    return x.clamp(-big, big).to(lp)


def _autograd_functions():
    """Two fused regions with hand-written backward passes, built on first use (torch import).

    They save only their 16-bit (or residual) inputs and recompute the fp32 intermediates in
    backward: naive fp32 regions kept 4 fp32 copies of every gate/up activation for backward
    (+10.5 GB peak on the 1B at 4 x 1024 tokens, measured on an H200).

    Their forwards make no in-place change and never return a tensor that is also another
    value inside them (`y.to(float32)` of a float32 `y` is `y` itself). torch 2.11's compiler
    turned such an alias into a second output of the traced Function, and the gradient of the
    real output went to that slot: compiled layers passed all-zero gradients to every LoRA
    weight (pytorch/pytorch#180642, fixed upstream by #180921; torch 2.13 trains either way;
    docs/BENCHMARKS.md, Fine-tune).
    """
    global _RMSNormFn, _GatedActFn
    if _RMSNormFn is not None:
        return
    import torch

    class RMSNormFn(torch.autograd.Function):
        """y = x * rsqrt(mean(x^2) + eps) * (1 + w) in fp32; clamped to lp's range when out is lp."""

        @staticmethod
        def forward(ctx, x, weight, eps, out_dtype):
            xf = x.float()
            r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            y = xf * r * (1.0 + weight.float())
            clamp = out_dtype != torch.float32
            if clamp:  # out of place, and no .to() that returns y itself: see _autograd_functions
                big = torch.finfo(out_dtype).max
                y = y.clamp(-big, big).to(out_dtype)
            ctx.save_for_backward(x, weight, r)
            ctx.clamp = clamp
            ctx.big = torch.finfo(out_dtype).max
            return y

        @staticmethod
        def backward(ctx, dy):
            x, weight, r = ctx.saved_tensors
            xhat = x.float() * r
            s = 1.0 + weight.float()
            dy = dy.float()
            if ctx.clamp:  # the clamp passes no gradient where it cut
                dy = dy.masked_fill((xhat * s).abs() > ctx.big, 0.0)
            dw = None
            if ctx.needs_input_grad[1]:
                dw = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0).to(weight.dtype)
            g = dy * s
            dx = r * (g - xhat * (g * xhat).mean(-1, keepdim=True))
            return dx.to(x.dtype), dw, None, None

    class GatedActFn(torch.autograd.Function):
        """act(gate) * up in fp32 from 16-bit gate/up, clamped and cast to lp for down_proj."""

        @staticmethod
        def forward(ctx, gate, up, approximate, act, lp):
            g, u = gate.float(), up.float()
            a = torch.nn.functional.gelu(g, approximate=approximate) if approximate else act(g)
            big = torch.finfo(lp).max
            y = (a * u).clamp(-big, big)
            ctx.save_for_backward(gate, up)
            ctx.approximate, ctx.act, ctx.big = approximate, act, big
            return y if y.dtype == lp else y.to(lp)

        @staticmethod
        def backward(ctx, dy):
            gate, up = ctx.saved_tensors
            dy = dy.float()
            if ctx.approximate:
                g, u = gate.float(), up.float()
                a = torch.nn.functional.gelu(g, approximate=ctx.approximate)
                dy = dy.masked_fill((a * u).abs() > ctx.big, 0.0)
                dgate = torch.ops.aten.gelu_backward(dy * u, g, approximate=ctx.approximate)
                dup = dy * a
            else:  # any other activation: let autograd differentiate it
                with torch.enable_grad():
                    g = gate.detach().float().requires_grad_(True)
                    u = up.detach().float().requires_grad_(True)
                    y = (ctx.act(g) * u).clamp(-ctx.big, ctx.big)
                    dgate, dup = torch.autograd.grad(y, (g, u), dy)
            return dgate.to(gate.dtype), dup.to(up.dtype), None, None, None

    _RMSNormFn, _GatedActFn = RMSNormFn, GatedActFn


_RMSNormFn = _GatedActFn = None
# transformers' modeling_gemma3, imported by apply_fp16_fixes: an import statement inside
# _attention_forward is a graph break for torch.compile (2.11: "Bad import result")
_MODELING_GEMMA3 = None
_GELU_APPROX = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def _norm_to_lp(self, x):
    return _RMSNormFn.apply(x, self.weight, self.eps, self._edge_lp)


def _norm_fp32(self, x):
    import torch

    return _RMSNormFn.apply(x, self.weight, self.eps, torch.float32)


def _embed_fp32(self, input_ids):
    import torch.nn.functional as F

    scale = getattr(self, "scalar_embed_scale", None)
    if scale is None:
        scale = self.embed_scale.float()
    return F.embedding(input_ids, self.weight, self.padding_idx).float() * scale


def _make_rope(orig):
    def _rope_fp32(self, x, *args, **kwargs):
        return orig(self, x.float(), *args, **kwargs)  # cos/sin come back in x's dtype: fp32
    return _rope_fp32


def _rotate_half(x):
    import torch

    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _mlp_forward(self, x):
    lp = self._edge_lp
    x = _to_lp(x, lp)
    approximate = _GELU_APPROX.get(getattr(self.config, "hidden_activation", None))
    h = _GatedActFn.apply(_to_lp(self.gate_proj(x), lp), _to_lp(self.up_proj(x), lp), approximate, self.act_fn, lp)
    return self.down_proj(h)


def _attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                       past_key_values=None, cache_position=None, cache=None, **kwargs):
    """Gemma3Attention.forward with explicit precision at each boundary (transformers 5.x)."""
    mg = _MODELING_GEMMA3
    lp = self._edge_lp
    cache = cache if cache is not None else past_key_values
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    h = _to_lp(hidden_states, lp)
    q = self.q_proj(h).view(hidden_shape).transpose(1, 2)
    k = self.k_proj(h).view(hidden_shape).transpose(1, 2)
    v = self.v_proj(h).view(hidden_shape).transpose(1, 2)
    q = self.q_norm(q)  # patched: fp32 out
    k = self.k_norm(k)
    cos, sin = position_embeddings
    cos, sin = cos.float().unsqueeze(1), sin.float().unsqueeze(1)
    q = q * cos + _rotate_half(q) * sin  # RoPE in fp32
    k = k * cos + _rotate_half(k) * sin
    q, k, v = _to_lp(q, lp), _to_lp(k, lp), _to_lp(v, lp)
    if cache is not None:
        cache_kwargs = {"sin": sin, "cos": cos, "cache_position": cache_position}
        k, v = cache.update(k, v, self.layer_idx, cache_kwargs)
    if cache_position is not None:
        kwargs["cache_position"] = cache_position
    attention = mg.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, mg.eager_attention_forward) \
        if hasattr(mg.ALL_ATTENTION_FUNCTIONS, "get_interface") else \
        (mg.eager_attention_forward if self.config._attn_implementation == "eager"
         else mg.ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation])
    out, weights = attention(self, q, k, v, attention_mask,
                             dropout=self.attention_dropout if self.training else 0.0,
                             scaling=self.scaling, sliding_window=self.sliding_window, **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()
    return self.o_proj(_to_lp(out, lp)), weights


def _logits_fp32(module, args, output):
    return output.float()


def _linear_lp(self, x, *args, **kwargs):
    """nn.Linear in the weights' dtype; on a CPU, computed as a tensor core does it.

    A GPU's fp16 tensor cores multiply fp16 inputs with fp32 accumulation and round the
    result to fp16. This CPU (no AVX512-FP16/AMX) has no fast fp16 GEMM: torch's fallback is
    6-400x slower than fp32 (measured: 100 s for one lm_head backward). So on a CPU the same
    arithmetic runs as an fp32 GEMM of the fp16 values, rounded to fp16 (inf on overflow, as
    on a GPU).
    """
    import torch.nn.functional as F

    w, b = self.weight, self.bias
    if x.device.type == "cpu" and w.dtype.itemsize == 2:
        out = F.linear(x.float(), w.float(), None if b is None else b.float())
        return out.to(w.dtype)
    return F.linear(x, w, b)


def emulate_fp16_matmuls_on_cpu(model):
    """Make the model's 16-bit nn.Linear layers compute on a CPU as a GPU's tensor cores do.

    Used by `apply_fp16_fixes` and by the benchmarks/tests for the naive fp16 model, so that
    both see the same matmul arithmetic. No effect on a GPU. Idempotent.
    """
    import types

    import torch

    for name, m in model.named_modules():
        if type(m) is torch.nn.Linear and m.weight.dtype in (torch.float16, torch.bfloat16) \
                and not getattr(m, "_edge_linear", False):
            m.forward = types.MethodType(_linear_lp, m)
            m._edge_linear = True
    return model


def apply_fp16_fixes(model):
    """Patch a Gemma 3 model so that float16 weights give finite outputs and gradients.

    Patches the forward methods of this model instance's Gemma 3 modules (embedding, RMSNorms,
    rotary embedding, attention, MLP) and makes the logits float32. Idempotent; works before
    or after `peft.get_peft_model` (LoRA layers wrap the projections, which are called as
    usual) and for backward. The weights keep their dtype: load the model in float16 first.
    The text tower of the multimodal class is patched the same way (vision tower untouched).
    The patched layers can be torch.compile'd (edge.finetune does so on a GPU); see
    `_autograd_functions` for the torch 2.11 pattern their Functions avoid.

    Returns the same model object.
    """
    import types

    from transformers.models.gemma3 import modeling_gemma3

    global _MODELING_GEMMA3
    if getattr(model, _FIXED, False):
        return model
    _MODELING_GEMMA3 = modeling_gemma3
    _autograd_functions()
    lp = None
    patched = {"norm": 0, "attention": 0, "mlp": 0, "embedding": 0, "rope": 0}
    for name, m in model.named_modules():
        cls = type(m).__name__
        if cls == "Gemma3TextScaledWordEmbedding":
            lp = m.weight.dtype if lp is None else lp
    if lp is None:
        raise EdgeError(f"apply_fp16_fixes: {type(model).__name__} has no Gemma 3 text embedding; "
                        "the float16 fixes are for Gemma 3 models only")
    lm_head = None
    for name, m in model.named_modules():
        cls = type(m).__name__
        short = name.rsplit(".", 1)[-1]
        if getattr(m, _FIXED, False):
            continue
        if cls == "Gemma3RMSNorm" or (cls.endswith("RMSNorm") and "gemma3" in type(m).__module__):
            if short in _FP32_NORMS:
                m.forward = types.MethodType(_norm_fp32, m)
            elif short in _TO_LP_NORMS:
                m.forward = types.MethodType(_norm_to_lp, m)
            else:
                continue  # e.g. a vision-tower norm: leave it alone
            patched["norm"] += 1
        elif cls == "Gemma3Attention":
            m.forward = types.MethodType(_attention_forward, m)
            patched["attention"] += 1
        elif cls == "Gemma3MLP":
            m.forward = types.MethodType(_mlp_forward, m)
            patched["mlp"] += 1
        elif cls == "Gemma3TextScaledWordEmbedding":
            m.forward = types.MethodType(_embed_fp32, m)
            patched["embedding"] += 1
        elif cls == "Gemma3RotaryEmbedding":
            m.forward = types.MethodType(_make_rope(type(m).forward), m)
            patched["rope"] += 1
        elif short == "lm_head" and lm_head is None:
            lm_head = m
            continue
        else:
            continue
        m._edge_lp = lp
        setattr(m, _FIXED, True)
    if not patched["attention"] or not patched["mlp"]:
        raise EdgeError(f"apply_fp16_fixes: no Gemma 3 attention/MLP layers found in {type(model).__name__} "
                        f"(found {patched}); is this a Gemma 3 model?")
    emulate_fp16_matmuls_on_cpu(model)
    if lm_head is not None and not getattr(lm_head, _FIXED, False):
        base = getattr(lm_head, "base_layer", lm_head)  # a peft wrapper keeps the base Linear
        base.register_forward_hook(_logits_fp32)
        setattr(lm_head, _FIXED, True)
        setattr(base, _FIXED, True)
    setattr(model, _FIXED, True)
    model._edge_fp16_patched = patched
    return model


def fixes_applied(model) -> bool:
    """True when `apply_fp16_fixes` has patched this model."""
    return any(getattr(m, _FIXED, False) and type(m).__name__ == "Gemma3Attention" for m in model.modules())


# --- CLI -----------------------------------------------------------------------------------------

def precision_cmd(*, precision: PrecisionName = "auto", device: str = "", json: bool = False):
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
