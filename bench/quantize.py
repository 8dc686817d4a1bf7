"""Benchmark: every recipe, with and without an importance matrix, scored against an F32 reference.

    EDGE_CACHE=/tmp/edgecache .venv/bin/python bench/quantize.py --out /tmp/bench-quantize
    .venv/bin/python bench/quantize.py --merged runs/demo/merged --out /tmp/bench-q-ft   # fine-tuned model

Steps: export the model (embedded 270M, or --merged DIR) to F32 GGUF with `edge.export`;
compute an imatrix from edge/data/demo_train.jsonl + edge/data/general.txt; quantize every
recipe (llama.cpp standard + ours) without and with it, timing the quantization; score each
file on held-out text (KLD mean/p99, top-1, ppl, decode tok/s): edge/data/general_eval.txt for the base
model, the demo task's held-out chats (edge/data/demo_eval.jsonl) for a fine-tune, and then the demo task's exact match for the reference, Q4_K_XL (with and
without the imatrix) and Q4_K_M (with and without). Files that come out byte-identical with and without the imatrix (types that ignore
it, like Q8_0) are scored once. Prints the table and the Pareto check, and writes
report.json / report.md / pareto.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/bench-quantize")
    ap.add_argument("--merged", default="", help="a fine-tuned merged model directory (default: embedded base)")
    ap.add_argument("--ref", default="", help="use this F32 GGUF instead of exporting")
    ap.add_argument("--eval-tokens", type=int, default=512)
    ap.add_argument("--text", default="", help="held-out text to score on (.txt or chat .jsonl); default: "
                    "general text for the base model, the demo task's eval chats for --merged")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--task-n", type=int, default=50, help="demo-task eval chats (fine-tuned model only)")
    ap.add_argument("--recipes", default="all")
    ap.add_argument("--reuse", action="store_true",
                    help="keep variant files and imatrix already in --out (their quantize time is not re-measured)")
    args = ap.parse_args()

    from edge.data import eval_text, load_chats
    from edge.evaluate import _llama, evaluate, scored_label, task_accuracy, threads
    from edge.export import export_gguf
    from edge.fsutil import sha256_file
    from edge.models import resolve
    from edge.task import EVAL
    from quantize.cli import expand_recipes, quantize_variants, report_markdown, write_reports
    from quantize.imatrix import DEMO_TRAIN, build_imatrix, load_imatrix

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.time()
    model_dir = Path(args.merged) if args.merged else resolve("embedded")
    ref = Path(args.ref) if args.ref else out / "gemma-3-270m-F32.gguf"
    if not args.ref:
        export_gguf(model_dir, ref, "f32", force=True)
    t_export = time.time() - t0

    t0 = time.time()
    if args.reuse and (out / "imatrix.gguf").is_file():
        im_summary = {"reused": str(out / "imatrix.gguf")}
    else:
        im_summary = build_imatrix(str(model_dir), [str(DEMO_TRAIN)], out / "imatrix.gguf", max_tokens=4096,
                                   chunk=256, force=True, progress=False)
    t_imatrix = time.time() - t0
    im = load_imatrix(out / "imatrix.gguf")

    recipes = expand_recipes([args.recipes])

    def run(sub, imatrix):
        existing, todo = [], []
        for r in recipes:
            f = next((out / sub).glob(f"*-{r.name}.gguf"), None) if args.reuse and (out / sub).is_dir() else None
            if f is not None:
                existing.append({"recipe": r.name, "family": r.family, "path": str(f), "size_bytes": f.stat().st_size,
                                 "seconds": None, "n_fallback": None, "imatrix": imatrix is not None})
            else:
                todo.append(r)
        t0 = time.time()
        made = quantize_variants(ref, todo, out / sub, imatrix=imatrix, force=True, progress=False) if todo else []
        return existing + made, time.time() - t0

    plain, t_plain = run("plain", None)
    withim, t_im = run("imatrix", im)

    made = plain + withim
    sha = {m["path"]: sha256_file(m["path"]) for m in made}
    variants, same_as = {}, {}
    seen = {}
    for m in made:
        key = f"{m['recipe']}{'+im' if m['imatrix'] else ''}"
        if sha[m["path"]] in seen:
            same_as[key] = seen[sha[m["path"]]]
            continue
        seen[sha[m["path"]]] = key
        variants[key] = (m["path"], m["recipe"], m["imatrix"])
    t0 = time.time()
    text_file = args.text or (str(EVAL) if args.merged else "")
    text = eval_text(text_file) if text_file else None
    scores = evaluate(ref, variants, text=text, n_tokens=args.eval_tokens,
                      ctx=args.ctx, speed_tokens=64, progress=False)
    t_eval = time.time() - t0
    fam = {m["path"]: m for m in made}
    rows = []
    for s in scores:
        r = s.as_dict()
        r["family"] = fam[s.path]["family"] if s.path in fam else "reference"
        r["quantize_seconds"] = fam[s.path]["seconds"] if s.path in fam else None
        rows.append(r)
    for key, other in same_as.items():  # identical bytes: same scores, listed under both names
        src = next(r for r in rows if r["name"] == other)
        m = next(m for m in made if f"{m['recipe']}{'+im' if m['imatrix'] else ''}" == key)
        rows.append({**src, "name": key, "path": m["path"], "imatrix": m["imatrix"],
                     "note": f"byte-identical to {other}"})

    task = {}
    if args.merged:
        chats = load_chats(EVAL)[: args.task_n]
        for r in rows:
            if r["name"] in ("reference", "Q4_K_XL", "Q4_K_XL+im", "Q4_K_M", "Q4_K_M+im"):
                with _llama(r["path"], 512, False) as llm:
                    r["task_accuracy"] = task_accuracy(llm, chats)[0]
                task[r["name"]] = r["task_accuracy"]

    title = f"bench/quantize.py on {'fine-tuned ' + model_dir.name if args.merged else 'the embedded Gemma 3 270M'}"
    extra = {"timings_s": {"export": round(t_export, 1), "imatrix": round(t_imatrix, 1),
                           "quantize_plain": round(t_plain, 1), "quantize_imatrix": round(t_im, 1),
                           "evaluate": round(t_eval, 1)},
             "imatrix": im_summary, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
             "threads": threads(), "eval_tokens": args.eval_tokens, "ctx": args.ctx, "task": task,
             "eval_text": text_file or "edge/data/general_eval.txt", "scored": scored_label(text)}
    paths = write_reports(rows, out, title, extra)
    print(report_markdown(rows, paths["pareto"], title, extra["scored"]))
    print(json.dumps(extra, indent=1))
    print("quantize seconds per file:", {Path(m["path"]).parent.name + "/" + m["recipe"]: m["seconds"] for m in made})


if __name__ == "__main__":
    main()
