"""Benchmark: a realistic fine-tuning job, end to end, ours against Unsloth, TRL + Liger and
transformers + peft, on the same GPU in the same run.

    python bench/finetune_job.py --tok TOKENIZER_DIR                       # the whole table
    python bench/finetune_job.py --tok DIR --sizes 270m --precisions bf16 --contestants edge,hf+peft
    python bench/finetune_job.py --tok DIR --device cpu --sizes 270m --precisions fp32 \\
        --contestants edge,hf+peft --chats 200                              # the CPU target

The job (the same for every contestant): `--chats` chats from bench/chats.py (long-tailed
lengths: median ~200 tokens, 87% under 512, a few up to 2,048), loss on the replies only,
one epoch, `--batch` chats per optimizer step, LoRA r16 / alpha 32 on all seven projections
(or every weight with `--full`), AdamW at 2e-4, clipping at 1.0. The model is Gemma 3 in
its real 270M / 1B configuration with random weights and the real tokenizer, saved once per size.

Each contestant runs in a process of its own (Unsloth patches transformers when imported),
one after another, and reports:
- end to end: the process's wall time: start, imports, load, compile, one epoch, save;
- steady tokens/s: real tokens (never padding) of the second half of the steps / their time;
- overall tokens/s: all real tokens / the training loop's time, warm-up included;
- peak memory: torch.cuda.max_memory_allocated (on a CPU: the process's peak RSS).

Contestants:
- `edge`: `edge.finetune.train` as `edge finetune` runs it (packing; compiling and the memory
  mode as `auto` picks them); `edge-compile` compiles the layers whatever the job's length;
  `edge-lean` / `edge-fast` force the memory mode (lean compiles too); `edge-eager` runs the
  layers uncompiled; `edge-dyn` compiles them for dynamic shapes at once.
  A contestant named twice runs twice: the second finds torch's compile caches warm.
- `unsloth`: FastLanguageModel (2026.10.9), get_peft_model with use_gradient_checkpointing="unsloth",
  its own loss, a plain loop over length-bucketed padded batches (anchors/unsloth-on-the-gpu.md),
  each step's chats in micro-batches of at most 16,384 padded tokens (widths rounded up to 64).
- `trl+liger`: TRL's SFTTrainer, use_liger_kernel=True, packing with padding_free=True
  (its BFD packing into rows of 2,048; rows per step chosen so a step holds about `--batch`
  chats), sdpa attention (no flash-attn on the machine), gradient checkpointing off.
- `hf+peft`: transformers + peft, `model(input_ids, attention_mask, labels)`, the same
  length-bucketed padded micro-batches as Unsloth (at 32 chats of up to 2,048 tokens in one
  batch, its float32 logits alone would take 68 GB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

START = time.time()
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 2e-4
FULL_LR = 5e-5


def make_model(size: str, tok_dir: Path, dest: Path) -> Path:
    """Random weights in the real configuration, the real tokenizer, saved once."""
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import Gemma3ForCausalLM

    from finetune import make_config  # bench/finetune.py

    cfg = make_config(size)
    cfg.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).to(torch.bfloat16)
    tmp = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    for f in tok_dir.iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name.endswith(".jinja")):
            shutil.copy(f, tmp / f.name)
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# The contestants, each run in its own process (`--one`)


def _examples(model_dir, chats):
    from transformers import AutoTokenizer

    from edge.data import load_chats
    from edge.finetune import prepare_examples

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok, prepare_examples(tok, load_chats(chats), 4096)


def _peak(device) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _rates(marks):
    """(steady, overall) real tokens/s from [(seconds since the loop began, tokens)] per step."""
    from edge.finetune import steady_rate

    total = sum(n for _, n in marks)
    return steady_rate(marks), (total / marks[-1][0] if marks and marks[-1][0] > 0 else None)


def run_edge(a) -> dict:
    import torch

    from edge.finetune import TrainSettings, train

    import edge.finetune

    variant = a.contestant
    if variant == "edge-dyn":  # layers compiled for dynamic shapes from the first step
        edge.finetune.COMPILE_DYNAMIC = True
    mode = {"edge-lean": "lean", "edge-fast": "fast"}.get(variant, "auto")
    settings = TrainSettings(epochs=1, batch_size=a.batch, lr=FULL_LR if a.full else LR, eval_fraction=0.0,
                             save_every=10**9, warmup=-1, full=a.full, memory=mode,
                             compile={"edge-eager": False, "edge-compile": True, "edge-lean": True}.get(variant),
                             seed=0)
    lines = []
    r = train(model=a.model_dir, data=a.chats, out=Path(a.work) / "out", settings=settings, precision=a.precision,
              force=True, progress=False, say=lambda s: (lines.append(s), print(s, flush=True)))
    rows = [json.loads(x) for x in (Path(a.work) / "out" / "log.jsonl").read_text().splitlines()]
    marks = [(x["elapsed"], x["tokens"]) for x in rows]
    steady, overall = _rates(marks)
    return {"steps": r.steps, "tokens": sum(x["tokens"] for x in rows), "steady": steady, "overall": overall,
            "loss": r.train_loss, "peak_gib": _peak(a.device), "mode": r.memory_mode,
            "notes": "; ".join(x for x in lines if x.startswith(("memory mode", "compile")))}


MICRO_TOKENS = 16384  # padded contestants: a step's chats go in micro-batches of at most this many padded tokens


def _micro(chats):
    """Split a step's chats (sorted by length) into micro-batches of <= MICRO_TOKENS padded tokens,
    widths rounded up to 64 (fewer shapes for compiled code); gradients accumulate over them."""
    chats = sorted(chats, key=lambda e: len(e.ids))
    out, cur = [], []
    for e in chats:
        width = -(-max(len(x.ids) for x in cur + [e]) // 64) * 64
        if cur and width * (len(cur) + 1) > MICRO_TOKENS:
            out.append(cur)
            cur = []
        cur.append(e)
    return out + [cur]


def _padded_loop(a, model, params, examples, loss_fn, device):
    """One epoch of length-bucketed padded batches (edge.finetune.epoch_batches: the same
    batches for Unsloth and transformers + peft; each split into micro-batches of at most
    MICRO_TOKENS padded tokens, gradients accumulated), AdamW, clipping, cosine schedule."""
    import torch

    from edge.finetune import IGNORE, collate, epoch_batches

    batches = epoch_batches([len(e.ids) for e in examples], a.batch, 0, 0)
    opt = torch.optim.AdamW(params, lr=FULL_LR if a.full else LR)
    total = len(batches)
    warm = max(1, round(0.05 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / total)))
    scaler = torch.amp.GradScaler(device, enabled=a.precision == "fp16" and device == "cuda")
    marks, t0, loss = [], time.time(), None
    print(f"loop starts {time.time() - START:.1f} s after the process began", flush=True)
    for b in batches:
        chats = [examples[i] for i in b]
        opt.zero_grad(set_to_none=True)
        n_all = sum(x != IGNORE for e in chats for x in e.labels[1:])
        lv = 0.0
        for mb in _micro(chats):
            ids, att, lab = collate(mb, device, 64)
            n_mb = sum(x != IGNORE for e in mb for x in e.labels[1:])
            loss = loss_fn(ids, att, lab) * (n_mb / n_all)  # the step's mean over all its reply tokens
            scaler.scale(loss).backward()
            lv += float(loss.detach())
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        marks.append((time.time() - t0, sum(len(e.ids) for e in chats)))
        if len(marks) % 10 == 1:  # the log shows how far a contestant got when it is stopped
            print(f"step {len(marks)}/{total} at {marks[-1][0]:.1f} s of the loop", flush=True)
    return marks, lv


def run_hf(a) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok, examples = _examples(a.model_dir, a.chats)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.precision]
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype, attn_implementation="sdpa").to(a.device)
    if a.full:
        net = model
    else:
        net = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0,
                                               task_type="CAUSAL_LM"))
    net.train()
    params = [q for q in net.parameters() if q.requires_grad]
    marks, loss = _padded_loop(a, net, params, examples,
                               lambda i, m, l: net(input_ids=i, attention_mask=m, labels=l, use_cache=False).loss,
                               a.device)
    net.save_pretrained(Path(a.work) / "out")
    steady, overall = _rates(marks)
    return {"steps": len(marks), "tokens": sum(n for _, n in marks), "steady": steady, "overall": overall,
            "loss": loss, "peak_gib": _peak(a.device)}


def run_unsloth(a) -> dict:
    import unsloth  # noqa: F401  (first: it patches transformers)
    import torch
    from unsloth import FastLanguageModel

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.precision]
    model, tok = FastLanguageModel.from_pretrained(a.model_dir, max_seq_length=2048, dtype=dtype, load_in_4bit=False,
                                                   full_finetuning=a.full)
    if not a.full:
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0,
                                                 bias="none", use_gradient_checkpointing="unsloth")
    model.train()
    _, examples = _examples(a.model_dir, a.chats)
    params = [q for q in model.parameters() if q.requires_grad]
    marks, loss = _padded_loop(a, model, params, examples,
                               lambda i, m, l: model(input_ids=i, attention_mask=m, labels=l).loss, "cuda")
    model.save_pretrained(Path(a.work) / "out")
    steady, overall = _rates(marks)
    import unsloth as u

    return {"steps": len(marks), "tokens": sum(n for _, n in marks), "steady": steady, "overall": overall,
            "loss": loss, "peak_gib": _peak("cuda"), "version": u.__version__}


def run_trl(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok, examples = _examples(a.model_dir, a.chats)
    ds = Dataset.from_list([{"input_ids": e.ids, "labels": e.labels} for e in examples])
    mean = sum(len(e.ids) for e in examples) / len(examples)
    rows = max(1, round(a.batch * mean / 2048))
    load_dtype = {"bf16": torch.bfloat16, "fp16": torch.float32}[a.precision]  # fp16: AMP over fp32 weights
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=load_dtype, attn_implementation="sdpa")
    marks, t0 = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            t0.setdefault("t", time.time())

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            marks.append(time.time() - t0["t"])

    cfg = SFTConfig(output_dir=str(Path(a.work) / "trl"), per_device_train_batch_size=rows, num_train_epochs=1,
                    learning_rate=FULL_LR if a.full else LR, lr_scheduler_type="cosine", warmup_steps=3,
                    max_grad_norm=1.0, bf16=a.precision == "bf16", fp16=a.precision == "fp16", packing=True,
                    padding_free=True, max_length=2048, use_liger_kernel=True, gradient_checkpointing=False,
                    logging_steps=10**6, save_strategy="no", report_to="none", dataloader_num_workers=0, seed=0)
    peft_cfg = None if a.full else LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0,
                                              task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                         callbacks=[Clock()])
    out = trainer.train()
    trainer.save_model(str(Path(a.work) / "out"))
    total = sum(len(e.ids) for e in examples)
    n = len(marks)
    per = total / n  # packed rows: each step holds about the same number of tokens
    steady = per * (n - n // 2) / (marks[-1] - marks[n // 2 - 1]) if n >= 4 else None
    import liger_kernel

    return {"steps": n, "tokens": total, "steady": steady, "overall": total / marks[-1], "loss": out.training_loss,
            "peak_gib": _peak("cuda"), "version": f"trl {trl.__version__}, liger "
            f"{getattr(liger_kernel, '__version__', '') or _dist_version('liger-kernel')}",
            "notes": f"{rows} packed rows of <= 2,048 per step"}


def _dist_version(name):
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return "?"


RUNNERS = {"edge": run_edge, "edge-lean": run_edge, "edge-fast": run_edge, "edge-eager": run_edge, "edge-dyn": run_edge, "edge-compile": run_edge,
           "unsloth": run_unsloth, "trl+liger": run_trl, "hf+peft": run_hf}


def one(a) -> None:
    """Child process: run one contestant, print `RESULT {json}`."""
    import torch

    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    try:
        r = RUNNERS[a.contestant](a)
    except Exception as e:
        traceback.print_exc()
        r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
    print("RESULT " + json.dumps(r), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: models, data, one process per contestant, the table


def versions() -> str:
    import peft
    import torch
    import transformers

    out = [f"torch {torch.__version__}", f"transformers {transformers.__version__}", f"peft {peft.__version__}"]
    for name in ("unsloth", "unsloth_zoo", "trl", "liger-kernel", "datasets"):
        v = _dist_version(name)
        if v != "?":
            out.append(f"{name} {v}")
    return ", ".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tok", default="", help="a folder with the Gemma 3 tokenizer (tokenizer.json ...); "
                    "default: the embedded model's")
    ap.add_argument("--sizes", default="270m,1b")
    ap.add_argument("--precisions", default="bf16,fp16")
    ap.add_argument("--contestants", default="edge,edge-lean,unsloth,trl+liger,hf+peft")
    ap.add_argument("--chats", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=32, help="chats per optimizer step")
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--timeout", type=int, default=420, help="seconds per contestant")
    ap.add_argument("--json", default="", help="write the rows here too")
    # child-process arguments
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--contestant", default="", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="", help=argparse.SUPPRESS)
    ap.add_argument("--chats-file", dest="chats_file", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        a.chats = a.chats_file
        return one(a)

    import chats as chatgen

    work = Path(a.work or tempfile.mkdtemp(prefix="ftjob."))
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(a.tok) if a.tok else None
    if tok_dir is None:
        from edge.models import ensure_embedded

        tok_dir = ensure_embedded()
    data = chatgen.write(work / "chats.jsonl", a.chats, seed=0)
    import torch

    gpu = torch.cuda.get_device_name() if a.device == "cuda" else "CPU"
    print(f"{gpu}; {versions()}; job: {a.chats} chats, 1 epoch, {a.batch} chats/step, "
          f"{'full fine-tuning' if a.full else 'LoRA r16 all 7 projections'}", flush=True)
    rows = []
    for size in a.sizes.split(","):
        model_dir = make_model(size, tok_dir, work / f"model-{size}")
        for precision in a.precisions.split(","):
            for c in a.contestants.split(","):
                run_dir = work / f"run-{size}-{precision}-{c}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir()
                cmd = [sys.executable, __file__, "--one", "--contestant", c, "--model-dir", str(model_dir),
                       "--precision", precision, "--chats-file", str(data), "--batch", str(a.batch),
                       "--device", a.device, "--work", str(run_dir)] + (["--full"] if a.full else [])
                env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
                t0 = time.time()
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
                    out = p.stdout + p.stderr
                    line = next((x for x in reversed(p.stdout.splitlines()) if x.startswith("RESULT ")), None)
                    r = json.loads(line[7:]) if line else {"error": f"exit {p.returncode}: {out.strip().splitlines()[-1][:160] if out.strip() else ''}"}
                except subprocess.TimeoutExpired as e:
                    out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                    r = {"error": f"timed out after {a.timeout} s"}
                r.update(size=size, precision=precision, contestant=c, e2e_s=time.time() - t0)
                (work / f"log-{size}-{precision}-{c}.txt").write_text(out)
                if "error" in r:
                    print("\n".join(out.strip().splitlines()[-15:]), flush=True)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if a.json:
                    Path(a.json).write_text(json.dumps(rows, indent=2))
                shutil.rmtree(run_dir, ignore_errors=True)
    print()
    print(table(rows))


def table(rows) -> str:
    out = ["| model | precision | contestant | end to end s | steady tok/s | overall tok/s | peak GiB | "
           "steady vs Unsloth | e2e vs Unsloth | mem vs Unsloth | steady vs hf+peft | steps | loss | notes |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['size']} | {r['precision']} | {r['contestant']} | {r['e2e_s']:.0f} | {r['error']} "
                       "| | | | | | | | | |")
            continue
        same = lambda c: next((b for b in rows if b["size"] == r["size"] and b["precision"] == r["precision"]
                               and b["contestant"] == c and "error" not in b and b.get("steady")), None)
        u, h = same("unsloth"), same("hf+peft")
        st = r.get("steady") or 0
        fx = lambda x: f"{x:.2f}x"
        out.append(
            f"| {r['size']} | {r['precision']} | {r['contestant']} | {r['e2e_s']:.0f} | {f'{st:,.0f}' if st else '-'} | "
            f"{(r.get('overall') or 0):,.0f} | {r['peak_gib']:.2f} | "
            f"{fx(st / u['steady']) if u else '-'} | {fx(u['e2e_s'] / r['e2e_s']) if u else '-'} | "
            f"{fx(r['peak_gib'] / u['peak_gib']) if u else '-'} | {fx(st / h['steady']) if h else '-'} | "
            f"{r['steps']} | {r['loss']:.3f} | {r.get('mode', '')} {r.get('version', '')} {r.get('notes', '')} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
