"""Measure what llama.cpp really holds: load a GGUF in a fresh process, run a short chat, read RSS.

Takes a .gguf and a setting (n_ctx, n_ubatch, threads, prompt and generated token counts); opens
llama.cpp through edge.llamacpp (the project's one opener: f16 KV cache, full-size sliding-window
caches, no flash attention, as llama-cpp-python's `Llama` defaults) in a child process, so that
nothing else loaded in the caller counts. Writes nothing; returns a dict. Used by bench/budget.py
(our estimate vs this) and tests/test_budget.py.

    from bench.rss import measure_rss
    measure_rss("m-Q8_0.gguf", ctx=4096, threads=1)["rss_used"]
    python bench/rss.py m-Q8_0.gguf --ctx 4096       # one measurement, as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = "The history of the river valley begins with the first farmers who settled along its banks. " * 64


def _child(args: dict) -> dict:
    """In the measuring process: load, prompt, generate greedily, and read RSS at each step."""
    import resource

    import numpy as np
    import psutil

    proc = psutil.Process()
    from edge import llamacpp

    llamacpp.lib()
    r_import = proc.memory_info().rss
    t0 = time.time()
    with llamacpp.Model(args["path"]) as model, \
            model.context(n_ctx=args["ctx"], n_batch=args["ubatch"], n_outputs=1, n_threads=args["threads"]) as ctx:
        load_s = time.time() - t0
        r_loaded = proc.memory_info().rss
        toks = model.tokenize(TEXT.encode(), add_bos=True)[: args["prompt"]]
        t0 = time.time()
        for i in range(0, len(toks), args["ubatch"]):      # the prompt, one ubatch per decode
            chunk = toks[i:i + args["ubatch"]]
            last = i + len(chunk) == len(toks)
            logits = ctx.decode([(0, chunk, [len(chunk) - 1] if last else [], i)])
        pos, tok = len(toks), int(np.argmax(logits[0]))
        prompt_s = time.time() - t0
        t0, c0 = time.time(), time.process_time()
        for _ in range(args["gen"] - 1):                   # greedy, as temp 0 / top_k 1
            tok = int(np.argmax(ctx.decode([(0, [tok], [0], pos)])[0]))
            pos += 1
        gen_s, cpu_s = time.time() - t0, time.process_time() - c0
        r_used = proc.memory_info().rss
    n = args["gen"]
    return {"rss_import": r_import, "rss_loaded": r_loaded, "rss_used": r_used,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "load_s": load_s, "prompt_tokens": len(toks), "prompt_s": prompt_s,
            "gen_tokens": n, "gen_s": gen_s, "tok_s": (n - 1) / gen_s if n > 1 and gen_s > 0 else None,
            "tok_per_cpu_s": (n - 1) / cpu_s if n > 1 and cpu_s > 0 else None}


def measure_rss(path: str | Path, *, ctx: int = 4096, ubatch: int = 512, prompt: int = 256, gen: int = 32,
                threads: int = 2, timeout: float = 300) -> dict:
    """Load `path` through edge.llamacpp in a fresh subprocess, run a short chat, report RSS.

    Returns rss_import (Python + llama_cpp imported), rss_loaded (after the model and its context),
    rss_used (after a `prompt`-token prompt and `gen` generated tokens), peak_rss, decode tok/s
    (wall clock) and tok_per_cpu_s (tokens per CPU-second of this process: with one thread, close
    to the speed on an idle machine even when the CPU is shared).
    """
    args = dict(path=str(path), ctx=int(ctx), ubatch=int(ubatch), prompt=max(1, min(prompt, ctx - gen - 8)),
                gen=max(1, int(gen)), threads=int(threads))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"llama.cpp measurement failed: {p.stderr.strip()[-600:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", nargs="?")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(json.loads(a.child))))
    elif a.file:
        print(json.dumps(measure_rss(a.file, ctx=a.ctx, threads=a.threads), indent=2))
    else:
        ap.error("give a .gguf file")


if __name__ == "__main__":
    main()
