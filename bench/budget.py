"""Benchmark: how close is `edge.budget.estimate` to the RSS llama-cpp-python really reaches?

    python bench/budget.py                      # embedded Q4_K_M + requantized Q8_0, Q4_0, F16
    python bench/budget.py --ctx 512 --ctx 8192 --files a.gguf b.gguf
    python bench/budget.py --speed-only         # predicted vs measured decode tokens/s

For each file and n_ctx: load it in a fresh subprocess (bench/rss.py: llama.cpp through
edge.llamacpp, mmap on, f16 KV, full-size sliding-window caches, as the binding defaults), run a
short chat (256-token prompt, 16 generated tokens), read RSS; put our estimate, PocketPal's (0.43 GB + 0.92 x file, PR #250) and AnythingLLM's (the
file alone, which its memoryFit.ts compares with RAM and RAM - 2.5 GB) beside it.
Then predicted vs measured decode speed. Prints tables; writes the rows to --out (JSON).
The variants are made from the embedded GGUF with llama.cpp's own quantizer
(llama_model_quantize, allow_requantize) into $EDGE_CACHE/bench-variants/ once.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rss import measure_rss  # noqa: E402
from edge import budget  # noqa: E402
from edge.apps import pocketpal_rule  # noqa: E402
from edge.modelinfo import model_info  # noqa: E402
from edge.fsutil import cache_dir  # noqa: E402
from edge.models import embedded_gguf  # noqa: E402

VARIANTS = {"Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", False), "Q4_0-pure": ("LLAMA_FTYPE_MOSTLY_Q4_0", True),
            "F16": ("LLAMA_FTYPE_MOSTLY_F16", False)}


_QUIET = None


def _quiet_llama_logs() -> None:
    """llama.cpp's quantizer prints a line per tensor to stderr; keep the table readable."""
    global _QUIET
    import llama_cpp

    _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))


def make_variants() -> list[Path]:
    import llama_cpp

    _quiet_llama_logs()
    src = embedded_gguf()
    out_dir = cache_dir() / "bench-variants"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [src]
    for name, (ftype, pure) in VARIANTS.items():
        out = out_dir / f"gemma-3-270m-{name}.gguf"
        if not out.exists():
            p = llama_cpp.llama_model_quantize_default_params()
            p.ftype, p.allow_requantize, p.pure, p.nthread = getattr(llama_cpp, ftype), True, pure, 2
            tmp = out.with_suffix(".part")
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p))
            if rc != 0:
                raise SystemExit(f"quantizing {name} failed ({rc})")
            os.replace(tmp, out)
        paths.append(out)
    return paths


def stream_bandwidth_gbs() -> float:
    """Single-thread streaming read bandwidth here: numpy sum over a 512 MiB array, best of 3."""
    import numpy as np

    a = np.ones(64 << 20, dtype=np.float64)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def pct(a, b) -> str:
    return f"{(a / b - 1) * 100:+.1f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", nargs="*", help="GGUF files (default: embedded + requantized variants)")
    ap.add_argument("--ctx", type=int, action="append", help="n_ctx values (default 512 2048 8192 32768)")
    ap.add_argument("--threads", type=int, default=1, help="decode threads for the speed runs")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="RSS runs in parallel (RSS does not depend on CPU sharing)")
    ap.add_argument("--out", default="runs/bench/budget.json")
    args = ap.parse_args(argv)
    files = [Path(f) for f in args.files] if args.files else make_variants()
    ctxs = args.ctx or [512, 2048, 8192, 32768]
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    rows = []
    if not args.speed_only:
        print("\nRSS after a short chat (256-token prompt + 16 tokens), llama-cpp-python, MB = 1e6 bytes")
        print(f"{'file':<30}{'n_ctx':>7}{'measured':>10}{'ours':>9}{'err':>8}{'PocketPal':>11}{'err':>8}"
              f"{'AnythingLLM':>13}{'err':>8}")
        from concurrent.futures import ThreadPoolExecutor

        grid = [(f, n) for f in files for n in ctxs]
        infos = {f: model_info(f) for f in files}
        with ThreadPoolExecutor(args.jobs) as pool:
            results = pool.map(lambda fn: measure_rss(fn[0], ctx=fn[1], threads=args.threads, gen=16), grid)
            for (f, n), m in zip(grid, results):
                info = infos[f]
                e = budget.estimate(info, ctx=n)
                pp = pocketpal_rule(info.file_bytes, 1)["need_bytes"]   # PocketPal's estimate (PR #250)
                al = info.file_bytes            # AnythingLLM's badge weighs the file alone (memoryFit.ts)
                r = dict(file=f.name, ctx=n, measured=m["rss_used"], loaded=m["rss_loaded"], ours=e.total_bytes,
                         pocketpal=pp, anythingllm=al, tok_s=m["tok_s"])
                rows.append(r)
                mm = m["rss_used"]
                print(f"{f.name:<30}{n:>7}{mm / 1e6:>10.0f}{e.total_bytes / 1e6:>9.0f}{pct(e.total_bytes, mm):>8}"
                      f"{pp / 1e6:>11.0f}{pct(pp, mm):>8}{al / 1e6:>13.0f}{pct(al, mm):>8}", flush=True)
        # the runtime constants, refitted: residual = measured - (estimate without runtime)
        cal = dict(budget.HOST_CALIBRATION)
        budget.HOST_CALIBRATION.update(runtime_bytes=0, runtime_bytes_per_ctx=0)
        try:
            res = [(r["ctx"], r["measured"] - budget.estimate(infos[Path(f)], ctx=r["ctx"]).total_bytes)
                   for r, f in zip(rows, [g[0] for g in grid])]
        finally:
            budget.HOST_CALIBRATION.update(cal)
        n = len(res)
        mx, my = sum(c for c, _ in res) / n, sum(v for _, v in res) / n
        sxx = sum((c - mx) ** 2 for c, _ in res)
        slope = sum((c - mx) * (v - my) for c, v in res) / sxx if sxx else 0.0
        print(f"refitted runtime: {(my - slope * mx) / 1e6:.1f} MB + {slope:.0f} B per context token "
              f"(in use: {cal['runtime_bytes'] / 1e6:.1f} MB + {cal['runtime_bytes_per_ctx']} B)")
        for key in ("ours", "pocketpal", "anythingllm"):
            errs = [abs(r[key] / r["measured"] - 1) * 100 for r in rows]
            print(f"mean |error| {key:<12} {statistics.mean(errs):5.1f}%   max {max(errs):5.1f}%")
    # speed: predicted vs measured
    print(f"\ndecode speed at n_ctx 512, {args.threads} thread(s): predicted = calibrated "
          f"{budget.HOST_CALIBRATION['decode_bandwidth_gbs']} GB/s / bytes read per token")
    sbw = stream_bandwidth_gbs()
    print(f"streaming read bandwidth here now: {sbw:.1f} GB/s (numpy, 1 thread)")
    print("measured: wall-clock tok/s, and tokens per CPU-second of the decoding process (1 thread:")
    print("close to an idle machine's speed when the CPU is shared); implied GB/s = per-CPU-s x MB/token")
    print(f"{'file':<30}{'MB/token':>9}{'predicted':>11}{'wall':>7}{'per CPU-s':>11}{'err':>8}{'implied GB/s':>14}")
    speed = []
    for f in files:
        e = budget.estimate(f, ctx=512)
        m = measure_rss(f, ctx=512, threads=args.threads, prompt=16, gen=64)
        pred = e.tokens_per_s(budget.HOST_CALIBRATION["decode_bandwidth_gbs"])
        cpu = m["tok_per_cpu_s"]
        implied = cpu * e.bytes_per_token / 1e9
        speed.append(dict(file=f.name, bytes_per_token=e.bytes_per_token, predicted=pred, measured_wall=m["tok_s"],
                          measured_per_cpu_s=cpu, implied_gbs=implied))
        print(f"{f.name:<30}{e.bytes_per_token / 1e6:>9.0f}{pred:>11.1f}{m['tok_s']:>7.1f}{cpu:>11.1f}"
              f"{pct(pred, cpu):>8}{implied:>14.1f}", flush=True)
    load2 = os.getloadavg()
    print(f"load average after: {load2[0]:.1f} {load2[1]:.1f} {load2[2]:.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_before": load, "load_after": load2, "stream_gbs": sbw, "rss": rows,
                               "speed": speed, "calibration": budget.HOST_CALIBRATION}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
