"""Benchmark: `edge finetune` on N processes through torchrun vs one plain process.

    python bench/finetune.py --gpus 1          # one GPU: plain run vs torchrun with 1 process (overhead)
    python bench/finetune.py --gpus 2          # 2 GPUs: scaling efficiency (and the overhead row)
    python bench/finetune.py --gpus 2 --cpu    # two processes on the CPU (gloo backend)

Every run is the real command line, in its own processes: `python -m edge.cli finetune`
("plain"), and `torchrun --standalone --nproc-per-node N -m edge.cli finetune` ("torchrun xN"),
on the same chats, model, precision and steps; no eval (--eval-fraction 0), no checkpoint
before the end. Weak scaling: with N processes the global --batch-size is N times the plain
run's, so each GPU does the same work per step as the one GPU does.

Reported per run: steady-state tokens/s (real tokens, never padding, from log.jsonl: the steps
after the first `--skip`, which hold the compile warm-up), and the end-to-end seconds.
overhead = 1 - tok/s(torchrun x1) / tok/s(plain)       (target: <= 3%)
efficiency = tok/s(torchrun xN) / (N x tok/s(plain))   (targets: >= 90% at N = 2, >= 85% at N = 8)
On the CPU each of N processes gets cores / N threads (OMP_NUM_THREADS), the plain run all of them,
unless OMP_NUM_THREADS is set (then every process gets that many: on a loaded machine, threads
that wait on each other at OpenMP barriers distort the comparison, so use 1 there).

`--model random:270m` or `random:1b`: random weights in Gemma 3's exact configuration
(edge.gemma3.CONFIG_*) with the embedded model's tokenizer, written to a temporary folder (a GPU
machine that cannot download the 1B). `--finetune-args=--full` passes flags on to every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def steady_tok_s(log: Path, skip: int) -> float:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if len(rows) <= skip:
        raise SystemExit(f"{log}: {len(rows)} steps, fewer than --skip {skip} + 1; raise --steps")
    tokens = sum(r["tokens"] for r in rows[skip:])
    return tokens / (rows[-1]["elapsed"] - rows[skip - 1]["elapsed"]) if skip else tokens / rows[-1]["elapsed"]


def random_model(size: str, dest: Path) -> Path:
    """A Hugging Face folder with random weights in Gemma 3 `size`'s configuration."""
    import shutil

    import torch
    from transformers import Gemma3ForCausalLM

    from edge.models import ensure_embedded

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from finetune import make_config

    cfg = make_config(size)
    cfg.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    Gemma3ForCausalLM(cfg).save_pretrained(dest, safe_serialization=True)
    src = ensure_embedded()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model",
                 "special_tokens_map.json", "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    return dest


def run(n: int | None, args, batch: int, workdir: Path, cpu: bool) -> dict:
    """n None: plain `edge finetune`; else torchrun with n processes."""
    out = workdir / ("plain" if n is None else f"torchrun-x{n}")
    flags = ["finetune", "--model", args.model, "--data", args.data, "--out", str(out), "--force",
             "--steps", str(args.steps), "--batch-size", str(batch), "--precision", args.precision,
             "--eval-fraction", "0", "--save-every", str(args.steps), "--json", *args.finetune_args.split()]
    cmd = ([sys.executable, "-m", "edge.cli"] if n is None else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "edge.cli"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        if "OMP_NUM_THREADS" not in os.environ:  # set it to give every run the same threads per process
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (n or 1)))
    t0 = time.time()
    r = subprocess.run(cmd + flags, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"run failed ({r.returncode}): {' '.join(cmd + flags)}")
    return {"run": "plain" if n is None else f"torchrun x{n}", "processes": n or 1, "batch": batch,
            "tok_s": steady_tok_s(out / "log.jsonl", args.skip), "seconds": seconds}


def main(args) -> None:
    import torch

    cpu = args.cpu or not torch.cuda.is_available()
    have = 0 if cpu else torch.cuda.device_count()
    if not cpu and have < args.gpus:
        raise SystemExit(f"--gpus {args.gpus}: this machine has {have} GPUs")
    where = f"CPU ({os.cpu_count()} cores, gloo)" if cpu else f"{have} x {torch.cuda.get_device_name()} (nccl)"
    data = args.data
    print(f"{where}  torch {torch.__version__}  model {args.model}  data {data}  batch {args.batch} per process  "
          f"steps {args.steps} (first {args.skip} not timed)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpus-") as tmp:
        if args.model.startswith("random:"):
            args.model = str(random_model(args.model.split(":", 1)[1], Path(tmp) / "model"))
        for n in [None, 1] + ([args.gpus] if args.gpus > 1 else []):
            rows.append(run(n, args, args.batch * (n or 1), Path(tmp), cpu))
            print(json.dumps(rows[-1]), flush=True)
    plain = rows[0]["tok_s"]
    print()
    print("| run | processes | global batch | tokens/s | per process | vs plain | scaling efficiency | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        eff = r["tok_s"] / (r["processes"] * plain)
        print(f"| {r['run']} | {r['processes']} | {r['batch']} | {r['tok_s']:,.0f} | {r['tok_s'] / r['processes']:,.0f} | "
              f"{r['tok_s'] / plain - 1:+.1%} | {eff:.1%} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
