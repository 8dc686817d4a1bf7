"""Our phone decode-speed prediction held against published measurements.

Takes bench/phones.toml (published decode speeds of Gemma 3 270M/1B and models of the same size
and kind, measured with llama.cpp or an app built on it, on named phones, each with its source)
and the phone profiles in edge/profiles/. Prints, per row, the published speed (and the prompt speed
where given), our prediction with the calibration in `edge.phonespeed.PHONE_SPEED`, the prediction
of a fit that did NOT see that row (leave-one-out), the prediction of a fit that saw no row of that
PHONE (leave-one-phone-out: a phone the model has never seen, as a user's is), and the errors; then
the medians, and the fit on all rows, which is what `edge.phonespeed.PHONE_SPEED` must hold
(tests/test_budget.py checks it).

    .venv/bin/python bench/phones.py            # markdown table, as in docs/BENCHMARKS.md
    .venv/bin/python bench/phones.py --json
    .venv/bin/python bench/phones.py --repack   # + predicted vs logged CPU_REPACK buffers (quantize/repack.py)

The model (edge.phonespeed.PhoneSpeedModel): one token reads every matmul weight once (the tied
output head included), at a fraction of the DRAM's theoretical bandwidth that depends on the SoC
family; a weight type whose kernels do more work per byte than Q8_0 costs more (type_cost); each
layer costs a fixed extra time (thread synchronisation, the small ops between the matrix products),
counted as bytes that would take as long; and a row that runs more threads than the phone has big
cores waits on a little in-order core too (edge.phonespeed.LITTLE_CORE_FACTOR, from OmniInfer's
measurement, not fitted):

    tokens/s = efficiency[family] x bandwidth / (sum of bytes x type_cost + n_layers x layer_bytes)

What is calibrated: the efficiency per SoC family, layer_bytes and the cost of each weight type with
at least two rows, by least squares on the log of the speed. The bytes per token of a row are
llama.cpp's own log of its weight buffers on that phone where the source gives it (the PocketPal
rows), else params x bytes per weight. Thread counts: only the PocketPal rows state one (6); that is
what the little-core term uses. Prompt speeds (`--prompt`): edge.phonespeed.PromptSpeedModel, from
which matrices llama.cpp repacks on the phone (quantize/repack.py), fitted on PocketPal's 24 rows.
Sustained (throttled) speed: no source read gives one for these models, so nothing is fitted.
"""

from __future__ import annotations

import argparse
import functools
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
MIB = 1 << 20
MIN_FAMILY_ROWS = 2        # a family with fewer training rows uses the all-rows efficiency ("*")
MIN_TYPE_ROWS = 2          # a weight type with fewer training rows costs as Q8_0 (1)
LAYER_BYTES_COARSE = [i * 1e6 for i in range(0, 31)]     # 0 .. 30 MB per layer, then 0.1 MB steps


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
    qtype: str = "Q8_0"
    prompt_tok_s: float | None = None
    bytes_source: str = "params x bytes per weight"
    little_cores: bool = False      # more threads than the phone's big cores (a stated thread count)

    @property
    def bytes_by_type(self) -> dict:
        return {self.qtype: self.bytes_per_token}


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
        read, how = m["params"] * m["bytes_per_weight"], "params x bytes per weight"
        if "weights_mib" in r:      # llama.cpp's own buffer sizes on that phone, less the embedding
            if "embedding_bytes" not in m:
                raise EdgeError(f"{path}: row {i} gives weights_mib but model {r['model']!r} has no embedding_bytes")
            read = sum(r["weights_mib"].values()) * MIB - m["embedding_bytes"]
            how = "llama.cpp's weight buffers less the embedding"
        rows.append(Row(phone=r["phone"], model=r["model"], decode_tok_s=float(r["decode_tok_s"]),
                        runtime=r["runtime"], threads=r["threads"], ctx=r["ctx"], source=r["source"],
                        note=r.get("note", ""), bytes_per_token=read,
                        n_layers=m["n_layers"], bandwidth_gbs=p.bandwidth_gbs, family=soc_family(p.soc),
                        bandwidth_sourced=p.bandwidth_sourced, qtype=m.get("qtype", "Q8_0"),
                        prompt_tok_s=r.get("prompt_tok_s"), bytes_source=how,
                        little_cores=str(r["threads"]).isdigit() and int(r["threads"]) > p.big_cores))
    return rows


def predict(model: PhoneSpeedModel, row: Row) -> float:
    return model.tok_s(row.bytes_by_type, row.n_layers, row.bandwidth_gbs, row.family, row.little_cores)


def _log_loss(model: PhoneSpeedModel, rows: list[Row]) -> float:
    return sum(math.log(predict(model, r) / r.decode_tok_s) ** 2 for r in rows)


def _golden(loss, lo: float, hi: float, steps: int = 60) -> float:
    """The x in [lo, hi] that minimises a unimodal `loss` (golden-section search)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(steps):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return (lo + hi) / 2


def _efficiency(rows: list[Row], layer_bytes: float, type_cost: dict) -> float:
    """The one efficiency that minimises the squared log error of `rows`: in log space the mean of
    log(measured x cost bytes / bandwidth), exactly."""
    m = PhoneSpeedModel({"*": 1.0}, layer_bytes, type_cost)
    return math.exp(statistics.fmean(math.log(r.decode_tok_s / m.tok_s(r.bytes_by_type, r.n_layers, r.bandwidth_gbs,
                                                                       "*", r.little_cores)) for r in rows))


def _fit_at(rows: list[Row], layer_bytes: float, rounds: int = 4) -> PhoneSpeedModel:
    """Efficiencies and type costs at a fixed per-layer cost, alternating (each step lowers the loss)."""
    families = sorted({r.family for r in rows})
    types = sorted({r.qtype for r in rows if r.qtype != "Q8_0"})
    cost: dict = {}
    model = None
    for _ in range(rounds):
        eff = {"*": _efficiency(rows, layer_bytes, cost)}
        for f in families:
            fam = [r for r in rows if r.family == f]
            if len(fam) >= MIN_FAMILY_ROWS:
                eff[f] = _efficiency(fam, layer_bytes, cost)
        for t in types:
            of_t = [r for r in rows if r.qtype == t]
            if len(of_t) < MIN_TYPE_ROWS:
                continue

            def loss(log_c, t=t, of_t=of_t):
                return _log_loss(PhoneSpeedModel(eff, layer_bytes, {**cost, t: math.exp(log_c)}), of_t)
            cost[t] = math.exp(_golden(loss, math.log(0.3), math.log(5.0), 40))
        model = PhoneSpeedModel(eff, layer_bytes, dict(cost))
    return model


def fit(rows: list[Row]) -> PhoneSpeedModel:
    """Efficiency per SoC family (families with >= MIN_FAMILY_ROWS rows; '*' from all rows), a compute
    cost per weight type (types with >= MIN_TYPE_ROWS rows; Q8_0 is 1 by definition) and one per-layer
    cost, minimising the squared log error over `rows`: a coarse grid over the per-layer cost, then a
    fine one around its best point."""
    def best_of(grid):
        return min(((_log_loss(m, rows), m) for m in (_fit_at(rows, c) for c in grid)), key=lambda x: x[0])[1]
    coarse = best_of(LAYER_BYTES_COARSE)
    c0 = coarse.layer_bytes
    fine = best_of([max(0.0, c0 + d * 0.1e6) for d in range(-9, 10)])
    return PhoneSpeedModel({k: round(v, 4) for k, v in fine.efficiency.items()}, fine.layer_bytes,
                           {k: round(v, 3) for k, v in sorted(fine.type_cost.items())})


def leave_one_out(rows: list[Row]) -> list[float]:
    """Each row's prediction from a fit on all the other rows."""
    return [predict(fit(rows[:i] + rows[i + 1:]), r) for i, r in enumerate(rows)]


def leave_one_phone_out(rows: list[Row]) -> list[float]:
    """Each row's prediction from a fit on the rows of the OTHER phones: a new phone, as a user's is."""
    fits = {ph: fit([r for r in rows if r.phone != ph]) for ph in sorted({r.phone for r in rows})}
    return [predict(fits[r.phone], r) for r in rows]


def _err(pred: float, meas: float) -> float:
    return pred / meas - 1


def old_prediction(row: Row) -> float:
    """What edge budget predicted before this calibration: 0.55 x the theoretical bandwidth (a
    streaming-read fraction) x 18.8/28 (llama.cpp decode vs streaming read on the project machine),
    no per-layer time."""
    return row.bandwidth_gbs * 0.55 * (18.8 / 28.0) * 1e9 / row.bytes_per_token


def run(rows: list[Row]) -> dict:
    full = fit(rows)
    loo, lopo = leave_one_out(rows), leave_one_phone_out(rows)
    out = []
    for r, held, new_phone in zip(rows, loo, lopo):
        ours = predict(PHONE_SPEED, r)
        out.append({**asdict(r), "ours_tok_s": ours, "ours_err": _err(ours, r.decode_tok_s),
                    "held_out_tok_s": held, "held_out_err": _err(held, r.decode_tok_s),
                    "new_phone_tok_s": new_phone, "new_phone_err": _err(new_phone, r.decode_tok_s),
                    "old_tok_s": old_prediction(r), "old_err": _err(old_prediction(r), r.decode_tok_s)})
    stat = lambda f, key: f(abs(o[key]) for o in out)  # noqa: E731
    keys = {"held_out": "held_out_err", "new_phone": "new_phone_err", "shipped": "ours_err", "old": "old_err"}
    return {"rows": out,
            "fit": {"efficiency": full.efficiency, "layer_bytes": full.layer_bytes, "type_cost": full.type_cost},
            "shipped": {"efficiency": PHONE_SPEED.efficiency, "layer_bytes": PHONE_SPEED.layer_bytes,
                        "type_cost": PHONE_SPEED.type_cost},
            "median_abs_err": {k: stat(statistics.median, v) for k, v in keys.items()},
            "mean_abs_err": {k: stat(statistics.fmean, v) for k, v in keys.items()},
            "max_abs_err": {k: stat(max, v) for k, v in keys.items()},
            "sustained_rows": 0, "prompt_rows": sum(r.prompt_tok_s is not None for r in rows)}


def markdown(res: dict) -> str:
    lines = ["| phone | SoC family | model | runtime | threads / n_ctx | MB/token | published tok/s | prompt tok/s "
             "| ours | err | held-out | err | new phone | err | before | err | source |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in res["rows"]:
        bw = f"{o['bandwidth_gbs']:g} GB/s" + ("" if o["bandwidth_sourced"] else " (estimate)")
        pp = "-" if o["prompt_tok_s"] is None else f"{o['prompt_tok_s']:g}"
        lines.append(f"| {o['phone']} ({bw}) | {o['family']} | {o['model']} | {o['runtime']} | {o['threads']} / {o['ctx']} "
                     f"| {o['bytes_per_token'] / 1e6:.0f} | {o['decode_tok_s']:g} | {pp} "
                     f"| {o['ours_tok_s']:.1f} | {o['ours_err']:+.0%} "
                     f"| {o['held_out_tok_s']:.1f} | {o['held_out_err']:+.0%} "
                     f"| {o['new_phone_tok_s']:.1f} | {o['new_phone_err']:+.0%} | {o['old_tok_s']:.1f} | {o['old_err']:+.0%} "
                     f"| [link]({o['source']}) |")
    f = res["fit"]
    eff = ", ".join(f"{k} {v:.3f}" for k, v in sorted(f["efficiency"].items()))
    cost = ", ".join(f"{k} {v:.2f}" for k, v in sorted(f["type_cost"].items())) or "none"
    n = len(res["rows"])
    lines += ["", "| \\|error\\| over the rows | median | mean | worst |", "|---|---:|---:|---:|"]
    for key, label in (("held_out", "held-out: each row predicted by a fit without it (leave-one-out)"),
                       ("new_phone", "new phone: each row predicted by a fit without any row of its phone"),
                       ("shipped", f"shipped calibration (fitted on all {n} rows: in-sample)"),
                       ("old", "the first model (0.37 x bandwidth, no per-layer time; never fitted to these rows)")):
        lines.append(f"| {label} | {res['median_abs_err'][key]:.0%} | {res['mean_abs_err'][key]:.0%} "
                     f"| {res['max_abs_err'][key]:.0%} |")
    lines += ["",
              f"fit on all rows: efficiency {eff}; per-layer cost {f['layer_bytes'] / 1e6:.1f} MB of reading; "
              f"compute cost per byte relative to Q8_0: {cost}",
              f"prompt-speed rows: {res['prompt_rows']} (predicted with --prompt); sustained (throttled) rows: none "
              "published for these models in the sources read"]
    return "\n".join(lines)


# ---- which weights llama.cpp repacks on these phones: quantize/repack.py vs PocketPal's logs ----
# Gemma 3 1B's real shapes (REFERENCE.md: 1152 wide, FFN 6912, 4 heads x 256, 1 KV head, 262,144
# tokens, tied): (ne0, ne1) per tensor name, layer index stripped.
GEMMA3_1B_SHAPES = {"token_embd.weight": (1152, 262144), "attn_q.weight": (1152, 1024), "attn_k.weight": (1152, 256),
                    "attn_v.weight": (1152, 256), "attn_output.weight": (1024, 1152), "ffn_gate.weight": (1152, 6912),
                    "ffn_up.weight": (1152, 6912), "ffn_down.weight": (6912, 1152), "attn_q_norm.weight": (256,),
                    "attn_k_norm.weight": (256,)}
POCKETPAL_FILE_TYPES = {"gemma3-1b-iq2_m": "MOSTLY_IQ2_M", "gemma3-1b-q2_k": "MOSTLY_Q2_K",
                        "gemma3-1b-q3_k_m": "MOSTLY_Q3_K_M", "gemma3-1b-q4_0": "MOSTLY_Q4_0",
                        "gemma3-1b-q4_k_m": "MOSTLY_Q4_K_M", "gemma3-1b-q5_k_m": "MOSTLY_Q5_K_M",
                        "gemma3-1b-q6_k": "MOSTLY_Q6_K", "gemma3-1b-q8_0": "MOSTLY_Q8_0"}


def gemma3_1b_tensors(workdir: Path, file_type: str, imatrix: bool = True) -> list[tuple]:
    """(name, type, shape, bytes) of Gemma 3 1B quantized to `file_type` by this machine's llama.cpp.

    The types come from llama.cpp's own quantizer run on a random-weight file in the 1B's
    configuration (26 blocks, 1152-wide rows, 4 heads and 1 KV head; tests/test_quantize.py's
    writer) with narrower FFN/head/vocabulary counts: llama.cpp picks a type from the tensor's
    name, block index, block count, head counts and row width (its K-quant fallback on 1152-wide
    rows), never from the row count. With `imatrix` (bartowski's files are made with one), an
    importance matrix of ones. The bytes are those of the real 1B shapes in those types."""
    import gguf
    import numpy as np

    from edge.ggufinfo import read_gguf
    from quantize.llama import quantize_file
    from tests.test_quantize import write_gemma3_gguf

    src = workdir / "gemma3-1b-config-F32.gguf"
    if not src.exists():
        write_gemma3_gguf(src, hidden=1152, ffn=256, n_layers=26, n_heads=4, head_dim=64, vocab=256)
    dst = workdir / f"gemma3-1b-config-{file_type}.gguf"
    src_tensors = read_gguf(src).tensors
    im = {t.name: np.ones(t.shape[0], np.float32) for t in src_tensors if len(t.shape) == 2} if imatrix else None
    quantize_file(src, dst, ftype=int(getattr(gguf.LlamaFileType, file_type)), imatrix=im)
    out = []
    for t in read_gguf(dst).tensors:
        short = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        shape = GEMMA3_1B_SHAPES.get(short, (1152,) if len(t.shape) == 1 else None)
        if shape is None:
            raise EdgeError(f"{t.name}: no Gemma 3 1B shape known")
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.type]]
        out.append((t.name, t.type, shape, math.prod(shape) // block * size))
    dst.unlink()
    return out


@functools.lru_cache(maxsize=None)
def _workdir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="edge-phones-")     # lives as long as this process


@functools.lru_cache(maxsize=None)
def pocketpal_tensors(file_type: str) -> tuple:
    """`gemma3_1b_tensors` of one PocketPal file type, made once per process (the 1B configuration is
    written once; each quantization takes a few seconds)."""
    return tuple(gemma3_1b_tensors(Path(_workdir().name), file_type))


def repack_check(rows_toml: Path = TABLE, features=("i8mm", "dotprod")) -> list[dict]:
    """Per PocketPal model: llama.cpp's logged CPU / CPU_REPACK MiB on the phones (no mmap: CPU holds
    every tensor not repacked, the tied embedding included) vs quantize/repack.py's prediction on
    those tensors for an ARM CPU with `features` (Snapdragon 8 Gen 2 and 8 Elite Gen 5: i8mm)."""
    from quantize import repack

    logged: dict[str, dict] = {}
    for r in tomllib.loads(rows_toml.read_text()).get("row", []):
        if "weights_mib" in r:
            if logged.setdefault(r["model"], r["weights_mib"]) != r["weights_mib"]:
                raise EdgeError(f"{rows_toml}: model {r['model']} has two different weights_mib")
    out = []
    for model, mib in logged.items():
        tensors = pocketpal_tensors(POCKETPAL_FILE_TYPES[model])
        rep = repack.repacked(tensors, features)
        rep_bytes = repack.repacked_bytes(tensors, features)
        head = rep_bytes - sum(b for n, _, _, b in tensors if n in rep and n != "token_embd.weight")
        cpu = sum(b for _, _, _, b in tensors) - (rep_bytes - head)      # the embedding stays in CPU
        types = sorted({k.split()[0] for k in rep.values()})
        out.append({"model": model, "logged_cpu_mib": mib.get("CPU", 0.0), "logged_repack_mib": mib.get("CPU_REPACK", 0.0),
                    "cpu_mib": cpu / MIB, "repack_mib": rep_bytes / MIB, "repacked_types": types,
                    "n_repacked": len(rep)})
    return out


def repack_markdown(res: list[dict]) -> str:
    lines = ["| model (bartowski, imatrix) | repacked types (ours) | CPU_REPACK MiB logged | ours | err "
             "| CPU MiB logged | ours | err |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for o in res:
        lines.append(f"| {o['model']} | {', '.join(o['repacked_types'])} | {o['logged_repack_mib']:.2f} "
                     f"| {o['repack_mib']:.2f} | {_err(o['repack_mib'], o['logged_repack_mib']):+.1%} "
                     f"| {o['logged_cpu_mib']:.2f} | {o['cpu_mib']:.2f} | {_err(o['cpu_mib'], o['logged_cpu_mib']):+.1%} |")
    return "\n".join(lines)


# ---- prompt processing: the repack rule in the prompt-speed prediction (edge.phonespeed.PROMPT_SPEED) ----
MIN_PROMPT_TYPE_ROWS = 3     # a plain (not repacked) type needs this many rows where it holds >= 5% of the
                             # body's weights to get its own cost; the others share cost['*']


@dataclass
class PromptRow:
    """One published prompt speed with what the prediction needs: the file's body matrices as this
    machine's llama.cpp quantizes the model's configuration, the phone's repack features and the
    clocks of the cores its threads ran on."""

    phone: str
    model: str
    prompt_tok_s: float
    threads: str
    ghz: float
    by_kernel: dict          # PromptSpeedModel.weights_by_kernel of the file's body on this phone
    source: str


def prompt_rows(rows_toml: Path = TABLE, profiles=None) -> list[PromptRow]:
    """The rows of bench/phones.toml that give a prompt speed (PocketPal's matrix: Gemma 3 1B in eight
    quantizations), each with its file's tensor types (`gemma3_1b_tensors`, about a second per file)."""
    from edge.phonespeed import PromptSpeedModel
    from quantize import repack

    profiles = profiles or load_profiles()
    data = tomllib.loads(rows_toml.read_text())
    out = []
    for r in data.get("row", []):
        if "prompt_tok_s" not in r:
            continue
        if r["model"] not in POCKETPAL_FILE_TYPES:
            raise EdgeError(f"{rows_toml}: prompt speed of {r['model']!r}, whose tensor types are not known "
                            "(bench/phones.py POCKETPAL_FILE_TYPES)")
        p = profiles[r["phone"]]
        threads = int(r["threads"]) if str(r["threads"]).isdigit() else None
        feats = repack.features_of(p.cpu_features)
        body = list(repack.matrices(pocketpal_tensors(POCKETPAL_FILE_TYPES[r["model"]]), head=False))
        out.append(PromptRow(r["phone"], r["model"], float(r["prompt_tok_s"]), str(r["threads"]),
                             sum(p.core_clocks(threads)), PromptSpeedModel.weights_by_kernel(body, feats),
                             r["source"]))
    return out


def _plain_share(row: PromptRow) -> dict:
    """{type: share of the body's weights} of the matrices this phone runs without repacking."""
    total = sum(row.by_kernel.values())
    return {k: n / total for k, n in row.by_kernel.items() if k != "repacked"}


def predict_prompt(model, row: PromptRow) -> float:
    return model.tok_s(row.by_kernel, row.ghz)


def prompt_fit(rows: list[PromptRow]):
    """`rate` and the plain (not repacked) types' costs, by least squares on the relative error of the
    time per prompt token, which is linear in them: ghz / tok_s = (repacked + sum of cost x plain
    weights) / rate. A type with its own cost needs MIN_PROMPT_TYPE_ROWS rows where it holds >= 5% of
    the body; the rest cost cost['*'], the geometric mean of the fitted costs (a type never measured
    is taken to be a typical plain kernel, not a free one)."""
    import numpy as np

    from edge.phonespeed import PromptSpeedModel

    counts: dict = {}
    for r in rows:
        for t, sh in _plain_share(r).items():
            counts[t] = counts.get(t, 0) + (sh >= 0.05)
    types = sorted(t for t, n in counts.items() if n >= MIN_PROMPT_TYPE_ROWS)
    u = np.array([r.ghz / r.prompt_tok_s for r in rows])
    x = np.array([[r.by_kernel.get("repacked", 0)] + [r.by_kernel.get(t, 0) for t in types] for r in rows], float)
    rest = np.array([sum(n for k, n in r.by_kernel.items() if k != "repacked" and k not in types) for r in rows], float)
    star = 4.0
    for _ in range(20):          # cost['*'] and the fit agree after a few rounds
        # u = (x[:, 0] + star x rest) / rate + sum_t x[:, t] cost_t / rate: unknowns 1/rate and cost_t/rate
        a = np.column_stack([x[:, 0] + star * rest, x[:, 1:]]) / u[:, None]
        theta = np.linalg.lstsq(a, np.ones(len(rows)), rcond=None)[0]
        rate, costs = 1 / theta[0], theta[1:] / theta[0]
        new_star = float(np.exp(np.mean(np.log(np.maximum(costs, 1e-3))))) if len(types) else star
        if abs(new_star - star) < 1e-9:
            break
        star = new_star
    cost = {"*": round(star, 3), **{t: round(float(c), 3) for t, c in zip(types, costs)}}
    return PromptSpeedModel(round(float(rate), -6), cost)


def prompt_run(rows: list[PromptRow]) -> dict:
    """Shipped, leave-one-out, new-phone and new-file (a quantization the fit never saw: what a user's own
    recipe is) predictions of every prompt-speed row."""
    from edge.phonespeed import PROMPT_SPEED

    def held(key):
        fits = {k: prompt_fit([r for r in rows if key(r) != k]) for k in sorted({key(r) for r in rows})}
        return [predict_prompt(fits[key(r)], r) for r in rows]

    loo = [predict_prompt(prompt_fit(rows[:i] + rows[i + 1:]), r) for i, r in enumerate(rows)]
    new_phone, new_file = held(lambda r: r.phone), held(lambda r: r.model)
    full = prompt_fit(rows)
    out = []
    for r, a, b, c in zip(rows, loo, new_phone, new_file):
        ours = predict_prompt(PROMPT_SPEED, r)
        plain = _plain_share(r)
        out.append({"phone": r.phone, "model": r.model, "threads": r.threads, "ghz": r.ghz,
                    "prompt_tok_s": r.prompt_tok_s, "plain_share": plain,
                    "ours": ours, "ours_err": _err(ours, r.prompt_tok_s), "held_out": a, "held_out_err": _err(a, r.prompt_tok_s),
                    "new_phone": b, "new_phone_err": _err(b, r.prompt_tok_s),
                    "new_file": c, "new_file_err": _err(c, r.prompt_tok_s), "source": r.source})
    keys = ("held_out", "new_phone", "new_file", "ours")
    return {"rows": out, "fit": {"rate": full.rate, "cost": full.cost},
            "median_abs_err": {k: statistics.median(abs(o[k + "_err"]) for o in out) for k in keys},
            "max_abs_err": {k: max(abs(o[k + "_err"]) for o in out) for k in keys}}


def prompt_markdown(res: dict) -> str:
    lines = ["| phone | model | threads, GHz | not repacked (share of body weights) | published prompt tok/s "
             "| ours | err | held-out | err | new phone | err | new file | err |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for o in res["rows"]:
        plain = ", ".join(f"{t} {v:.0%}" for t, v in sorted(o["plain_share"].items(), key=lambda x: -x[1])) or "none"
        lines.append(f"| {o['phone']} | {o['model']} | {o['threads']}, {o['ghz']:.1f} | {plain} | {o['prompt_tok_s']:g} "
                     f"| {o['ours']:.0f} | {o['ours_err']:+.0%} | {o['held_out']:.0f} | {o['held_out_err']:+.0%} "
                     f"| {o['new_phone']:.0f} | {o['new_phone_err']:+.0%} | {o['new_file']:.0f} | {o['new_file_err']:+.0%} |")
    lines += ["", "| \\|error\\| of prompt speed | median | worst |", "|---|---:|---:|"]
    for key, label in (("held_out", "held-out row (leave-one-out)"), ("new_phone", "new phone (no row of its phone)"),
                       ("new_file", "new file (no row of its quantization)"), ("ours", "shipped (in-sample)")):
        lines.append(f"| {label} | {res['median_abs_err'][key]:.0%} | {res['max_abs_err'][key]:.0%} |")
    f = res["fit"]
    lines += ["", f"fit on all rows: {f['rate'] / 1e9:.2f} G weights/s per GHz on repacked kernels; cost per weight "
              "when not repacked: " + ", ".join(f"{k} {v:.2f}" for k, v in f["cost"].items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--repack", action="store_true", help="also quantize the 1B configuration with this machine's "
                    "llama.cpp and compare the predicted CPU_REPACK buffers with PocketPal's logs (about a minute)")
    ap.add_argument("--prompt", action="store_true", help="also predict the prompt speeds (repack-aware; the "
                    "1B configuration quantized in 8 types by this machine's llama.cpp, one to two minutes)")
    args = ap.parse_args()
    res = run(load_table())
    text = markdown(res)
    if args.repack:
        res["repack"] = repack_check()
        text += "\n\n" + repack_markdown(res["repack"])
    if args.prompt:
        res["prompt"] = prompt_run(prompt_rows())
        text += "\n\n" + prompt_markdown(res["prompt"])
    print(json.dumps(res, indent=2, default=str) if args.json else text)


if __name__ == "__main__":
    main()
