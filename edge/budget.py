"""Will this GGUF run on that phone? RAM, speed and heat, from the file's own metadata.

Takes a GGUF (any Gemma 3 variant) and a device (a profile from edge.profiles, a live
phone over adb, or this machine) and answers with numbers: bytes of RAM by part, the largest
n_ctx that fits, decode tokens/s, what the phone can hold for minutes, and a verdict
(fits / tight / does not fit) next to what PocketPal's and AnythingLLM's own rules say.

    edge profiles
    edge budget model.gguf --device pixel_7 --ctx 8192
    edge budget model.gguf --host --json          # total_bytes and its parts
    python bench/budget.py                        # measured RSS (bench/rss.py) vs ours vs the apps' rules

Python API (what the TUI calls):
    edge.profiles.load_profiles() -> dict[str, Profile]   read + validate edge/profiles/*.toml
    edge.modelinfo.model_info(path) -> ModelInfo  metadata and tensor sizes (header only)
    estimate(path, ctx=4096, ubatch=512, kv_type="f16", swa_full=True) -> Estimate
    verdict(path, device, ctx=..., ...) -> Verdict   device: Profile | DeviceState | name
    matrix(paths, devices, ...) -> list[Verdict]
    recommend(paths, device, report=None, ...) -> Recommendation

Phone speed and heat: edge.phonespeed; the apps' own fit rules and storage: edge.apps.

Memory model (all formulas name their reference):
- weights: the tensor data, resident because llama.cpp maps the file with MAP_POPULATE and
  unmaps only the metadata head (llama-mmap.cpp, llama-model-loader.cpp `unmap_fragment`);
  plus the CPU_REPACK copy of the matrices llama.cpp repacks on that CPU (quantize/repack.py,
  per tensor; on an ARM phone with dotprod/i8mm that includes Q8_0, Q6_K and a tied head).
- KV cache: per layer, cells x n_head_kv x (key_length x bytes(type_k) + value_length x
  bytes(type_v)); cells = n_ctx on global layers, and on sliding-window layers n_ctx when the
  SWA cache is kept full size (llama-cpp-python's default) or min(n_ctx, window + n_ubatch)
  padded to 256 (llama-kv-cache-iswa.cpp). Gemma 3: layer il is global when il % 6 == 5
  (edge.gemma3), read from the file's block count and sliding window.
- compute: the part of llama.cpp's reserved compute buffer a chat actually touches: the
  attention scores of one ubatch against the whole context, n_ctx x n_ubatch x n_head x 4 B
  without flash attention, plus one row of logits. Reported separately as `compute_bytes`.
- overhead: the process and llama.cpp runtime, plus the vocabulary tables; calibrated on this
  machine against llama-cpp-python (HOST_CALIBRATION below, re-measured by bench/budget.py).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from edge.apps import anythingllm_rule, pocketpal_rule, storage_verdicts
from edge.errors import EdgeError
from edge.modelinfo import ModelInfo, model_info, read_models
from edge.phonespeed import ESTIMATED_BANDWIDTH, PROMPT_SPEED, phone_speed
from edge.profiles import (DEFAULT_DEVICES, Profile, by_tier, get_profile, load_profiles, match_profile,
                           usable_bytes_for)
from edge.texttable import text_table
from quantize import repack

MIB = 1 << 20

# ---- facts and calibration --------------------------------------------------------------
# KV cache element sizes (ggml type sizes: f16 2 B; q8_0 34 B per 32; q4_0 18 B per 32).
KV_BYTES: dict[str, float] = {"f16": 2.0, "bf16": 2.0, "f32": 4.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
                              "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}
KvType = Literal[tuple(KV_BYTES)]  # --kv-type: llama.cpp's cache type names (edge.cli checks them while parsing)
KV_PAD = 256          # llama.cpp pads the KV cache size to 256 cells

# llama.cpp's CPU backend copies some weight matrices into an interleaved "CPU_REPACK" buffer at
# load time, while the mmapped file stays resident: those matrices count twice in RSS. Which ones
# (per tensor: type, row count, CPU features; the tied head as the output head) is one rule,
# quantize/repack.py, from ggml-cpu/repack.cpp (measured here: pure Q4_0 270M, CPU_Mapped
# 144.00 MiB + CPU_REPACK 143.79 MiB; Q4_K_M, 12.66 MiB of Q4_K repacked).


@functools.lru_cache(maxsize=1)
def host_features() -> tuple[str, ...]:
    try:
        from edge.readings import parse_cpuinfo

        with open("/proc/cpuinfo") as f:
            return tuple(parse_cpuinfo(f.read())["features"])
    except OSError:
        return ()

# Calibrated on the project machine (2-core x86_64, AVX2, llama-cpp-python 0.3.36) against the
# RSS grid of bench/budget.py; see docs/BENCHMARKS.md "Budget". Re-run the bench to refresh.
HOST_CALIBRATION = {
    # RSS of a Python process with llama_cpp imported and a model loaded, beyond weights
    # (incl. repacked copies), KV, compute and vocabulary: interpreter, numpy, ggml/llama
    # libraries, thread pools, per-cell bookkeeping. Least-squares fit over n_ctx 512..32768 of
    # the residual on the 270M Q4_K_M and Q8_0 (Q4_0 and F16 held out): 75.6 MB + 249 B/token.
    "runtime_bytes": 75_600_000,
    "runtime_bytes_per_ctx": 249,
    # llama.cpp's vocabulary tables (token text, scores, types, lookup maps), per token. An
    # assumption (~80 B/token): every file measured has the same 262,144-token vocabulary, so
    # the fit above cannot separate it from the runtime.
    "vocab_bytes_per_token": 80,
    # effective bandwidth llama.cpp decode reaches here, bytes read per token x tokens/s, from
    # REFERENCE.md's quiet-machine runs (2 threads, n_ctx 512): Q4_K_M 71 tok/s x 247 MB =
    # 17.5 GB/s, Q8_0 66 x 285 MB = 18.8 GB/s, Q4_0 144 x 151 MB = 21.7 GB/s; median 18.8.
    # (Our own runs were on a CPU shared by 8+ processes and are compute-starved; see BENCHMARKS.)
    "decode_bandwidth_gbs": 18.8,
    # streaming read bandwidth here, one thread (REFERENCE.md: about 28 GB/s).
    "stream_bandwidth_gbs": 28.0,
}
# On a phone, llama.rn runs inside the app's own process: its Java/React Native runtime is
# extra. Estimate (not measured here): a React Native app at rest holds roughly 150-250 MB
# of PSS; we take 200 MiB.
PHONE_APP_RUNTIME_BYTES = 200 * MIB

FIT_HEADROOM = 0.80      # fits: needs <= 80 % of what the app can use; tight: <= 100 %


# ---- the estimate -----------------------------------------------------------------------
@dataclass
class Estimate:
    """RAM (bytes, by part) and decode speed of one GGUF at one setting, on the llama.cpp CPU path."""

    path: str
    ctx: int
    ubatch: int
    kv_type: str
    swa_full: bool
    weights_bytes: int            # incl. repacked_bytes
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int
    file_bytes: int
    bytes_per_token: int          # read per generated token at an empty context
    bytes_per_token_full: int     # ... with the context full
    kv_cells: list[int]           # per layer
    repacked_bytes: int = 0       # second copy of weights llama.cpp repacks on this CPU
    flash_attn: bool = False
    notes: list[str] = field(default_factory=list)

    def tokens_per_s(self, bandwidth_gbs: float, full: bool = False) -> float:
        b = self.bytes_per_token_full if full else self.bytes_per_token
        return bandwidth_gbs * 1e9 / b


def check_setting(ctx: int, ubatch: int, kv_type: str) -> None:
    if not isinstance(ctx, int) or ctx < 1:
        raise EdgeError(f"--ctx {ctx!r} must be a positive number of tokens, e.g. 4096")
    if not isinstance(ubatch, int) or ubatch < 1:
        raise EdgeError(f"--ubatch {ubatch!r} must be a positive number of tokens, e.g. 512")
    if kv_type not in KV_BYTES:
        raise EdgeError(f"--kv-type {kv_type!r} is not a KV cache type; use one of {', '.join(KV_BYTES)}")


def kv_cells(info: ModelInfo, ctx: int, ubatch: int = 512, swa_full: bool = True, n_seq: int = 1) -> list[int]:
    """KV cells per layer (llama-kv-cache-iswa.cpp): n_ctx, or the sliding-window size."""
    n = -(-ctx // KV_PAD) * KV_PAD
    glob = set(info.global_layers())
    if swa_full or not info.sliding_window:
        return [n] * info.n_layers
    swa = min(n, -(-(info.sliding_window * n_seq + ubatch) // KV_PAD) * KV_PAD)
    return [n if il in glob else swa for il in range(info.n_layers)]


def estimate(path: str | Path | ModelInfo, *, ctx: int = 4096, ubatch: int = 512, kv_type: str = "f16",
             swa_full: bool = True, runtime_bytes: int | None = None,
             flash_attn: bool = False, cpu_features=None) -> Estimate:
    """Estimate RSS of llama.cpp (CPU) running this GGUF at n_ctx `ctx`.

    `runtime_bytes` is the process's own footprint (default: a Python process with
    llama-cpp-python, calibrated here; a phone app adds PHONE_APP_RUNTIME_BYTES).
    `cpu_features` (cpuinfo flags; default: this machine's) decide which weights llama.cpp
    repacks into a second copy (quantize/repack.py, per tensor).
    """
    info = path if isinstance(path, ModelInfo) else model_info(path)
    check_setting(ctx, ubatch, kv_type)
    notes = []
    if info.context_length and ctx > info.context_length:
        notes.append(f"n_ctx {ctx} is above the model's trained context {info.context_length}")
    cells = kv_cells(info, ctx, ubatch, swa_full)
    per_cell = info.n_head_kv * (info.key_length + info.value_length) * KV_BYTES[kv_type]
    kv = int(sum(cells) * per_cell)
    # weights resident: all tensor data (the metadata head is unmapped after load), plus the
    # repacked copy of the matrices this CPU repacks
    features = repack.features_of(host_features() if cpu_features is None else cpu_features)
    repacked = repack.repacked_bytes(info.tensors, features)
    weights = info.tensor_bytes + repacked
    if repacked:
        kinds = sorted({k.split()[0] for k in repack.repacked(info.tensors, features).values()})
        notes.append(f"llama.cpp repacks {', '.join(kinds)} weights on this CPU: {repacked / 1e6:.0f} MB more")
    # compute actually touched in a chat: one ubatch of attention scores against the context
    # (no flash attention: f32 n_kv x n_ubatch x n_head) + one logits row + activations
    ub = min(ubatch, ctx)
    if kv_type not in ("f16", "bf16", "f32"):
        flash_attn = True      # llama.cpp needs flash attention for a quantized V cache
    if flash_attn:
        scores = 0
    else:
        scores = ub * ub * info.n_head * 4     # a first prompt of one ubatch: n_kv = ubatch
    acts = ub * (info.n_embd * 6 + info.n_ff * 3) * 4
    compute = scores + acts + info.n_vocab * 4
    cal = HOST_CALIBRATION
    runtime = cal["runtime_bytes"] if runtime_bytes is None else runtime_bytes
    overhead = int(runtime + cal["runtime_bytes_per_ctx"] * ctx + cal["vocab_bytes_per_token"] * info.n_vocab)
    # read per token: every weight matrix once; the token embedding is read as one row unless
    # it is also the output head (tied), then all of it; plus the KV cache in use
    embd_row = info.embd_bytes // max(info.n_vocab, 1)
    read = info.tensor_bytes - (0 if info.tied_output else info.embd_bytes - embd_row)
    glob = set(info.global_layers())
    kv_full = int(sum(min(c, ctx) if (il in glob or not info.sliding_window)
                      else min(c, info.sliding_window) for il, c in enumerate(cells)) * per_cell)
    total = weights + kv + compute + overhead
    return Estimate(path=info.path, ctx=ctx, ubatch=ubatch, kv_type=kv_type, swa_full=swa_full,
                    weights_bytes=weights, kv_bytes=kv, compute_bytes=int(compute), overhead_bytes=overhead,
                    total_bytes=int(total), file_bytes=info.file_bytes, bytes_per_token=read,
                    bytes_per_token_full=read + kv_full, kv_cells=cells, repacked_bytes=repacked, flash_attn=flash_attn,
                    notes=notes)


# ---- verdicts ---------------------------------------------------------------------------
@dataclass
class Verdict:
    """One (variant, device) answer."""

    variant: str
    device: str
    device_kind: str            # profile, adb or host
    ctx: int
    verdict: str                # fits, tight, does not fit
    total_bytes: int
    peak_bytes: int
    usable_bytes: int
    max_ctx: int                # largest n_ctx (multiple of 256) that still "fits"
    tok_s: float | None         # predicted decode speed, empty context
    tok_s_full: float | None    # ... with the context full
    sustained_tok_s: float | None
    energy_mj_per_token: float | None
    thermal: str
    pocketpal: dict
    anythingllm: dict
    estimate: dict
    warnings: list[str] = field(default_factory=list)
    storage: dict = field(default_factory=dict)   # storage_verdicts: free space and need per app
    prompt_tok_s: float | None = None    # predicted prompt processing (prefill) speed, big cores


def _classify(need: int, usable: int) -> str:
    if need <= FIT_HEADROOM * usable:
        return "fits"
    return "tight" if need <= usable else "does not fit"


def _peak(e: Estimate, info: ModelInfo) -> int:
    """total + the attention scores of a full ubatch against a full context (worst case)."""
    if e.flash_attn:
        return e.total_bytes
    ub = min(e.ubatch, e.ctx)
    return e.total_bytes + max(0, max(e.kv_cells) - ub) * ub * info.n_head * 4   # FA off


def max_ctx(info: ModelInfo, usable: int, *, ubatch=512, kv_type="f16", swa_full=True, runtime_bytes=None,
            cpu_features=None) -> int:
    """Largest n_ctx (multiple of 256, up to the model's context) whose peak still fits."""
    hi = info.context_length or 131072
    best, lo = 0, 256
    while lo <= hi:
        mid = (lo + hi) // 2 // 256 * 256 or 256
        e = estimate(info, ctx=mid, ubatch=ubatch, kv_type=kv_type, swa_full=swa_full, runtime_bytes=runtime_bytes,
                     cpu_features=cpu_features)
        if _classify(_peak(e, info), usable) == "fits":
            best, lo = mid, mid + 256
        else:
            hi = mid - 256
    return best


def verdict(path, device, *, ctx: int = 4096, ubatch: int = 512, kv_type: str = "f16", swa_full: bool = True,
            target_tok_s: float = 10.0, profiles: dict | None = None) -> Verdict:
    """Will `path` run on `device` (a Profile, a DeviceState, or a profile name)?"""
    from edge.readings import DeviceState

    info = path if isinstance(path, ModelInfo) else model_info(path)
    if isinstance(device, str):
        device = get_profile(device, profiles)
    warnings: list[str] = []
    prof = None
    if isinstance(device, Profile):
        prof, kind, dev_name = device, "profile", device.key
        ram = device.ram_bytes
        usable = usable_bytes_for(ram)
        runtime = PHONE_APP_RUNTIME_BYTES
    elif isinstance(device, DeviceState):
        kind = device.source
        dev_name = device.model or device.serial or kind
        ram = device.total_bytes or 0
        usable = device.available_bytes or 0
        if not ram or not usable:
            raise EdgeError(f"device {dev_name} did not report its memory; check `adb shell cat /proc/meminfo`")
        runtime = None if kind == "host" else PHONE_APP_RUNTIME_BYTES
        if kind != "host":
            prof = match_profile(device, profiles)
        warnings += device.warnings()
    else:
        raise TypeError(f"device must be a Profile, DeviceState or profile name, not {type(device).__name__}")
    features = device.cpu_features     # a profile's and a phone's (adb) alike: cpuinfo's spelling
    e = estimate(info, ctx=ctx, ubatch=ubatch, kv_type=kv_type, swa_full=swa_full, runtime_bytes=runtime,
                 cpu_features=features)
    peak = _peak(e, info)
    v = _classify(peak, usable)
    mc = max_ctx(info, usable, ubatch=ubatch, kv_type=kv_type, swa_full=swa_full, runtime_bytes=runtime,
                 cpu_features=features)
    # speed and heat
    tok = tok_full = sust = energy = prompt = None
    thermal = ""
    if kind == "host":
        bw = HOST_CALIBRATION["decode_bandwidth_gbs"]
        tok, tok_full = e.tokens_per_s(bw), e.tokens_per_s(bw, full=True)
        thermal = "laptop: no sustained power envelope modelled"
    elif prof is not None:
        weights = dict(info.matmul_types)     # by type, so that each type's compute cost counts
        rest = e.bytes_per_token - sum(weights.values())      # norms, an untied embedding's row
        sp = phone_speed(prof, bytes_per_token={**weights, "other": rest},
                         bytes_per_token_full={**weights, "other": rest + e.bytes_per_token_full - e.bytes_per_token},
                         n_layers=info.n_layers, target_tok_s=target_tok_s)
        tok, tok_full, sust, energy, thermal = sp.tok_s, sp.tok_s_full, sp.sustained_tok_s, \
            sp.energy_mj_per_token, sp.thermal
        # compute-bound: which matrices llama.cpp repacks on this CPU decides it (quantize/repack.py);
        # calibrated on dotprod/i8mm phones only: an older core's plain kernels are slower still
        feats = repack.features_of(features)
        if feats & {"dotprod", "i8mm"}:
            kernels = PROMPT_SPEED.weights_by_kernel(repack.matrices(info.tensors, head=False), feats)
            prompt = PROMPT_SPEED.tok_s(kernels, sum(prof.core_clocks()))
        warnings += sp.warnings
    else:
        thermal = "no profile matches this phone: speed unknown"
    if isinstance(device, DeviceState) and kind != "host":
        live = f"now: thermal status {device.thermal_status_name}"
        if device.skin_temp_c is not None:
            live += f", skin {device.skin_temp_c:.1f} C"
        if device.battery_temp_c is not None:
            live += f", battery {device.battery_temp_c:.1f} C"
        thermal = f"{thermal}; {live}"
    warnings += [n for n in e.notes if "repacks" not in n]
    return Verdict(variant=Path(info.path).name, device=dev_name, device_kind=kind, ctx=ctx, verdict=v,
                   total_bytes=e.total_bytes, peak_bytes=peak, usable_bytes=usable, max_ctx=mc,
                   tok_s=tok, tok_s_full=tok_full, sustained_tok_s=sust, energy_mj_per_token=energy,
                   thermal=thermal, pocketpal=pocketpal_rule(info.file_bytes, ram),
                   anythingllm=anythingllm_rule(info.file_bytes, ram), estimate=asdict(e), warnings=warnings,
                   prompt_tok_s=prompt,
                   storage=storage_verdicts(info.file_bytes, getattr(device, "storage_free_bytes", None)))


def matrix(paths, devices, **kw) -> list[Verdict]:
    """Verdicts for every (variant, device); devices are Profiles, DeviceStates or names."""
    infos = [p if isinstance(p, ModelInfo) else model_info(p) for p in paths]
    return [verdict(i, d, **kw) for i in infos for d in devices]


# ---- recommendation ---------------------------------------------------------------------
@dataclass
class Recommendation:
    device: str
    choice: str | None          # file name of the recommended variant
    reason: str
    candidates: list[dict] = field(default_factory=list)   # per variant: verdict, kld_mean, q4_0


def is_q4_0(info: ModelInfo) -> bool:
    """Mostly plain Q4_0 weights (llama.cpp file type 2, or Q4_0 the largest share of bytes)."""
    if info.file_type == 2:
        return True
    return bool(info.types) and max(info.types, key=info.types.get) == "Q4_0"


def recommend(paths, device, *, report=None, ctx: int = 4096, close: float = 1.25, **kw) -> Recommendation:
    """The best variant that fits `device` with headroom.

    Best = lowest `kld_mean` in the quality report (else most bits per weight). On a CPU with
    dotprod or i8mm, a Q4_0 variant whose kld_mean is within `close` x the best is preferred:
    llama.cpp repacks Q4_0 into its interleaved layout there and decodes it fastest.
    """
    infos = [p if isinstance(p, ModelInfo) else model_info(p) for p in paths]
    from quantize.report import rows_by_file

    quality = rows_by_file(report) if report is not None else {}
    dev = get_profile(device, kw.pop("profiles", None)) if isinstance(device, str) else device
    fast_q4 = bool(getattr(dev, "dotprod", False) or getattr(dev, "i8mm", False))
    cands = []
    for info in infos:
        v = verdict(info, dev, ctx=ctx, **kw)
        q = quality.get(Path(info.path).stem, {})
        cands.append({"variant": Path(info.path).name, "verdict": v.verdict, "total_bytes": v.total_bytes,
                      "tok_s": v.tok_s, "bpw": round(info.bits_per_weight, 2), "q4_0": is_q4_0(info),
                      "kld_mean": q.get("kld_mean")})
    name = getattr(dev, "key", None) or getattr(dev, "model", "") or "device"
    ok = [c for c in cands if c["verdict"] == "fits"]
    shippable = [c for c in ok if not c["variant"].startswith("ref-")]   # the export's reference file
    ok = shippable or ok
    if not ok:
        tight = [c for c in cands if c["verdict"] == "tight"]
        reason = (f"nothing fits with headroom at n_ctx {ctx}" +
                  (f"; {min(tight, key=lambda c: c['total_bytes'])['variant']} is tight" if tight else ""))
        return Recommendation(name, None, reason, cands)
    scored = [c for c in ok if isinstance(c["kld_mean"], (int, float))]
    if scored:
        best = min(scored, key=lambda c: c["kld_mean"])
        reason = f"lowest KL divergence ({best['kld_mean']:.4g}) among variants that fit"
        if fast_q4 and not best["q4_0"]:
            q4 = [c for c in scored if c["q4_0"] and c["kld_mean"] <= close * best["kld_mean"] + 1e-3]
            if q4:
                alt = min(q4, key=lambda c: c["kld_mean"])
                reason = (f"Q4_0 on a dotprod/i8mm CPU (llama.cpp repacks it for speed) and its KL divergence "
                          f"{alt['kld_mean']:.4g} is within {close:g}x of the best ({best['variant']}, "
                          f"{best['kld_mean']:.4g})")
                best = alt
        return Recommendation(name, best["variant"], reason, cands)
    best = max(ok, key=lambda c: c["bpw"])
    return Recommendation(name, best["variant"], "no quality report: the most bits per weight that fits "
                          "(pass the quantize report.json to weigh quality and prefer Q4_0)", cands)


# ---- CLI --------------------------------------------------------------------------------
def _gb(b) -> str:
    return "-" if b is None else f"{b / 1e9:.2f} GB"


def _mb(b) -> str:
    return "-" if b is None else f"{b / 1e6:,.0f} MB"


def verdict_table(vs: list[Verdict], with_variant: bool) -> str:
    head = (("variant",) if with_variant else ()) + ("device", "verdict", "needs", "usable", "max n_ctx",
                                                    "tok/s", "prompt tok/s", "sustained", "PocketPal", "AnythingLLM")
    rows = [head]
    for v in vs:
        rows.append(((v.variant,) if with_variant else ()) + (
            v.device, v.verdict, _mb(v.peak_bytes), _mb(v.usable_bytes), f"{v.max_ctx:,}",
            "-" if v.tok_s is None else f"{v.tok_s:.0f}" + ("*" if ESTIMATED_BANDWIDTH in v.warnings else ""),
            "-" if v.prompt_tok_s is None else f"{v.prompt_tok_s:.0f}",
            "-" if v.sustained_tok_s is None else f"{v.sustained_tok_s:.0f}",
            "fits" if v.pocketpal["fits"] else "warns",
            {"ok": "fits", "tight": "tight", "impossible": "too large"}[v.anythingllm["badge"]]))
    return text_table(rows)


def _apps_lines(v: Verdict) -> list[str]:
    """The apps' own rules and the storage check of one verdict, as the CLI prints them."""
    pp, al = v.pocketpal, v.anythingllm
    out = [f"PocketPal's check (PR #250): needs {_gb(pp['need_bytes'])} (0.92 x file + 0.43 GB), warns from "
           f"{_gb(pp['limit_bytes'])}: {'fits' if pp['fits'] else 'warns'}",
           f"AnythingLLM's badge (memoryFit.ts): {al['badge']} (tight above {_gb(al['budget_bytes'])} of weights); "
           f"its default n_ctx here: {al['default_ctx']}"]
    st = v.storage or {}
    if st.get("free_bytes") is None:
        out.append("storage: unknown for a profile (--serial reads the phone's free space); ChatterUI and PocketPal "
                   "keep their own copy after import, so the phone needs the file twice until the download is deleted")
    else:
        per = ", ".join(f"{a} {'fits' if x['fits'] else 'DOES NOT FIT'} ({_gb(x['need_bytes'])})"
                        for a, x in st["apps"].items())
        out.append(f"storage: {_gb(st['free_bytes'])} free; {per}")
    return out


def _live_state(serial: str):
    try:
        from edge.device import read_state
    except ImportError as e:
        raise EdgeError(f"reading a live phone needs edge.device ({e}); use --device NAME for a profile") from None
    return read_state(serial)


def budget_cmd(file: str, *, device: str = "", serial: str = "", host: bool = False, ctx: int = 4096,
               ubatch: int = 512, kv_type: KvType = "f16", swa_full: bool = True, json: bool = False):
    """Estimate RAM, speed and heat of a GGUF on a phone profile, a live phone, or this machine.

    RAM is counted in parts (weights, KV cache with Gemma 3's 5:1 sliding-window layers,
    compute buffer, runtime) from the file's own metadata; the verdict compares the peak with
    what one app can use, beside PocketPal's and AnythingLLM's own rules. Without --device,
    --serial or --host, every bundled profile is shown.

    Args:
        file: the .gguf file, or a run folder (its gguf/*.gguf and report.json: a matrix and a recommendation).
        device: a profile name from `edge profiles` (e.g. pixel_7).
        serial: a phone's adb serial: read its memory and temperatures live.
        host: budget for this machine instead (psutil).
        ctx: context length n_ctx in tokens.
        ubatch: llama.cpp's n_ubatch (tokens per compute step).
        kv_type: KV cache type: f16, q8_0 or q4_0 (quantized types imply flash attention, as llama.cpp requires).
        swa_full: keep full-size caches on sliding-window layers (llama-cpp-python's default); --no-swa-full shrinks them to window + ubatch.
        json: print the estimate (total_bytes and its parts) and verdicts as JSON.
    """
    if sum(bool(x) for x in (device, serial, host)) > 1:
        raise EdgeError("give at most one of --device, --serial and --host")
    if Path(file).is_dir():
        return _budget_folder(Path(file), device=device, serial=serial, host=host, ctx=ctx, ubatch=ubatch,
                              kv_type=kv_type, swa_full=swa_full, as_json=json)
    info = model_info(file)
    est = estimate(info, ctx=ctx, ubatch=ubatch, kv_type=kv_type, swa_full=swa_full)
    kw = dict(ctx=ctx, ubatch=ubatch, kv_type=kv_type, swa_full=swa_full)
    devices = _pick_devices(device, serial, host) or by_tier(load_profiles())
    vs = [verdict(info, d, **kw) for d in devices]
    if len(vs) == 1:                       # the parts as that device would hold them
        parts, where = vs[0].estimate, f"on {vs[0].device}"
    else:
        parts, where = asdict(est), "llama-cpp-python on this machine"
    if json:
        return {"file": str(file), "settings": kw, "estimate_for": where,
                **{k: v for k, v in parts.items() if k != "path"}, "verdicts": [asdict(v) for v in vs]}
    print(f"{Path(file).name}: {info.name}, {info.n_layers} layers ({len(info.global_layers())} global), "
          f"{info.bits_per_weight:.2f} bits/weight, file {_mb(info.file_bytes)}")
    sw = "full" if swa_full else f"window {info.sliding_window} + ubatch"
    print(f"n_ctx {ctx:,}, n_ubatch {ubatch}, KV {kv_type}, sliding-window cache {sw}; RAM {where}:")
    for label, b in (("weights", parts["weights_bytes"]), ("KV cache", parts["kv_bytes"]),
                     ("compute", parts["compute_bytes"]), ("runtime + vocab", parts["overhead_bytes"]),
                     ("total", parts["total_bytes"])):
        print(f"  {label:<16}{_mb(b):>12}")
    print(f"  read per token  {_mb(parts['bytes_per_token']):>12} (tied output head included)")
    if len(vs) > 1:
        print(f"  (phones: + {_mb(PHONE_APP_RUNTIME_BYTES)} app runtime; 'needs' below is the peak with a "
              "full context, the verdict compares it with what one app can use)")
    print()
    print(verdict_table(vs, with_variant=False))
    if len(vs) == 1:
        print(f"\nheat: {vs[0].thermal}")
        for line in _apps_lines(vs[0]):
            print(line)
    for n in parts.get("notes", []):
        print(f"note: {n}")
    for w in sorted({w for v in vs for w in v.warnings if w not in parts.get("notes", [])}):
        print(f"warning: {w}")
    return None


def _pick_devices(device: str, serial: str, host: bool) -> list:
    """The one device the flags name (--host, --serial or --device), or [] when none does."""
    if host:
        from edge.readings import host_state

        return [host_state()]
    if serial:
        return [_live_state(serial)]
    if device:
        return [get_profile(device)]
    return []


def _budget_folder(folder: Path, *, device, serial, host, ctx, ubatch, kv_type, swa_full, as_json):
    """`edge budget RUN_DIR`: every variant of a run (from its run.json) x the device(s), and a
    recommendation each; a plain folder: its *.gguf files, and report.json if it has one."""
    from edge.runfolder import MANIFEST, Run

    if (folder / MANIFEST).is_file():
        run = Run.open(folder, create=False)
        paths, report = run.variants(), run.report()
        if not paths:
            raise EdgeError(f"run {folder} has no quantized variants yet; finish it with `edge run` (or `edge demo`)")
    else:
        paths = sorted(folder.glob("*.gguf"))
        if not paths:
            raise EdgeError(f"no .gguf files in {folder}; give a GGUF file, a run folder or a folder of GGUFs")
        report = folder / "report.json"
        report = report if report.is_file() else None
    infos, skipped = read_models(paths)   # an imatrix.gguf or a damaged file is skipped, and said
    if not infos:
        raise EdgeError(f"no language model GGUF in {folder} ({'; '.join(skipped)}); give a folder of model files")
    paths = [Path(i.path) for i in infos]
    profiles = load_profiles()
    devices = _pick_devices(device, serial, host) or [profiles[k] for k in DEFAULT_DEVICES if k in profiles]
    kw = dict(ctx=ctx, ubatch=ubatch, kv_type=kv_type, swa_full=swa_full)
    vs = matrix(infos, devices, **kw)
    recs = [recommend(infos, d, report=report, **kw) for d in devices]
    if as_json:
        return {"folder": str(folder), "settings": kw, "report": str(report) if report else None, "skipped": skipped,
                "verdicts": [asdict(v) for v in vs], "recommendations": [asdict(r) for r in recs]}
    for line in skipped:
        print(f"skipped {line}")
    print(f"{folder}: {len(paths)} variants, n_ctx {ctx:,}" + (f", quality from {report}" if report else ""))
    print(verdict_table(vs, with_variant=True))
    for r in recs:
        print(f"recommended on {r.device}: {r.choice or 'none'} ({r.reason})")
    return None

