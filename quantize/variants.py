"""`edge quantize`, the variants stage: a reference GGUF -> standard and dynamic variants, scored, with a report.

    edge quantize --gguf runs/demo/gguf/ref-F32.gguf --recipe Q4_K_M --recipe XL6.2-Q8_0 --out runs/q
    edge quantize --gguf ref-F32.gguf --recipe all --calib my_chats.jsonl --model runs/demo/merged --out q/
    edge quantize --gguf ref-F32.gguf --recipe dynamic --imatrix imatrix.gguf --out q/ --json

    from quantize.variants import expand_recipes, quantize_variants
    made = quantize_variants("ref-F32.gguf", expand_recipes(["demo"]), "q/", imatrix=im)

Takes an F32/BF16/F16 GGUF (from `edge export`) and recipe names (quantize/recipes.py; `all`,
`standard`, `dynamic` and `demo` name groups; a .json file is a custom recipe). Writes into OUT
`<name>-<RECIPE>.gguf` per recipe, then (quantize/report.py) `report.json`, `report.md` and
`pareto.png`. An importance matrix is used when given (`--imatrix FILE`) or computed from
`--calib` data on `--model` (the Hugging Face model the GGUF came from). `edge run` calls
`quantize_variants` and `quantize.report.score_variants` as two stages.
"""

from __future__ import annotations

import json as jsonlib
import re
import time
from pathlib import Path

from edge.errors import EdgeError
from edge.fsutil import check_not_input, check_writable, child, safe_name
from quantize import recipes as R
from quantize.report import score_variants

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
        raise EdgeError("no recipe given; use --recipe NAME (e.g. XL6.2-Q8_0), 'all', 'standard' or 'dynamic'")
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
    if imatrix is None and (need := [r for r in recipes if r.needs_imatrix]):
        raise EdgeError(f"{need[0].name} needs an importance matrix ({need[0].needs_imatrix}): give --calib "
                        "YOUR_CHATS.jsonl --model MERGED_DIR or --imatrix FILE")
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



def quantize_cmd(*, gguf: str, recipe: list[str], out: str, imatrix: str = "", calib: str = "", model: str = "",
                 eval_tokens: int = 512, text: str = "", task: str = "", no_eval: bool = False, force: bool = False,
                 json: bool = False) -> dict:
    """Quantize a reference GGUF to llama.cpp's standard types and our dynamic XL recipes, with a report.

    Recipes (any case): Q8_0 Q6_K Q5_K_M Q4_K_M Q4_K_S Q3_K_M Q2_K Q4_0 IQ4_NL IQ4_XS IQ3_M IQ2_M
    (llama.cpp's own mixtures) and ours, named XL<body bpw>-<head type> (per-tensor tables in
    quantize/recipes.py); 'all', 'standard', 'dynamic' name groups. Refused without an importance
    matrix (give --calib or --imatrix): IQ2_M, XL6.2-Q8_0. Writes OUT/<name>-<RECIPE>.gguf,
    report.json, report.md, pareto.png.

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
