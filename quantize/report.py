"""The quantize report: variants scored against their reference, the front check, report.json/.md and pareto.png.

    from quantize.report import score_variants, read_report
    result = score_variants("ref-F32.gguf", made, Path("q/"), eval_text=text)   # made: quantize_variants(...)
    rows = read_report("q/report.json")["variants"]

Writes into the folder: `report.json` (one row per variant: name, recipe, path, size_bytes, bpw,
kld_mean ± kld_err, kld_median/p90/p95/p99/p999/max, top1, n_scored, ppl, tok_s,
task_accuracy, arm_repack; plus the front check per XL variant), `report.md` (the table, the
front check, what runs repacked on ARM) and `pareto.png` (size vs mean KLD, our recipes,
llama.cpp's and their front). `read_report` is the one reader of report.json in the tree (the
budget, the TUI, the card and the apps read rows through it).
"""

from __future__ import annotations

import json as jsonlib
import math
import time
from pathlib import Path

from edge.fsutil import write_text_atomic

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

def demo_table(rows: list[dict]) -> str:
    lines = [f"{'variant':<28} {'MB':>7} {'bpw':>5} {'KLD':>8} {'p99':>7} {'top1':>6} {'tok/s':>6} {'task':>5}"]
    for r in rows:
        lines.append(f"{r['name'][:28]:<28} {r['size_bytes'] / 1e6:>7.1f} {r['bpw']:>5.2f} "
                     f"{_fmt(r['kld_mean'], '.5f'):>8} {_fmt(r['kld_p99'], '.4f'):>7} {_fmt(r['top1'], '.3f'):>6} "
                     f"{_fmt(r['tok_s'], '.1f'):>6} {_fmt(r.get('task_accuracy'), '.2f'):>5}")
    return "\n".join(lines)


def read_report(source) -> dict:
    """report.json as `write_reports` wrote it: {"variants": [row dicts], "pareto": ..., ...}. The one
    reader of the report in the tree. `source`: its path, or a report already in memory (a dict,
    or a bare list of rows). Rows that are not objects are dropped; an unreadable file or a
    "variants" that is not a list is an EdgeError naming the file."""
    from edge.errors import EdgeError
    from edge.fsutil import read_json

    data = source
    if isinstance(source, (str, Path)):
        data = read_json(source, "quality report", expect=(dict, list), hint="re-run `edge quantize`")
    if isinstance(data, list):
        data = {"variants": data}
    rows = data.get("variants", []) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise EdgeError(f"quality report {source if isinstance(source, (str, Path)) else ''}: expected a list of "
                        f"variants, got {type(rows).__name__}; re-run `edge quantize`")
    return {**data, "variants": [r for r in rows if isinstance(r, dict)]}


def rows_by_file(report) -> dict[str, dict]:
    """The report's rows keyed by their GGUF file's stem (`m-Q4_0` for runs/x/m-Q4_0.gguf), from
    the row's path (older reports: file, gguf or name). `report`: as `read_report` takes it."""
    out = {}
    for r in read_report(report)["variants"]:
        key = next((r[k] for k in ("path", "file", "gguf", "name") if isinstance(r.get(k), str) and r[k]), None)
        if key:
            out[Path(key).name.removesuffix(".gguf")] = r
    return out
