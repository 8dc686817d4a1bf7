"""Benchmark: `edge finetune` on N processes through torchrun vs one plain process.

    python bench/finetune.py --gpus 1          # one GPU: plain run vs torchrun with 1 process (overhead)
    python bench/finetune.py --gpus 2          # 2 GPUs: scaling efficiency (and the overhead row)
    python bench/finetune.py --gpus 2 --cpu    # two processes on the CPU (gloo backend)

Every run is the real command line, in its own processes: `python -m edge.cli finetune`
("plain"), and `torchrun --standalone --nproc-per-node N -m edge.cli finetune` ("torchrun xN"),
on the same chats, model, precision and steps; no eval (--eval-fraction 0), no checkpoint
before the end. Weak scaling: with N processes the global --batch-size is N times the plain
run's, so each GPU does the same work per step as the one GPU does.

One more run, "plain xN batch", trains on one process with the xN run's global batch: the
same training, so its losses must equal the xN run's step by step ("loss vs 1 GPU": the
largest relative difference). On a machine with several GPUs the plain and torchrun x1 runs
go side by side on GPUs 0 and 1 (the same conditions for both; the overhead is their ratio),
and "plain xN batch" beside nothing.

Reported per run: steady-state tokens/s (real tokens, never padding, from log.jsonl: the steps
after the first `--skip`, which hold the compile warm-up), the end-to-end seconds, and the peak
GPU memory of process 0 (torch.cuda.max_memory_allocated, from `edge finetune --json`).
overhead = 1 - tok/s(torchrun x1) / tok/s(plain)       (target: <= 3%)
efficiency = tok/s(torchrun xN) / (N x tok/s(plain))   (targets: >= 90% at N = 2, >= 85% at N = 8)
On the CPU each of N processes gets cores / N threads (OMP_NUM_THREADS), the plain run all of them,
unless OMP_NUM_THREADS is set (then every process gets that many: on a loaded machine, threads
that wait on each other at OpenMP barriers distort the comparison, so use 1 there).

`--model random:270m` or `random:1b`: random weights in Gemma 3's exact configuration
(edge.gemma3.CONFIG_*) with the embedded model's tokenizer, written to a temporary folder (a GPU
machine that cannot download the 1B; `--tok DIR` takes the tokenizer from DIR instead).
`--finetune-args=--full` passes flags on to every run; `--work DIR` keeps the runs' folders.
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


def random_model(size: str, dest: Path, tok: str = "") -> Path:
    """A Hugging Face folder with random weights in Gemma 3 `size`'s configuration."""
    import shutil

    import torch
    from transformers import Gemma3ForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from finetune import make_config

    cfg = make_config(size)
    cfg.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    Gemma3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(dest, safe_serialization=True)
    if tok:
        src = Path(tok)
    else:
        from edge.models import ensure_embedded

        src = ensure_embedded()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model",
                 "special_tokens_map.json", "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    return dest


def start(name: str, n: int | None, args, batch: int, workdir: Path, cpu: bool, gpus: str | None):
    """Start one run (n None: plain `edge finetune`; else torchrun with n processes) on `gpus`
    (CUDA_VISIBLE_DEVICES; None: as it is). Returns (row, Popen)."""
    out = workdir / name.replace(" ", "-")
    flags = ["finetune", "--model", args.model, "--data", args.data, "--out", str(out), "--force",
             "--steps", str(args.steps), "--batch-size", str(batch), "--precision", args.precision,
             "--eval-fraction", "0", "--save-every", str(args.steps), "--json", *args.finetune_args.split()]
    cmd = ([sys.executable, "-m", "edge.cli"] if n is None else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "edge.cli"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        if "OMP_NUM_THREADS" not in os.environ:  # set it to give every run the same threads per process
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (n or 1)))
    elif gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"{out.name}.stderr", "w")
    row = {"run": name, "processes": n or 1, "batch": batch, "gpus": gpus, "cmd": " ".join(cmd + flags), "out": out,
           "t0": time.time(), "stderr": log}
    return row, subprocess.Popen(cmd + flags, env=env, stdout=subprocess.PIPE, stderr=log, text=True)


def finish(row: dict, proc, args) -> dict:
    stdout, _ = proc.communicate()
    row["seconds"] = time.time() - row.pop("t0")
    row.pop("stderr").close()
    out = row.pop("out")
    if proc.returncode != 0:
        err = (out.parent / f"{out.name}.stderr").read_text()[-3000:]
        print(err, file=sys.stderr)
        return {**row, "error": f"exit {proc.returncode}"}
    result = json.loads(stdout[stdout.index("{"):]) if "{" in stdout else {}
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return {**row, "tok_s": steady_tok_s(out / "log.jsonl", args.skip), "peak_gib": result.get("peak_gib"),
            "losses": [r["loss"] for r in logs if "loss" in r]}


def together(specs, args, workdir, cpu):
    """Run `specs` [(name, n, batch, gpus)] side by side; their rows, in order."""
    started = [start(name, n, args, batch, workdir, cpu, gpus) for name, n, batch, gpus in specs]
    rows = [finish(row, proc, args) for row, proc in started]
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
    return rows


def main(args) -> None:
    import torch

    cpu = args.cpu or not torch.cuda.is_available()
    have = 0 if cpu else torch.cuda.device_count()
    if not cpu and have < args.gpus:
        raise SystemExit(f"--gpus {args.gpus}: this machine has {have} GPUs")
    where = f"CPU ({os.cpu_count()} cores, gloo)" if cpu else f"{have} x {torch.cuda.get_device_name()} (nccl)"
    n = args.gpus
    print(f"{where}  torch {torch.__version__}  model {args.model}  data {args.data}  batch {args.batch} per process  "
          f"steps {args.steps} (first {args.skip} not timed)  flags {args.finetune_args!r}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpus-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.model.startswith("random:"):
            args.model = str(random_model(args.model.split(":", 1)[1], work / "model", args.tok))
        B = args.batch
        side = not cpu and have >= 2  # two one-GPU runs side by side, one GPU each
        one = [("plain", None, B), *([("torchrun x1", 1, B)] if not args.no_x1 else []),
               *([(f"plain x{n} batch", None, n * B)] if n > 1 else [])]
        rows = []
        for i in range(0, len(one), 2 if side else 1):  # plain with torchrun x1, then the loss reference
            pair = one[i:i + 2] if side else one[i:i + 1]
            rows += together([(name, k, b, str(j) if side else None) for j, (name, k, b) in enumerate(pair)],
                             args, work, cpu)
        if n > 1:
            all_gpus = ",".join(str(i) for i in range(n)) if not cpu else None
            rows += together([(f"torchrun x{n}", n, n * B, all_gpus)], args, work, cpu)
    plain = rows[0].get("tok_s")
    ref = next((r for r in rows if r["run"] == f"plain x{n} batch" and "losses" in r), None)
    print()
    print("| run | processes | global batch | tokens/s | per process | vs plain | scaling efficiency | loss vs 1 GPU | "
          "peak GiB (process 0) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['run']} | {r['processes']} | {r['batch']} | {r['error']} | | | | | | {r['seconds']:.0f} |")
            continue
        eff = r["tok_s"] / (r["processes"] * plain) if plain else float("nan")
        same = ""
        if ref is not None and r["run"] == f"torchrun x{n}" and len(r["losses"]) == len(ref["losses"]):
            same = f"{max(abs(a - b) / abs(b) for a, b in zip(r['losses'], ref['losses'])):.1e}"
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
        print(f"| {r['run']} | {r['processes']} | {r['batch']} | {r['tok_s']:,.0f} | {r['tok_s'] / r['processes']:,.0f} | "
              f"{r['tok_s'] / plain - 1:+.1%} | {eff:.1%} | {same} | {peak} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
