"""`edge quantize`: a reference GGUF -> standard and dynamic variants, scored, with a report.

    edge quantize --gguf runs/demo/gguf/ref-F32.gguf --recipe Q4_K_M --recipe XL6.1-Q8_0 --out runs/q
    edge quantize --gguf ref-F32.gguf --recipe all --calib my_chats.jsonl --model runs/demo/merged --out q/
    edge quantize --gguf ref-F32.gguf --recipe dynamic --imatrix imatrix.gguf --out q/ --json

Takes an F32/BF16/F16 GGUF (from `edge export`) and recipe names (quantize/recipes.py; `all`,
`standard` and `dynamic` name groups; a .json file is a custom recipe). Writes into OUT:
`<name>-<RECIPE>.gguf` per recipe, `report.json` (one row per variant: name, recipe, path,
size_bytes, bpw, kld_mean ± kld_err, kld_median/p90/p95/p99/p999/max, top1, n_scored, ppl,
tok_s, task_accuracy, arm_repack), `report.md` (the table, the front check per XL variant, what
runs repacked on ARM) and `pareto.png` (size vs mean KLD, our recipes, llama.cpp's and their front).
An importance matrix is used when given (`--imatrix FILE`) or computed from `--calib` data on
`--model` (the Hugging Face model the GGUF came from). `edge demo` runs `demo_stage`.
"""

from __future__ import annotations

import json as jsonlib
import math
import re
import time
from pathlib import Path

from edge.errors import EdgeError
from edge.fsutil import check_not_input, check_writable, child, safe_name, write_text_atomic
from quantize import recipes as R

QUANTIZED_SOURCE_NOTE = ("the source GGUF is already quantized: requantizing compounds errors; "
                         "export an F32/BF16 reference with `edge export` for real numbers")


def imatrix_note(recipe_objs: list[R.Recipe]) -> str:
    """What to say when recipes that want an importance matrix are quantized without one."""
    names = [r.name for r in recipe_objs if r.wants_imatrix]
    if not names:
        return ""
    return (f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} made for an importance matrix (on a "
            "fine-tune, about half the KLD with one): give --calib YOUR_CHATS.jsonl --model MERGED_DIR")


# --- reading the source -----------------------------------------------------------------------------
def read_tensors(path: str | Path) -> tuple[list[R.TensorInfo], dict]:
    """Tensor names and shapes (ne[0] first) plus a few metadata values, from the GGUF header."""
    from edge.ggufinfo import read_gguf  # fast: gguf-py's reader takes minutes on Gemma's 262k vocab

    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"GGUF {path} not found; give the reference from `edge export`")
    info = read_gguf(path)
    tensors = [R.TensorInfo(t.name, tuple(int(d) for d in t.shape)) for t in info.tensors]
    types = {t.type for t in info.tensors if len(t.shape) > 1}
    meta = {"name": info.metadata.get("general.name"), "arch": info.metadata.get("general.architecture"),
            "quantized": bool(types - {"F32", "F16", "BF16"}),
            "adapter": info.metadata.get("general.edge.adapter"),            # set by `edge export` of a merge
            "base_model": info.metadata.get("general.base_model.0.name")}
    if meta["arch"] != "gemma3":
        raise EdgeError(f"{path} is a {meta['arch']!r} model; these recipes are for Gemma 3 (arch gemma3)")
    return tensors, meta


def base_grid_types(meta: dict) -> dict[str, str]:
    """For a fine-tune of a base that was dequantized from a GGUF (the embedded 270M): that
    GGUF's type per matrix; {} for anything else."""
    if not meta.get("adapter") or not meta.get("base_model"):
        return {}
    try:
        src = jsonlib.loads((Path(meta["base_model"]) / "edge_source.json").read_text())
    except (OSError, ValueError):
        return {}
    from edge.ggufinfo import read_gguf
    from edge.models import embedded_gguf

    try:
        path = embedded_gguf()
    except EdgeError:
        return {}
    if not isinstance(src, dict) or src.get("gguf") != path.name:
        return {}
    return {t.name: t.type for t in read_gguf(path).tensors if len(t.shape) > 1}


def snap_back_warnings(plans: list[R.Plan], base_types: dict[str, str]) -> dict[str, str]:
    """Recipes that give most fine-tuned matrices the very type their dequantized base had:
    re-quantizing rounds each weight back to the base's grid point, erasing the fine-tune."""
    out = {}
    for plan in plans:
        tuned = [n for n in plan.types if n != "token_embd.weight"]   # LoRA does not train the embedding
        same = [n for n in tuned if base_types.get(n) == plan.types[n].name]
        if tuned and len(same) * 4 >= len(tuned):
            kinds = "/".join(sorted({plan.types[n].name for n in same}))
            out[plan.recipe.name] = (f"{plan.recipe.name}: {len(same)} of {len(tuned)} fine-tuned matrices get the type "
                                     f"the base model was dequantized from ({kinds}); re-quantizing rounds them back "
                                     f"onto the base's grid and erases much of the fine-tune; prefer an XL recipe or Q8_0")
    return out


def model_name(path: Path, meta: dict) -> str:
    stem = re.sub(r"[-_.](f32|f16|bf16|q\d.*)$", "", path.stem, flags=re.I)
    stem = re.sub(r"^ref$", "", stem)
    name = stem or (meta.get("name") or "model")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def expand_recipes(names: list[str]) -> list[R.Recipe]:
    out: list[R.Recipe] = []
    for n in names:
        for part in str(n).split(","):
            part = part.strip()
            group = {"all": R.STANDARD_NAMES + R.DYNAMIC_NAMES, "standard": R.STANDARD_NAMES,
                     "dynamic": R.DYNAMIC_NAMES, "demo": R.DEMO_NAMES}.get(part)
            for p in group or ([part] if part else []):
                r = R.get(p)
                if r.name not in [x.name for x in out]:
                    out.append(r)
    if not out:
        raise EdgeError("no recipe given; use --recipe NAME (e.g. XL6.1-Q8_0), 'all', 'standard' or 'dynamic'")
    return out


# --- quantizing --------------------------------------------------------------------------------------
def quantize_variants(src: str | Path, recipes: list[R.Recipe], out_dir: str | Path, *, imatrix=None,
                      force: bool = False, progress: bool = True, nthread: int = 0) -> list[dict]:
    """Quantize `src` once per recipe into out_dir/<name>-<RECIPE>.gguf; returns one dict per file."""
    from tqdm import tqdm

    from quantize.imatrix import check_against
    from quantize.llama import quantize_file

    src, out_dir = Path(src), Path(out_dir)
    tensors, meta = read_tensors(src)
    name = model_name(src, meta)
    plans = [R.resolve(r, tensors, imatrix=imatrix is not None) for r in recipes]  # all recipe errors first
    if imatrix is None and (need := [r.name for r in recipes if r.needs_imatrix]):
        raise EdgeError(f"{', '.join(need)} need{'s' if len(need) == 1 else ''} an importance matrix (llama.cpp refuses "
                        "its 2-bit types without one): give --calib YOUR_CHATS.jsonl --model MERGED_DIR or --imatrix FILE")
    warnings = snap_back_warnings(plans, base_grid_types(meta))
    values = None
    if imatrix is not None:
        check_against(imatrix, tensors)
        values = imatrix.values()
    targets = [child(out_dir, f"{name}-{safe_name(r.name, 'recipe name')}.gguf") for r in recipes]
    for t in targets:
        check_not_input(t, src)
        check_writable(t, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    bar = tqdm(list(zip(recipes, plans, targets)), desc="quantize", unit="file", disable=not progress, leave=False)
    for recipe, plan, target in bar:
        bar.set_postfix_str(recipe.name)
        ftype = R.file_type(plan, tensors) if recipe.rows else recipe.ftype   # general.file_type: what it mostly is
        res = quantize_file(src, target, ftype=ftype, overrides=plan.overrides() if recipe.rows else (),
                            imatrix=values, nthread=nthread, allow_requantize=meta["quantized"], force=True)
        results.append({"recipe": recipe.name, "family": recipe.family, "path": str(target),
                        "size_bytes": res.size_bytes, "seconds": round(res.seconds, 2),
                        "n_fallback": res.n_fallback, "imatrix": values is not None, "file_type": ftype.name,
                        "warning": warnings.get(recipe.name)})
    return results


# --- the report ----------------------------------------------------------------------------------------
KLD_FLOOR = 1e-9  # log-KLD needs a positive value; a reference against itself scores 0


def standard_front(std: list[dict]) -> list[dict]:
    """The standard variants no other standard variant beats (no larger and no worse, one of
    them strictly), by size: the front an XL recipe is judged against."""
    front = []
    for s in std:
        if not any(o is not s and o["size_bytes"] <= s["size_bytes"] and o["kld_mean"] <= s["kld_mean"]
                   and (o["size_bytes"] < s["size_bytes"] or o["kld_mean"] < s["kld_mean"]) for o in std):
            front.append(s)
    return sorted(front, key=lambda s: s["size_bytes"])


def front_kld(front: list[dict], size: float) -> tuple[float, list[str]]:
    """The front's KLD at a file size, and the standard types it comes from: log-KLD linear in
    size between the neighbouring front types; beyond either end, the end type's KLD (a file
    larger than every standard one must beat the largest; one smaller than all, the smallest)."""
    if size <= front[0]["size_bytes"]:
        return front[0]["kld_mean"], [front[0]["name"]]
    if size >= front[-1]["size_bytes"]:
        return front[-1]["kld_mean"], [front[-1]["name"]]
    for a, b in zip(front, front[1:]):
        if a["size_bytes"] <= size <= b["size_bytes"]:
            t = (size - a["size_bytes"]) / (b["size_bytes"] - a["size_bytes"])
            la, lb = math.log(max(a["kld_mean"], KLD_FLOOR)), math.log(max(b["kld_mean"], KLD_FLOOR))
            return float(math.exp(la + t * (lb - la))), [a["name"], b["name"]]
    raise AssertionError("unreachable: front is sorted by size")


def pareto_check(rows: list[dict]) -> list[dict]:
    """The front criterion, per dynamic (XL) variant, against the standard variants made with
    the same imatrix setting. An XL variant passes when
      1. no standard variant is both no larger and no worse (`dominated_by` is empty), and
      2. its mean KLD lies at or below the standard types' front: log-KLD interpolated linearly
         in file size between the neighbouring standard types (`front_kld`, `against`).
    `margin` = front KLD / its KLD (above 1: it wins by that factor; below 1: it loses);
    `beaten_by` names the standard types that make it fail.
    """
    out = []
    for r in rows:
        if r.get("family") != "dynamic" or r.get("kld_mean") is None:
            continue
        std = [s for s in rows if s.get("family") == "llama.cpp" and s.get("kld_mean") is not None
               and bool(s.get("imatrix")) == bool(r.get("imatrix"))]
        if not std:
            out.append({"name": r["name"], "imatrix": r.get("imatrix"), "ok": None, "against": [], "front_kld": None,
                        "margin": None, "dominated_by": [], "beaten_by": [],
                        "verdict": "not judged: no standard type scored with the same imatrix setting"})
            continue
        dominated = sorted((s for s in std if s["size_bytes"] <= r["size_bytes"] and s["kld_mean"] <= r["kld_mean"]),
                           key=lambda s: s["kld_mean"])
        front = standard_front(std)
        fk, against = front_kld(front, r["size_bytes"])
        margin = max(fk, KLD_FLOOR) / max(r["kld_mean"], KLD_FLOOR)
        below = r["kld_mean"] <= fk
        ok = below and not dominated
        size = r["size_bytes"] / 1e6
        where = (f"{against[0]}" if len(against) == 1 else f"the {against[0]}-{against[1]} front")
        if dominated:
            d = dominated[0]
            verdict = (f"FAILS: {d['name']} is no larger ({d['size_bytes'] / 1e6:.1f} vs {size:.1f} MB) and "
                       f"{r['kld_mean'] / max(d['kld_mean'], KLD_FLOOR):.2f}x lower in KLD "
                       f"({d['kld_mean']:.4g} vs {r['kld_mean']:.4g})")
        elif below:
            verdict = (f"passes: {margin:.2f}x below {where} (KLD {r['kld_mean']:.4g} vs {fk:.4g} "
                       f"at {size:.1f} MB)")
        else:
            verdict = (f"FAILS: {1 / margin:.2f}x above {where} (KLD {r['kld_mean']:.4g} vs {fk:.4g} "
                       f"at {size:.1f} MB)")
        out.append({"name": r["name"], "imatrix": r.get("imatrix"), "ok": ok,
                    "against": [d["name"] for d in dominated[:1]] or against, "front_kld": fk, "margin": margin,
                    "dominated_by": [d["name"] for d in dominated],
                    "beaten_by": [d["name"] for d in dominated] or ([] if below else against), "verdict": verdict})
    return out


front_check = pareto_check  # the criterion's name in issue 20


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _kld(r: dict) -> str:
    if r.get("kld_mean") is None:
        return "-"
    return f"{r['kld_mean']:.5f}" + (f" ± {r['kld_err']:.5f}" if r.get("kld_err") else "")


def report_markdown(rows: list[dict], checks: list[dict], title: str = "Quantized variants",
                    scored: str = "held-out text", warnings: list[str] | None = None) -> str:
    lines = [f"# {title}", "",
             "| variant | family | imatrix | size MB | bpw | KLD mean ± err | median | p90 | p99 | p99.9 | max | "
             "same top | ppl | tok/s | task acc |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["size_bytes"]):
        lines.append(f"| {r['name']} | {r.get('family', '')} | {'yes' if r.get('imatrix') else 'no'} | "
                     f"{r['size_bytes'] / 1e6:.1f} | {_fmt(r['bpw'], '.2f')} | {_kld(r)} | "
                     f"{_fmt(r.get('kld_median'), '.5f')} | {_fmt(r.get('kld_p90'), '.4f')} | "
                     f"{_fmt(r['kld_p99'], '.4f')} | {_fmt(r.get('kld_p999'), '.4f')} | {_fmt(r.get('kld_max'), '.3f')} | "
                     f"{_fmt(r['top1'], '.3f')} | {_fmt(r['ppl'], '.3f')} | "
                     f"{_fmt(r['tok_s'], '.1f')} | {_fmt(r.get('task_accuracy'), '.3f')} |")
    repack = [r for r in rows if r.get("arm_repack") and r.get("family") != "reference"]
    if repack:
        lines += ["", "On an ARM phone (llama.cpp's ggml-cpu repack code, CPUs with dotprod/i8mm):", ""]
        lines += [f"- {r['name']}: {r['arm_repack']}" for r in sorted(repack, key=lambda r: -r["size_bytes"])]
    if checks:
        lines += ["", "Front check: an XL variant passes when no llama.cpp type is both no larger and no worse, and "
                      "its mean KLD lies at or below the llama.cpp types' front (log-KLD interpolated linearly in file "
                      "size between neighbouring types; same imatrix setting).", ""]
        for c in checks:
            lines.append(f"- {c['name']}{' (imatrix)' if c['imatrix'] else ''}: {c['verdict']}")
    n = sorted({r.get("n_scored") for r in rows if r.get("n_scored")})
    count = f"{n[0]} scored positions" if len(n) == 1 else ("scored positions: " + ", ".join(map(str, n)) if n else "")
    lines += ["", f"KLD: KL(reference || variant) of next-token distributions on {scored}"
                  f"{', ' + count if count else ''}, nats, with the statistics of llama-perplexity --kl-divergence "
                  "(err: standard error of the mean); same top: both models' most likely token agree; ppl on the "
                  "same positions. tok/s: greedy decode on this CPU (llama.cpp, threads = idle cores)."]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def pareto_png(rows: list[dict], path: str | Path, title: str = "size vs KLD") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"llama.cpp": ("tab:blue", "o", "llama.cpp standard"), "dynamic": ("tab:red", "s", "ours (dynamic XL)")}
    for fam, (color, marker, label) in styles.items():
        for imat in (False, True):
            pts = [r for r in rows if r.get("family") == fam and bool(r.get("imatrix")) == imat and r.get("kld_mean")]
            if not pts:
                continue
            ax.scatter([r["size_bytes"] / 1e6 for r in pts], [r["kld_mean"] for r in pts], color=color,
                       marker=marker, facecolors=color if imat else "none", s=55,
                       label=label + (" + imatrix" if imat else ""))
            for r in pts:
                ax.annotate(r["name"], (r["size_bytes"] / 1e6, r["kld_mean"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
    for imat in (False, True):  # the front each XL recipe is judged against
        std = [r for r in rows if r.get("family") == "llama.cpp" and bool(r.get("imatrix")) == imat and r.get("kld_mean")]
        if len(std) > 1:
            front = standard_front(std)
            ax.plot([r["size_bytes"] / 1e6 for r in front], [r["kld_mean"] for r in front], color="tab:blue",
                    linestyle="-" if imat else "--", linewidth=0.8, alpha=0.6,
                    label="llama.cpp front" + (" + imatrix" if imat else ""))
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KLD vs reference (nats, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name("." + path.name + ".part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def arm_repack(path: str | Path) -> str:
    """Which of a GGUF's matrices llama.cpp repacks on an ARM phone CPU (quantize/repack.py)."""
    from edge.ggufinfo import read_gguf
    from quantize.repack import label

    return label([(t.name, t.type, tuple(int(d) for d in t.shape)) for t in read_gguf(path).tensors])


def write_reports(rows: list[dict], out_dir: Path, title: str, extra: dict | None = None) -> dict:
    from edge.evaluate import few_tokens_warning

    checks = pareto_check(rows)
    data = {"variants": rows, "pareto": checks, **(extra or {})}
    n_scored = min((r["n_scored"] for r in rows if r.get("n_scored")), default=None)
    if n_scored is not None:
        data["n_scored"] = n_scored
        if (few := few_tokens_warning(n_scored)) and few not in data.get("warnings", []):
            data["warnings"] = [few, *data.get("warnings", [])]
    rj = write_text_atomic(out_dir / "report.json", jsonlib.dumps(data, indent=2))
    md = report_markdown(rows, checks, title, data.get("scored", "held-out text"), data.get("warnings"))
    rm = write_text_atomic(out_dir / "report.md", md)
    png = pareto_png(rows, out_dir / "pareto.png", title)
    return {"report_json": str(rj), "report_md": str(rm), "pareto_png": str(png), "pareto": checks,
            "warnings": data.get("warnings", [])}


def run_quantize(ref: str | Path, recipe_objs: list[R.Recipe], out_dir: Path, *, imatrix=None,
                 eval_text: str | None = None, eval_tokens: int = 512, ctx: int = 256, task_eval=None,
                 speed_tokens: int = 64, force: bool = False, progress: bool = True, title: str = "") -> dict:
    """Quantize + evaluate + write the reports; the library function behind the CLI."""
    t0 = time.time()
    made = quantize_variants(ref, recipe_objs, out_dir, imatrix=imatrix, force=force, progress=progress)
    t_quant = time.time() - t0
    result = score_variants(ref, made, out_dir, eval_text=eval_text, eval_tokens=eval_tokens, ctx=ctx,
                            task_eval=task_eval, speed_tokens=speed_tokens, progress=progress, title=title,
                            quantize_seconds=t_quant)
    return {**result, "seconds": round(time.time() - t0, 1)}


def score_variants(ref: str | Path, made: list[dict], out_dir: Path, *, eval_text: str | None = None,
                   eval_tokens: int = 512, ctx: int = 256, task_eval=None, speed_tokens: int = 64,
                   progress: bool = True, title: str = "", quantize_seconds: float | None = None) -> dict:
    """Score the variants `quantize_variants` made against `ref` and write report.json/.md and
    pareto.png into `out_dir`. `score_seconds_total` is the KLD scoring alone (what issue 20
    compares with the quantizing time); `score_seconds` everything here (speed and task runs too)."""
    from edge.evaluate import evaluate, scored_label

    t0 = time.time()
    t_quant = quantize_seconds if quantize_seconds is not None else sum(m["seconds"] for m in made)
    by_path = {m["path"]: m for m in made}
    variants = {Path(m["path"]).stem: (m["path"], m["recipe"], m["imatrix"]) for m in made}
    scores = evaluate(ref, variants, text=eval_text, n_tokens=eval_tokens, ctx=ctx, task_eval=task_eval,
                      speed_tokens=speed_tokens, progress=progress)
    rows = []
    for s in scores:
        row = s.as_dict()
        m = by_path.get(s.path)
        row["family"] = m["family"] if m else "reference"
        row["quantize_seconds"] = m["seconds"] if m else None
        row["arm_repack"] = arm_repack(s.path)
        rows.append(row)
    warnings = [m["warning"] for m in made if m.get("warning")]
    t_score = sum(r["score_seconds"] or 0 for r in rows)
    extra = {"reference": str(ref), "quantize_seconds_total": round(t_quant, 1),
             "score_seconds_total": round(t_score, 1), "scored": scored_label(eval_text),
             "eval_tokens_asked": eval_tokens, "ctx": ctx, "warnings": warnings}
    paths = write_reports(rows, out_dir, title or f"Quantized variants of {Path(ref).name}", extra)
    return {"variants": rows, **paths, "quantize_seconds_total": round(t_quant, 1),
            "score_seconds_total": round(t_score, 1), "score_seconds": round(time.time() - t0, 1)}


def quantize_cmd(*, gguf: str, recipe: list[str], out: str, imatrix: str = "", calib: str = "", model: str = "",
                 eval_tokens: int = 512, text: str = "", task: str = "", no_eval: bool = False, force: bool = False,
                 json: bool = False) -> dict:
    """Quantize a reference GGUF to llama.cpp's standard types and our dynamic XL recipes, with a report.

    Recipes (any case): Q8_0 Q6_K Q5_K_M Q4_K_M Q4_K_S Q3_K_M Q2_K Q4_0 IQ4_NL IQ4_XS IQ3_M IQ2_M
    (llama.cpp's own mixtures) and ours, named XL<body bpw>-<head type> (per-tensor tables in
    quantize/recipes.py); 'all', 'standard', 'dynamic' name groups. Writes
    OUT/<name>-<RECIPE>.gguf, report.json, report.md, pareto.png.

    Args:
        gguf: the reference GGUF (F32/BF16/F16, from `edge export`).
        recipe: a recipe name, a group (all, standard, dynamic) or a recipe .json file.
        out: the folder for the variants and the report.
        imatrix: an importance matrix file (from `edge imatrix`) to quantize with.
        calib: calibration data (chat JSONL or .txt) to compute an importance matrix from (needs --model).
        model: the Hugging Face model the GGUF was exported from ('embedded' or a merged directory).
        eval_tokens: held-out tokens for the KLD / top-1 / perplexity scores.
        text: held-out text to score on: a .txt, or a chat JSONL (e.g. your fine-tune's eval split);
            default: general English text (edge/textdata/general_eval.txt).
        task: a chat JSONL eval set (e.g. edge/textdata/demo_eval.jsonl) for exact-match accuracy.
        no_eval: only quantize; skip the scores and the report.
        force: overwrite existing variant files, report.json, report.md, pareto.png and imatrix.gguf in OUT.
        json: print the result as JSON.
    """
    from quantize.imatrix import build_imatrix, load_imatrix

    ref = Path(gguf)
    out_dir = Path(out)
    if eval_tokens < 16 and not no_eval:
        raise EdgeError(f"--eval-tokens {eval_tokens} is too few to score on; give at least 16 (default 512)")
    recipe_objs = expand_recipes(recipe or [])
    tensors, meta = read_tensors(ref)
    for r in recipe_objs:
        R.resolve(r, tensors)
    if imatrix and calib:
        raise EdgeError("give either --imatrix FILE or --calib FILE (to compute one), not both")
    if calib and not model:
        raise EdgeError("--calib needs --model: the Hugging Face model the GGUF was exported from "
                        "('embedded' or a merged directory)")
    if meta["quantized"] and not json:
        print(f"note: {QUANTIZED_SOURCE_NOTE}")
    if not (imatrix or calib) and not json and (note := imatrix_note(recipe_objs)):
        print(f"note: {note}")
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeError(f"--out {out_dir} is a file; give a folder for the variants and the report")
    # every file this run writes besides the variants (checked in quantize_variants): never
    # overwritten without --force, and checked before any work
    outputs = ([] if no_eval else ["report.json", "report.md", "pareto.png"]) + (["imatrix.gguf"] if calib else [])
    for f in outputs:
        check_not_input(out_dir / f, ref)
        check_writable(out_dir / f, force)
    if calib:
        from quantize.imatrix import check_calibration

        check_calibration([calib])
    if text:
        from edge.fsutil import need_file

        need_file(text, "--text file", "give a .txt or a chat .jsonl to score on")
    if task:
        from edge.data import load_chats

        load_chats(task)
    im = None
    if imatrix:
        im = load_imatrix(imatrix)
    elif calib:
        im_path = out_dir / "imatrix.gguf"
        summary = build_imatrix(model, [calib], im_path, force=True, progress=not json)
        if not json:
            print(f"imatrix: {summary['entries']} matrices from {summary['tokens']} tokens -> {im_path}")
        im = load_imatrix(im_path)
    if no_eval:
        made = quantize_variants(ref, recipe_objs, out_dir, imatrix=im, force=force, progress=not json)
        if not json:
            for m in made:
                print(f"{m['path']}: {m['size_bytes'] / 1e6:.1f} MB in {m['seconds']:.1f} s")
                if m.get("warning"):
                    print(f"warning: {m['warning']}")
        return {"variants": made}
    from edge.data import eval_text

    result = run_quantize(ref, recipe_objs, out_dir, imatrix=im, eval_text=eval_text(text) if text else None,
                          eval_tokens=eval_tokens, task_eval=task or None, force=force, progress=not json)
    if not json:
        print(Path(result["report_md"]).read_text())
        print(f"wrote {result['report_json']}, {result['report_md']}, {result['pareto_png']}")
    return result


def demo_table(rows: list[dict]) -> str:
    lines = [f"{'variant':<28} {'MB':>7} {'bpw':>5} {'KLD':>8} {'p99':>7} {'top1':>6} {'tok/s':>6} {'task':>5}"]
    for r in rows:
        lines.append(f"{r['name'][:28]:<28} {r['size_bytes'] / 1e6:>7.1f} {r['bpw']:>5.2f} "
                     f"{_fmt(r['kld_mean'], '.5f'):>8} {_fmt(r['kld_p99'], '.4f'):>7} {_fmt(r['top1'], '.3f'):>6} "
                     f"{_fmt(r['tok_s'], '.1f'):>6} {_fmt(r.get('task_accuracy'), '.2f'):>5}")
    return "\n".join(lines)
