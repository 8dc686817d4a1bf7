"""Our phone decode-speed prediction held against published measurements.

Takes bench/phones.toml (published decode speeds of Gemma 3 270M/1B and models of the same size
and kind, measured with llama.cpp or an app built on it, on named phones, each with its source)
and the phone profiles in edge/profiles/. Prints, per row, the published speed, our prediction with
the calibration in `edge.phonespeed.PHONE_SPEED`, the prediction of a fit that did NOT see that row
(leave-one-out), and the errors; then the medians, and the fit on all rows, which is what
`edge.phonespeed.PHONE_SPEED` must hold (tests/test_budget.py checks it).

    .venv/bin/python bench/phones.py            # markdown table, as in docs/BENCHMARKS.md
    .venv/bin/python bench/phones.py --json

The model (edge.phonespeed.PhoneSpeedModel): one token reads every weight once (the tied output head
included), at a fraction of the DRAM's theoretical bandwidth that depends on the SoC family, and
each layer costs a fixed extra time (thread synchronisation, the small ops between the matrix
products) that scales with the phone's speed class, counted as bytes that would take as long:

    tokens/s = efficiency[family] x bandwidth / (bytes per token + n_layers x layer_bytes)

What is calibrated: the efficiency per SoC family and layer_bytes, by least squares on the log of
the speed. Thread counts cannot be calibrated: no source here states one that varies.
Sustained (throttled) speed: no source read gives one for these models, so nothing is fitted.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.phonespeed import PHONE_SPEED, PhoneSpeedModel, soc_family  # noqa: E402
from edge.profiles import load_profiles  # noqa: E402
from edge.errors import EdgeError  # noqa: E402

TABLE = Path(__file__).with_name("phones.toml")
MIN_FAMILY_ROWS = 2        # a family with fewer training rows uses the all-rows efficiency ("*")
LAYER_BYTES_GRID = [i * 0.1e6 for i in range(0, 301)]    # 0 .. 30 MB per layer, 0.1 MB steps


@dataclass
class Row:
    """One published measurement, joined with its model and its phone's profile."""

    phone: str
    model: str
    decode_tok_s: float
    runtime: str
    threads: str
    ctx: str
    source: str
    note: str
    bytes_per_token: float
    n_layers: int
    bandwidth_gbs: float
    family: str
    bandwidth_sourced: bool


def load_table(path: Path = TABLE, profiles=None) -> list[Row]:
    """Read bench/phones.toml; every row needs a source, a known model and a known phone profile."""
    data = tomllib.loads(path.read_text())
    models = {}
    for m in data.get("model", []):
        for key in ("key", "params", "n_layers", "bytes_per_weight", "source"):
            if key not in m:
                raise EdgeError(f"{path}: a [[model]] has no {key!r}")
        models[m["key"]] = m
    profiles = profiles or load_profiles()
    rows = []
    for i, r in enumerate(data.get("row", []), 1):
        for key in ("phone", "model", "decode_tok_s", "runtime", "threads", "ctx", "source"):
            if key not in r or r[key] in ("", None):
                raise EdgeError(f"{path}: row {i} has no {key!r}; every row says where its number came from")
        if not str(r["source"]).startswith("https://"):
            raise EdgeError(f"{path}: row {i}: source {r['source']!r} is not a link")
        if r["model"] not in models:
            raise EdgeError(f"{path}: row {i}: unknown model {r['model']!r}")
        if r["phone"] not in profiles:
            raise EdgeError(f"{path}: row {i}: no profile edge/profiles/{r['phone']}.toml")
        m, p = models[r["model"]], profiles[r["phone"]]
        rows.append(Row(phone=r["phone"], model=r["model"], decode_tok_s=float(r["decode_tok_s"]),
                        runtime=r["runtime"], threads=r["threads"], ctx=r["ctx"], source=r["source"],
                        note=r.get("note", ""), bytes_per_token=m["params"] * m["bytes_per_weight"],
                        n_layers=m["n_layers"], bandwidth_gbs=p.bandwidth_gbs, family=soc_family(p.soc),
                        bandwidth_sourced=p.bandwidth_sourced))
    return rows


def predict(model: PhoneSpeedModel, row: Row) -> float:
    return model.tok_s(row.bytes_per_token, row.n_layers, row.bandwidth_gbs, row.family)


def _log_loss(model: PhoneSpeedModel, rows: list[Row]) -> float:
    return sum(math.log(predict(model, r) / r.decode_tok_s) ** 2 for r in rows)


def _best_efficiency(rows: list[Row], layer_bytes: float) -> float:
    """The one efficiency that minimises the squared log error of `rows` (golden-section search)."""
    def loss(log_e):
        m = PhoneSpeedModel({"*": math.exp(log_e)}, layer_bytes)
        return sum(math.log(m.tok_s(r.bytes_per_token, r.n_layers, r.bandwidth_gbs, "*") / r.decode_tok_s) ** 2
                   for r in rows)
    lo, hi = math.log(0.02), math.log(2.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def fit(rows: list[Row]) -> PhoneSpeedModel:
    """Efficiency per SoC family (families with >= MIN_FAMILY_ROWS rows; '*' from all rows) and one
    per-layer cost, minimising the squared log error over `rows`."""
    best = None
    families = sorted({r.family for r in rows})
    for c in LAYER_BYTES_GRID:
        eff = {"*": _best_efficiency(rows, c)}
        for f in families:
            fam = [r for r in rows if r.family == f]
            if len(fam) >= MIN_FAMILY_ROWS:
                eff[f] = _best_efficiency(fam, c)
        model = PhoneSpeedModel(eff, c)
        loss = _log_loss(model, rows)
        if best is None or loss < best[0]:
            best = (loss, model)
    return best[1]


def leave_one_out(rows: list[Row]) -> list[float]:
    """Each row's prediction from a fit on all the other rows."""
    return [predict(fit(rows[:i] + rows[i + 1:]), r) for i, r in enumerate(rows)]


def _err(pred: float, meas: float) -> float:
    return pred / meas - 1


def old_prediction(row: Row) -> float:
    """What edge budget predicted before this calibration: 0.55 x the theoretical bandwidth (a
    streaming-read fraction) x 18.8/28 (llama.cpp decode vs streaming read on the project machine),
    no per-layer time."""
    return row.bandwidth_gbs * 0.55 * (18.8 / 28.0) * 1e9 / row.bytes_per_token


def run(rows: list[Row]) -> dict:
    full = fit(rows)
    loo = leave_one_out(rows)
    out = []
    for r, held in zip(rows, loo):
        ours = predict(PHONE_SPEED, r)
        out.append({**asdict(r), "ours_tok_s": ours, "ours_err": _err(ours, r.decode_tok_s),
                    "held_out_tok_s": held, "held_out_err": _err(held, r.decode_tok_s),
                    "old_tok_s": old_prediction(r), "old_err": _err(old_prediction(r), r.decode_tok_s)})
    stat = lambda f, key: f(abs(o[key]) for o in out)  # noqa: E731
    keys = {"held_out": "held_out_err", "shipped": "ours_err", "old": "old_err"}
    return {"rows": out, "fit": {"efficiency": full.efficiency, "layer_bytes": full.layer_bytes},
            "shipped": {"efficiency": PHONE_SPEED.efficiency, "layer_bytes": PHONE_SPEED.layer_bytes},
            "median_abs_err": {k: stat(statistics.median, v) for k, v in keys.items()},
            "mean_abs_err": {k: stat(statistics.fmean, v) for k, v in keys.items()},
            "max_abs_err": {k: stat(max, v) for k, v in keys.items()},
            "sustained_rows": 0, "prompt_rows": 0}


def markdown(res: dict) -> str:
    lines = ["| phone | SoC family | model | runtime | threads / n_ctx | published tok/s | ours | err | held-out | err | before | err | source |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in res["rows"]:
        bw = f"{o['bandwidth_gbs']:g} GB/s" + ("" if o["bandwidth_sourced"] else " (estimate)")
        lines.append(f"| {o['phone']} ({bw}) | {o['family']} | {o['model']} | {o['runtime']} | {o['threads']} / {o['ctx']} "
                     f"| {o['decode_tok_s']:g} | {o['ours_tok_s']:.1f} | {o['ours_err']:+.0%} "
                     f"| {o['held_out_tok_s']:.1f} | {o['held_out_err']:+.0%} | {o['old_tok_s']:.1f} | {o['old_err']:+.0%} "
                     f"| [link]({o['source']}) |")
    f = res["fit"]
    eff = ", ".join(f"{k} {v:.3f}" for k, v in sorted(f["efficiency"].items()))
    lines += ["", "| |error| over the rows | median | mean | worst |", "|---|---:|---:|---:|"]
    for key, label in (("held_out", "held-out: each row predicted by a fit without it (leave-one-out)"),
                       ("shipped", f"shipped calibration (fitted on all {len(res['rows'])} rows: in-sample)"),
                       ("old", "the model before this calibration (never fitted to these rows)")):
        lines.append(f"| {label} | {res['median_abs_err'][key]:.0%} | {res['mean_abs_err'][key]:.0%} "
                     f"| {res['max_abs_err'][key]:.0%} |")
    lines += ["",
              f"fit on all rows: efficiency {eff}; per-layer cost {f['layer_bytes'] / 1e6:.1f} MB of reading",
              "sustained (throttled) rows: none published for these models in the sources read; prompt-speed rows: none"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    res = run(load_table())
    print(json.dumps(res, indent=2) if args.json else markdown(res))


if __name__ == "__main__":
    main()
