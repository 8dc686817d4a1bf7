"""Benchmark: one LoRA training step on a GPU, ours (edge.finetune) vs plain transformers + peft.

    python bench/finetune.py                                  # CUDA machine: full table
    python bench/finetune.py --sizes 270m --precisions bf16 --steps 5

Models: random weights in Gemma 3 270M's and 1B's exact configurations (edge.gemma3.CONFIG_*),
sequence 1,024, batch 8, LoRA r=16 (alpha 32) on all attention and MLP projections, AdamW,
gradient clipping at 1.0, every token a label. Both sides use sdpa attention and the same
LoRA; they differ only in what edge.finetune changes:

- baseline "hf+peft": `model(input_ids, labels=...)`: transformers' own loss (full logits,
  upcast to float32).
- "edge": edge.finetune.reply_loss: decoder body, then the chunked cross-entropy through the
  frozen tied head (gradient computed in the same pass; no full logits, no recompute).
- "edge+ckpt": the same with gradient checkpointing (activations recomputed in backward).
- "edge+compile": what `edge finetune` does on a GPU: each decoder layer and the loss chunk
  compiled (torch.compile), the fp16-fixed layers too. "+nolayers": the loss chunk only, the
  layers eager (what `edge finetune` did in fp16 while compiled fixed layers trained nothing
  on torch 2.11; edge.precision says why).
- "+fused": edge.precision.apply_fp16_fixes on a bf16 model too (float32 residual stream).
- "+memN" (e.g. "edge+compile+mem0.5"): compiled layers under an activation memory budget N
  (edge.finetune.compile_layers); "+chunkN": N rows per loss chunk instead of --chunk-rows.

fp16 runs plain float16 weights for the baseline, and float16 with edge.precision's fixes
(float32 residual stream, norms, softmax) for ours; both train with dynamic loss scaling
(GradScaler from edge.finetune's initial scale), as a real fp16 run must.

Reported: tokens/s (median of timed steps after warm-up, CUDA-synchronised), peak GPU memory
(torch.cuda.max_memory_allocated over warm-up and timed steps), MFU, and after the timed steps
one more step that counts the LoRA weights whose gradient is missing or all zero ("grads":
nonzero / all; a run in which every one is zero is refused: it trained nothing).

MFU (nanoGPT's `estimate_mfu` habit, written out): model FLOPs per token =
  linear: 2 (forward) x 2 (backward, input gradients only: the base is frozen) x P_matmul,
          P_matmul = per-layer q,k,v,o,gate,up,down weights x layers + the tied head (V x H);
  attention: 3 x 4 x n_heads x head_dim x (mean keys attended) x layers
          (forward QK^T + PV = 4 flops per query-key pair per dim; backward ~2x forward),
  mean keys attended: (T+1)/2 on global layers; for sliding layers the same capped at the window.
LoRA's own FLOPs (r=16) are under 1% and left out. Peak: 989.4 TFLOP/s dense bf16/fp16 for
H100 SXM and H200 (NVIDIA datasheets); the card's name is printed with the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge import gemma3  # noqa: E402
from edge.finetune import FP16_INIT_LOSS_SCALE  # noqa: E402

PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16, NVIDIA datasheets
PROFILE = False
PROFILE_DIR = ""
SIZES = {"270m": gemma3.CONFIG_270M, "1b": gemma3.CONFIG_1B}


def make_config(size: str):
    from transformers import Gemma3TextConfig

    cfg = dict(SIZES[size])
    cfg["layer_types"] = gemma3.layer_types(cfg["num_hidden_layers"])
    c = Gemma3TextConfig(**cfg, bos_token_id=gemma3.BOS_ID, eos_token_id=gemma3.EOS_ID, pad_token_id=gemma3.PAD_ID)
    c._attn_implementation = "sdpa"
    return c


def flops_per_token(cfg, seq: int) -> float:
    h, f, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f
    linear = 4 * (per_layer * L + V * h)
    mean_full = (seq + 1) / 2
    mean_window = sum(min(i + 1, cfg.sliding_window) for i in range(seq)) / seq
    n_global = sum(gemma3.is_global_layer(i) for i in range(L))
    keys = n_global * mean_full + (L - n_global) * mean_window
    attention = 3 * 4 * q * keys
    return linear + attention


def variant_option(variant: str, name: str, default, kind=float):
    """The number after `+name` in a variant (e.g. mem0.5 in "edge+compile+mem0.5"), else default."""
    m = re.search(rf"\+{name}([0-9.]+)", variant)
    return kind(m.group(1)) if m else default


def build(size: str, precision: str, variant: str):
    import torch
    from transformers import Gemma3ForCausalLM

    from edge.finetune import LoraSettings, add_lora, compile_layers

    cfg = make_config(size)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Gemma3ForCausalLM(cfg).to(dtype)
    fixes = ""
    if variant != "hf+peft" and (precision == "fp16" or "+fused" in variant):
        from edge.precision import apply_fp16_fixes

        apply_fp16_fixes(model)
        fixes = " (fp16 fixes)" if precision == "fp16" else " (fused layers)"
    net = add_lora(model, LoraSettings(r=16, alpha=32), grad_checkpointing=("ckpt" in variant))
    if "compile" in variant and "+nolayers" not in variant:
        compile_layers(net, memory_budget=variant_option(variant, "mem", 1.0))
    net.train()
    return net, cfg, fixes


def run_one(size, precision, variant, batch, seq, warmup, steps, chunk_rows, loss_scale):
    import torch

    from edge.finetune import reply_loss

    torch._dynamo.reset()  # compiled code of an earlier model must not count against this one's recompile limit
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    net, cfg, fixes = build(size, precision, variant)
    params = [p for p in net.parameters() if p.requires_grad]
    # ours: fused AdamW (what edge.finetune uses on CUDA); the baseline: torch's default AdamW
    opt = torch.optim.AdamW(params, lr=1e-4, fused=variant != "hf+peft")
    g = torch.Generator(device="cuda").manual_seed(1)
    batches = [torch.randint(4, cfg.vocab_size, (batch, seq), device="cuda", generator=g) for _ in range(4)]
    compile_ = "compile" in variant
    chunk_rows = variant_option(variant, "chunk", chunk_rows, int)
    # fp16 trains with dynamic loss scaling on both sides (what edge.finetune does; plain fp16
    # needs it as much); bf16 needs none
    scaler = torch.amp.GradScaler("cuda", init_scale=loss_scale or 1.0, enabled=precision == "fp16" and loss_scale > 0)

    def step(ids):
        opt.zero_grad(set_to_none=True)
        if variant == "hf+peft":
            loss = net(input_ids=ids, labels=ids, use_cache=False).loss
        else:
            s, n = reply_loss(net, ids, None, ids, chunk_rows=chunk_rows, compile=compile_)
            loss = s / n
        scaler.scale(loss).backward()
        if any(p.grad is None for p in params):  # a step that trains nothing is no result
            raise RuntimeError(f"{sum(p.grad is None for p in params)} of {len(params)} LoRA weights got no gradient")
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        return loss

    t_first = time.perf_counter()
    for i in range(warmup):
        loss = step(batches[i % 4])
    torch.cuda.synchronize()
    t_warm = time.perf_counter() - t_first
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = step(batches[i % 4])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated()
    step(batches[0])  # untimed: does every LoRA weight get a gradient? (compiled code once gave all zeros)
    nonzero = sum(int(p.grad is not None and bool(p.grad.any())) for p in params)
    if nonzero == 0:
        raise RuntimeError(f"all {len(params)} LoRA weights got an all-zero gradient: the step trains nothing")
    if PROFILE:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step(batches[0])
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
        print(f"--- profile {size} {precision} {variant}\n{table}")
        if PROFILE_DIR:
            name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{size}_{precision}_{variant}")
            Path(PROFILE_DIR, f"profile_{name}.txt").write_text(table)
    med = statistics.median(times)
    tok_s = batch * seq / med
    name = torch.cuda.get_device_name()
    peak_flops = next((v for k, v in PEAK_FLOPS.items() if k in name), float("nan"))
    mfu = tok_s * flops_per_token(cfg, seq) / peak_flops
    del net, opt, batches
    gc.collect()
    torch.cuda.empty_cache()
    return {"size": size, "precision": precision, "variant": variant + fixes, "tok_s": tok_s, "step_ms": med * 1e3,
            "spread_ms": (max(times) - min(times)) * 1e3, "peak_gib": peak / 2**30, "mfu": mfu,
            "loss": float(loss.detach()), "warmup_s": t_warm, "grads": f"{nonzero}/{len(params)}"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="270m,1b")
    ap.add_argument("--precisions", default="bf16,fp16")
    ap.add_argument("--variants", default="hf+peft,edge,edge+ckpt,edge+compile")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--chunk-rows", type=int, default=1024)
    ap.add_argument("--loss-scale", type=float, default=FP16_INIT_LOSS_SCALE,
                    help="fp16: GradScaler's initial scale (edge.finetune's); 0: no loss scaling")
    ap.add_argument("--json", default="", help="write the rows to this JSON file too")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table per run")
    ap.add_argument("--profile-dir", default="", help="also write each profile's table here")
    ap.add_argument("--gpus", type=int, default=0, help="N: `edge finetune` plain vs torchrun x1 and xN "
                    "(overhead, scaling efficiency; bench/finetune_gpus.py says how)")
    ap.add_argument("--cpu", action="store_true", help="with --gpus: processes on the CPU (gloo)")
    ap.add_argument("--model", default="embedded", help="with --gpus: the model spec, or random:270m / random:1b")
    ap.add_argument("--finetune-args", default="", help="with --gpus: more edge finetune flags, e.g. --finetune-args=--full (with the =)")
    ap.add_argument("--data", default="", help="with --gpus: chat JSONL (default: the demo task's chats)")
    ap.add_argument("--precision", default="auto", help="with --gpus: edge finetune --precision")
    ap.add_argument("--skip", type=int, default=5, help="with --gpus: steps left out of tokens/s (warm-up)")
    ap.add_argument("--tok", default="", help="with --gpus and random:SIZE: the tokenizer's folder (default: the embedded model's)")
    ap.add_argument("--work", default="", help="with --gpus: keep the runs' folders here")
    ap.add_argument("--no-x1", action="store_true", help="with --gpus: leave out the torchrun x1 run (the overhead)")
    args = ap.parse_args(argv)
    if args.gpus:
        import finetune_gpus
        from edge.task import TRAIN

        args.data = args.data or str(TRAIN)
        return finetune_gpus.main(args)
    global PROFILE, PROFILE_DIR
    PROFILE, PROFILE_DIR = args.profile, args.profile_dir

    import peft
    import torch
    import transformers

    if not torch.cuda.is_available():
        sys.exit("bench/finetune.py needs a CUDA GPU (see docs/BENCHMARKS.md for the CPU figure)")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"peft {peft.__version__}  batch {args.batch} x seq {args.seq}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            for variant in args.variants.split(","):
                try:
                    r = run_one(size, precision, variant, args.batch, args.seq, args.warmup, args.steps, args.chunk_rows,
                                args.loss_scale)
                except Exception as e:  # an OOM or a compile failure is a result too
                    traceback.print_exc()
                    r = {"size": size, "precision": precision, "variant": variant, "error": f"{type(e).__name__}: {str(e)[:120]}"}
                    import torch as _t
                    gc.collect()
                    _t.cuda.empty_cache()
                rows.append(r)
                print(json.dumps(r), flush=True)
                if args.json:  # after every run, so a run cut short still leaves its rows
                    Path(args.json).write_text(json.dumps(rows, indent=2))
    print()
    print(f"| model | precision | variant | tokens/s | vs hf+peft | peak GiB | vs hf+peft | MFU | step ms (spread) | grads |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next((b for b in rows if b["size"] == r["size"] and b["precision"] == r["precision"]
                     and b["variant"] == "hf+peft" and "error" not in b), None)
        if "error" in r:
            print(f"| {r['size']} | {r['precision']} | {r['variant']} | {r['error']} | | | | | | |")
            continue
        sp = f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        mem = f"{100 * r['peak_gib'] / base['peak_gib']:.0f}%" if base else "-"
        print(f"| {r['size']} | {r['precision']} | {r['variant']} | {r['tok_s']:,.0f} | {sp} | {r['peak_gib']:.2f} | "
              f"{mem} | {100 * r['mfu']:.1f}% | {r['step_ms']:.1f} ({r['spread_ms']:.1f}) | {r['grads']} |")


if __name__ == "__main__":
    main()
