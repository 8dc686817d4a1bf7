"""Benchmark: every recipe, with and without an importance matrix, scored against an F32 reference.

    EDGE_CACHE=/tmp/edgecache .venv/bin/python bench/quantize.py --out /tmp/bench-quantize
    .venv/bin/python bench/quantize.py --merged runs/demo/merged --out /tmp/bench-q-ft   # fine-tuned model

Steps: export the model (embedded 270M, or --merged DIR) to F32 GGUF with `edge.export`;
compute an imatrix from --calib (default edge/textdata/demo_train.jsonl) + edge/textdata/general.txt; quantize every
recipe (llama.cpp standard + ours) without and with it, timing the quantization; score each
file on held-out text (llama-perplexity's KLD statistics, same top token, ppl, decode tok/s):
edge/textdata/general_eval.txt for the base model, the demo task's held-out chats (or --text) for
a fine-tune, and then the task's exact match for --task-recipes. Files that come out
byte-identical with and without the imatrix (types that ignore it, like Q8_0) are scored once.
Prints the table and the front check (quantize.report.pareto_check: each XL variant against the
llama.cpp types' size/KLD front, same imatrix setting), and writes report.json / report.md /
pareto.png into --out. Timings are wall-clock on a possibly shared CPU: compare only the ratios
of one run (scoring vs quantizing).
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
    ap.add_argument("--speed-tokens", type=int, default=64, help="greedy tokens timed per file (0: skip)")
    ap.add_argument("--imatrix-tokens", type=int, default=4096, help="calibration tokens for the imatrix")
    ap.add_argument("--settings", default="both", choices=["both", "plain", "imatrix"],
                    help="quantize without the imatrix, with it, or both")
    ap.add_argument("--task-n", type=int, default=50, help="demo-task eval chats (fine-tuned model only)")
    ap.add_argument("--task-max-tokens", type=int, default=16,
                    help="longest greedy reply for the task's exact match (the demo task's dates: 16; "
                         "bench/make_task2.py's sentences: 48)")
    ap.add_argument("--task-recipes", default="XL6.1-Q8_0,XL6.1-Q8_0+im,Q4_K_M,Q4_K_M+im",
                    help="variants whose task exact match is measured (fine-tuned model only; +im: with the imatrix)")
    ap.add_argument("--calib", default="", help="calibration chats for the imatrix (default: the demo task's train "
                    "split + general text; give the fine-tune's own train split)")
    ap.add_argument("--recipes", default="all")
    ap.add_argument("--reuse", action="store_true",
                    help="keep variant files and imatrix already in --out (their quantize time is not re-measured)")
    args = ap.parse_args()

    from edge.data import eval_text, load_chats
    from edge.evaluate import evaluate, scored_label, task_accuracy
    from edge.llamacpp import threads
    from edge.llamacpp import Model
    from edge.export import export_gguf
    from edge.fsutil import sha256_file
    from edge.models import resolve
    from edge.task import EVAL
    from quantize.report import arm_repack, report_markdown, write_reports
    from quantize.variants import expand_recipes, quantize_variants
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
        im_summary = build_imatrix(str(model_dir), [args.calib or str(DEMO_TRAIN)], out / "imatrix.gguf",
                                   max_tokens=args.imatrix_tokens, chunk=256, force=True, progress=False)
    t_imatrix = time.time() - t0
    im = load_imatrix(out / "imatrix.gguf")

    recipes = expand_recipes([args.recipes])

    def run(sub, imatrix):
        existing, todo = [], []
        for r in recipes:
            if imatrix is None and r.needs_imatrix:
                continue      # refused without one (IQ2_M by llama.cpp, XL6.2-Q8_0 by us)
            f = next((out / sub).glob(f"*-{r.name}.gguf"), None) if args.reuse and (out / sub).is_dir() else None
            if f is not None:
                existing.append({"recipe": r.name, "family": r.family, "path": str(f), "size_bytes": f.stat().st_size,
                                 "seconds": None, "n_fallback": None, "imatrix": imatrix is not None})
            else:
                todo.append(r)
        t0 = time.time()
        made = quantize_variants(ref, todo, out / sub, imatrix=imatrix, force=True, progress=False) if todo else []
        return existing + made, time.time() - t0

    plain, t_plain = run("plain", None) if args.settings in ("both", "plain") else ([], 0.0)
    withim, t_im = run("imatrix", im) if args.settings in ("both", "imatrix") else ([], 0.0)

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
                      ctx=args.ctx, speed_tokens=args.speed_tokens, progress=False)
    t_eval = time.time() - t0
    fam = {m["path"]: m for m in made}
    rows = []
    for s in scores:
        r = s.as_dict()
        r["family"] = fam[s.path]["family"] if s.path in fam else "reference"
        r["quantize_seconds"] = fam[s.path]["seconds"] if s.path in fam else None
        r["arm_repack"] = arm_repack(s.path)
        rows.append(r)
    for key, other in same_as.items():  # identical bytes: same scores, listed under both names
        src = next(r for r in rows if r["name"] == other)
        m = next(m for m in made if f"{m['recipe']}{'+im' if m['imatrix'] else ''}" == key)
        rows.append({**src, "name": key, "path": m["path"], "imatrix": m["imatrix"],
                     "note": f"byte-identical to {other}"})

    task = {}
    if args.merged:
        chats = load_chats(args.text if args.text.endswith(".jsonl") else EVAL)[: args.task_n]
        for r in rows:
            if r["name"] in ("reference", *args.task_recipes.split(",")):
                with Model(r["path"]) as llm:
                    r["task_accuracy"] = task_accuracy(llm, chats, max_new_tokens=args.task_max_tokens)[0]
                task[r["name"]] = r["task_accuracy"]

    title = f"bench/quantize.py on {'fine-tuned ' + model_dir.name if args.merged else 'the embedded Gemma 3 270M'}"
    t_score = sum(r["score_seconds"] or 0 for r in rows if not r.get("note"))
    extra = {"timings_s": {"export": round(t_export, 1), "imatrix": round(t_imatrix, 1),
                           "quantize_plain": round(t_plain, 1), "quantize_imatrix": round(t_im, 1),
                           "evaluate": round(t_eval, 1), "score": round(t_score, 1)},
             "imatrix": im_summary, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
             "threads": threads(), "eval_tokens": args.eval_tokens, "ctx": args.ctx, "task": task,
             "eval_text": text_file or "edge/textdata/general_eval.txt", "scored": scored_label(text)}
    paths = write_reports(rows, out, title, extra)
    print(report_markdown(rows, paths["pareto"], title, extra["scored"], paths["warnings"]))
    print(json.dumps(extra, indent=1))
    print("quantize seconds per file:", {Path(m["path"]).parent.name + "/" + m["recipe"]: m["seconds"] for m in made})


if __name__ == "__main__":
    main()
