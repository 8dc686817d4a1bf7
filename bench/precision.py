"""Benchmark the Gemma 3 float16 fixes and the CPU precision policy; prints tables.

    python bench/precision.py gpu  --out DIR      # on a GPU: random weights in the exact 270M / 1B
                                                  # configs, plus a stress case; bf16 vs fixed fp16
                                                  # vs naive fp16: non-finite counts, tokens/s, memory
    python bench/precision.py cpu  --out DIR      # the real 270M, LoRA fine-tune: fp32 vs fixed fp16
                                                  # vs naive fp16; loss curves -> docs/precision_loss.png
    python bench/precision.py policy              # the real 270M on this CPU: bf16 vs fp32 speed and
                                                  # accuracy (what `auto` weighs on a CPU)

"fp16 naive" is what a T4 user gets by loading the model with dtype=float16. "fp16 fixed" is
the same plus `edge.precision.apply_fp16_fixes`. LoRA: r=16, alpha=32, all seven projections,
AdamW lr 2e-4; fp16 runs use torch.amp.GradScaler (the LoRA weights are float32), as
mixed-precision training on a T4 does. Results go to DIR/precision_<mode>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge import gemma3  # noqa: E402
from edge.precision import apply_fp16_fixes, emulate_fp16_matmuls_on_cpu  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))


def _variant(base, name: str):
    """A copy of the fp32 `base` in the precision `name` (fp32, bf16, fp16-naive, fp16-fixed)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(name, torch.float16)
    model = copy.deepcopy(base).to(dtype)
    if name == "fp16-fixed":
        apply_fp16_fixes(model)
    elif name == "fp16-naive":
        emulate_fp16_matmuls_on_cpu(model)  # same matmul arithmetic as the fixed model; no-op on a GPU
    return model


def _residual_max(model, ids) -> float:
    """Largest |value| of the residual stream (decoder-layer outputs) in one forward."""
    import torch

    peak = [0.0]

    def hook(_m, _i, out):
        out = out[0] if isinstance(out, tuple) else out
        peak[0] = max(peak[0], out.detach().abs().max().float().item())

    layers = model.model.layers
    hs = [layer.register_forward_hook(hook) for layer in layers]
    with torch.no_grad():
        model(ids)
    for h in hs:
        h.remove()
    return peak[0]


def _kl_top1(ref_logits, logits):
    import torch.nn.functional as F

    lp = F.log_softmax(ref_logits.float(), -1)
    lq = F.log_softmax(logits.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    top1 = (ref_logits.argmax(-1) == logits.argmax(-1)).float().mean()
    return kl.mean().item(), top1.item()


def _nonfinite(t) -> int:
    import torch

    return int((~torch.isfinite(t)).sum().item())


def _train(model, batches, steps: int, warmup: int, fp16: bool, device: str, time_it: bool = True,
           init_scale: float = 2.0**16):
    """LoRA-train `steps` steps cycling over `batches`; return losses, counts, tokens/s, peak MiB."""
    import torch

    model = _lora(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    scaler = torch.amp.GradScaler(device, init_scale=init_scale, enabled=fp16)
    losses, bad_loss, bad_grad, skipped = [], 0, 0, 0
    tokens = 0
    t0 = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens = 0
        ids = batches[step % len(batches)]
        out = model(input_ids=ids, labels=ids)
        loss = out.loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads_ok = bool(torch.stack([torch.isfinite(p.grad).all() for p in params if p.grad is not None]).all())
        scale_before = scaler.get_scale() if fp16 else 1.0
        scaler.step(opt)
        scaler.update()
        if fp16 and scaler.get_scale() < scale_before:
            skipped += 1
        opt.zero_grad(set_to_none=True)
        lv = loss.detach().float().item()
        losses.append(lv)
        bad_loss += not math.isfinite(lv)
        bad_grad += not grads_ok
        tokens += ids.numel()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0 if t0 is not None else float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return {"losses": losses, "nonfinite_loss_steps": bad_loss, "nonfinite_grad_steps": bad_grad,
            "scaler_skipped_steps": skipped, "tokens_per_s": tokens / elapsed if time_it else None,
            "seconds_per_step": elapsed / max(1, steps - warmup), "peak_mib": peak}


# --- GPU ------------------------------------------------------------------------------------------

def gpu(args) -> dict:
    import torch
    import transformers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    info = {"gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (smoke test)", "torch": torch.__version__,
            "transformers": transformers.__version__, "seq": args.seq, "batch": args.batch,
            "steps": args.steps, "warmup": args.warmup}
    print(json.dumps(info))
    results = []
    configs = {"270M": gemma3.CONFIG_270M, "1B": gemma3.CONFIG_1B,
               "tiny": dict(gemma3.CONFIG_270M, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=16)}
    for cname in args.configs.split(","):
        cfg = Gemma3TextConfig(**configs[cname], layer_types=gemma3.layer_types(configs[cname]["num_hidden_layers"]),
                               bos_token_id=gemma3.BOS_ID, eos_token_id=gemma3.EOS_ID, pad_token_id=gemma3.PAD_ID)
        torch.manual_seed(0)
        with torch.device(dev):
            base = Gemma3ForCausalLM(cfg).float().eval()
        g = torch.Generator(device="cpu").manual_seed(1)
        batches = [torch.randint(4, cfg.vocab_size, (args.batch, args.seq), generator=g).to(dev) for _ in range(4)]
        eval_ids = batches[0][:1]
        for case in ("plain", "stress"):
            if case == "stress":
                # Drive the residual stream past 65,504 the way the real model does: large post-norm
                # scales make the branch outputs added to the residual large (real 270M: 19,866 per
                # branch, 103,795 in the stream). Scale so the fp32 residual peaks near 3 x FP16_MAX.
                norms = [m for n, m in base.named_modules()
                         if n.endswith(("post_attention_layernorm", "post_feedforward_layernorm"))]
                with torch.no_grad():
                    for m in norms:
                        m.weight.fill_(999.0)  # (1 + w) = 1000
                    r = _residual_max(base, eval_ids)
                    s = 1000.0 * 3 * gemma3.FP16_MAX / r
                    for m in norms:
                        m.weight.fill_(s - 1.0)
            resid = _residual_max(base, eval_ids)
            with torch.no_grad():
                ref = base(eval_ids).logits.float()
            print(f"{cname} {case}: fp32 residual max {resid:,.0f}")
            order = ["bf16", "fp16-fixed", "fp16-naive"] + ["bf16", "fp16-fixed"] * (args.repeat - 1)
            for i, name in enumerate(order):
                model = _variant(base, name)
                with torch.no_grad():
                    logits = model(eval_ids).logits
                nf = _nonfinite(logits)
                kl, top1 = _kl_top1(ref, logits) if nf == 0 else (float("nan"), float("nan"))
                del logits
                if dev == "cuda":
                    torch.cuda.empty_cache()
                tr = _train(model, batches, args.steps + args.warmup, args.warmup, name.startswith("fp16"), dev)
                row = {"config": cname, "case": case, "precision": name, "pass": 1 + (i >= 3) * ((i - 3) // 2 + 1),
                       "residual_max_fp32": resid,
                       "nonfinite_logits": nf, "logits_total": int(ref.numel()), "kl_vs_fp32": kl,
                       "top1_vs_fp32": top1, **tr}
                results.append(row)
                print(_row(row), flush=True)
                del model
            del ref
        del base
        if dev == "cuda":
            torch.cuda.empty_cache()
    summary = {}
    for cname in args.configs.split(","):
        for case in ("plain", "stress"):
            sel = [r for r in results if r["config"] == cname and r["case"] == case]
            tb = sum(r["tokens_per_s"] for r in sel if r["precision"] == "bf16")
            tf = sum(r["tokens_per_s"] for r in sel if r["precision"] == "fp16-fixed")
            summary[f"{cname} {case}"] = {"fixed_over_bf16_speed": tf / tb,
                                          "passes": sum(r["precision"] == "bf16" for r in sel)}
    out = {"info": info, "results": results, "summary": summary}
    _table(results)
    print("\nfixed fp16 speed / bf16 speed (all passes pooled):")
    for k, v in summary.items():
        print(f"  {k}: {v['fixed_over_bf16_speed']:.3f} ({v['passes']} passes)")
    return out


def _row(r) -> str:
    return (f"{r['config']:>4} {r['case']:>6} {r['precision']:>10} | resid {r['residual_max_fp32']:>9,.0f} | "
            f"nonfinite logits {r['nonfinite_logits']:>10,} | KL {r['kl_vs_fp32']:.2e} top1 {r['top1_vs_fp32']:.4f} | "
            f"bad loss/grad steps {r['nonfinite_loss_steps']}/{r['nonfinite_grad_steps']} "
            f"skipped {r['scaler_skipped_steps']} | {r['tokens_per_s']:>9,.0f} tok/s | {r['peak_mib']:>7,.0f} MiB | "
            f"loss {r['losses'][0]:.3f}->{r['losses'][-1]:.3f}")


def _table(results) -> None:
    print("\n| config | case | precision | fp32 residual max | non-finite logits (eval) | KL vs fp32 | top-1 vs fp32 "
          "| steps w/ non-finite loss | tokens/s (train) | vs bf16 | peak MiB | loss first -> last |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    bf = {(r["config"], r["case"]): r["tokens_per_s"] for r in results if r["precision"] == "bf16" and r.get("pass", 1) == 1}
    for r in results:
        rel = r["tokens_per_s"] / bf[(r["config"], r["case"])] if (r["config"], r["case"]) in bf else float("nan")
        tag = f" (pass {r['pass']})" if r.get("pass", 1) > 1 else ""
        print(f"| {r['config']} | {r['case']} | {r['precision']}{tag} | {r['residual_max_fp32']:,.0f} | "
              f"{r['nonfinite_logits']:,} / {r['logits_total']:,} | {r['kl_vs_fp32']:.2e} | {r['top1_vs_fp32']:.4f} | "
              f"{r['nonfinite_loss_steps']} / {len(r['losses'])} | {r['tokens_per_s']:,.0f} | {rel:.2f}x | "
              f"{r['peak_mib']:,.0f} | {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} |")


# --- CPU: the real 270M -----------------------------------------------------------------------

def _real_batches(tok, batch: int, seq: int, n: int):
    """Chat examples of the demo task, rendered and cut to `seq` tokens, no padding."""
    import torch

    from edge.data import load_chats, render

    chats = load_chats(ROOT / "edge" / "textdata" / "demo_train.jsonl")
    rows = []
    for chat in chats:
        ids, _ = render(tok, chat)
        if len(ids) >= seq:
            rows.append(list(ids[:seq]))
    if len(rows) < batch * n:
        raise SystemExit(f"only {len(rows)} demo chats of >= {seq} tokens; lower --seq")
    return [torch.tensor(rows[i * batch:(i + 1) * batch]) for i in range(n)]


def cpu(args) -> dict:
    import torch

    from edge.models import load

    torch.manual_seed(0)
    base, tok = load("embedded")
    batches = _real_batches(tok, args.batch, args.seq, 4)
    eval_ids = torch.cat(batches[:2])
    resid = _residual_max(base, eval_ids)
    with torch.no_grad():
        ref = base(eval_ids).logits.float()
    info = {"cpu": platform.processor() or "", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "seq": args.seq, "batch": args.batch, "steps": args.steps, "load_before": os.getloadavg()}
    print(json.dumps(info))
    print(f"real 270M: fp32 residual max {resid:,.0f} over {eval_ids.numel()} tokens")
    results = []
    if args.merge:  # keep the rows of an earlier run (same data, same seed), add the ones asked for now
        for path in args.merge.split(","):
            results += json.loads(Path(path).read_text())["results"]
    for name in [n for n in args.only.split(",") if n]:
        model = _variant(base, name)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(eval_ids).logits
        fwd = time.perf_counter() - t0
        nf = _nonfinite(logits)
        kl, top1 = _kl_top1(ref, logits) if nf == 0 else (float("nan"), float("nan"))
        steps = args.steps if name != "fp16-naive" else args.naive_steps
        torch.manual_seed(0)
        tr = _train(model, batches, steps, 1, name.startswith("fp16"), "cpu", init_scale=args.init_scale)
        label = name if args.init_scale == 2.0**16 or not name.startswith("fp16") else \
            f"{name} (GradScaler init {args.init_scale:g})"
        row = {"config": "270M real", "case": "demo chats", "precision": label, "residual_max_fp32": resid,
               "nonfinite_logits": nf, "logits_total": int(ref.numel()), "kl_vs_fp32": kl, "top1_vs_fp32": top1,
               "forward_s": fwd, "init_scale": args.init_scale if name.startswith("fp16") else None, **tr}
        results.append(row)
        print(_row(row), flush=True)
        print("losses:", json.dumps(tr["losses"]), flush=True)
        del model
    info["load_after"] = os.getloadavg()
    f32 = next((r["losses"] for r in results if r["precision"] == "fp32"), None)
    summary = {}
    for r in results:
        if f32 and r["precision"].startswith("fp16-fixed"):
            diffs = [abs(a - b) for a, b in zip(f32, r["losses"])]
            summary[r["precision"]] = {"max_abs_loss_diff_vs_fp32": max(diffs),
                                       "mean_abs_loss_diff_vs_fp32": sum(diffs) / len(diffs),
                                       "last10_mean_abs_diff": sum(diffs[-10:]) / len(diffs[-10:])}
    print(json.dumps(summary, indent=1))
    _table_cpu(results)
    if args.png:
        _plot(results, Path(args.png), info)
    return {"info": info, "results": results, "summary": summary}


def _table_cpu(results) -> None:
    print("\n| precision | non-finite logits (eval) | KL vs fp32 | top-1 vs fp32 | steps w/ non-finite loss "
          "| steps w/ non-finite grads | s/step | loss first -> last |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['precision']} | {r['nonfinite_logits']:,} / {r['logits_total']:,} | {r['kl_vs_fp32']:.2e} | "
              f"{r['top1_vs_fp32']:.4f} | {r['nonfinite_loss_steps']} / {len(r['losses'])} | "
              f"{r['nonfinite_grad_steps']} / {len(r['losses'])} | {r['seconds_per_step']:.1f} | "
              f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} |")


def _plot(results, png: Path, info) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r, style in zip(results, ("-", "--", ":", "-.")):
        losses = [x if math.isfinite(x) else float("nan") for x in r["losses"]]
        label = r["precision"] + (f" (loss non-finite at {r['nonfinite_loss_steps']} of {len(losses)} steps)"
                                  if r["nonfinite_loss_steps"] else "")
        ax.plot(range(1, len(losses) + 1), losses, style, marker="o" if r["nonfinite_loss_steps"] else None,
                label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Gemma 3 270M (real weights), LoRA r=16, batch {info['batch']} x {info['seq']} tokens, CPU")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)
    print(f"wrote {png}")


# --- CPU policy: bf16 vs fp32 on the real 270M -------------------------------------------------------

def policy(args) -> dict:
    import torch

    from edge.models import load
    from edge.precision import cpu_choice

    base, tok = load("embedded")
    batches = _real_batches(tok, args.batch, args.seq, 4)
    eval_ids = torch.cat(batches[:2])
    with torch.no_grad():
        ref = base(eval_ids).logits.float()
    rows = []
    for name in ("fp32", "bf16"):
        model = _variant(base, name)
        with torch.no_grad():
            model(eval_ids[:1])  # warm-up
            t0 = time.perf_counter()
            logits = model(eval_ids).logits
            fwd = time.perf_counter() - t0
        kl, top1 = _kl_top1(ref, logits)
        torch.manual_seed(0)
        tr = _train(model, batches, args.steps, 1, False, "cpu")
        rows.append({"precision": name, "forward_s": fwd, "kl_vs_fp32": kl, "top1_vs_fp32": top1,
                     "seconds_per_step": tr["seconds_per_step"], "losses": tr["losses"]})
        print(rows[-1], flush=True)
    micro = cpu_choice(remeasure=True)
    print("\n| precision | forward s | LoRA train s/step | KL vs fp32 | top-1 vs fp32 | loss first -> last |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['forward_s']:.2f} | {r['seconds_per_step']:.2f} | {r['kl_vs_fp32']:.2e} | "
              f"{r['top1_vs_fp32']:.4f} | {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} |")
    print(f"\nquick measurement used by `auto`: {micro['reason']}; load {os.getloadavg()}")
    return {"rows": rows, "cpu_choice": micro}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["gpu", "cpu", "policy"])
    ap.add_argument("--out", default="out", help="folder for precision_<mode>.json")
    ap.add_argument("--configs", default="270M,1B", help="gpu: which configs")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (gpu 1024, cpu 24)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (gpu 4, cpu 4)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (gpu: timed steps, 20; cpu 30)")
    ap.add_argument("--repeat", type=int, default=2, help="gpu: time bf16 and fixed fp16 this many times each")
    ap.add_argument("--device", default="cuda", help="gpu: cuda, or cpu for a smoke test with --configs tiny")
    ap.add_argument("--warmup", type=int, default=3, help="gpu: untimed steps first")
    ap.add_argument("--naive-steps", type=int, default=10, help="cpu: steps for naive fp16 (NaN from step 1)")
    ap.add_argument("--only", default="fp32,fp16-fixed,fp16-naive", help="cpu: which precisions to run")
    ap.add_argument("--merge", default="", help="cpu: earlier precision_cpu.json files (comma-separated) whose rows to keep")
    ap.add_argument("--init-scale", type=float, default=2.0**16, help="fp16 runs: GradScaler's initial scale")
    ap.add_argument("--png", default=str(ROOT / "docs" / "precision_loss.png"), help="cpu: loss-curve PNG")
    args = ap.parse_args()
    defaults = {"gpu": (1024, 4, 20), "cpu": (24, 4, 30), "policy": (24, 4, 8)}[args.mode]
    args.seq = args.seq or defaults[0]
    args.batch = args.batch or defaults[1]
    args.steps = args.steps or defaults[2]
    result = {"gpu": gpu, "cpu": cpu, "policy": policy}[args.mode](args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"precision_{args.mode}.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
