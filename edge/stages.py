"""The stages of `edge run`: each a small function that reads what earlier stages recorded in the
run folder, calls the library, and returns what it made (an `Outcome`); edge/pipeline.py runs
them in order and records the outcomes in run.json.

A stage here knows its inputs by role (`c.run.reference()`, `c.run.variants()`, ...), never by
guessing a file name, and knows nothing of the stages around it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edge.profiles import DEFAULT_DEVICES
from edge.errors import EdgeError
from edge.runfolder import Run, digest

if TYPE_CHECKING:
    from edge.card import CardFacts

DEFAULT_EPOCHS = 3.0


@dataclass
class RunSettings:
    """Every setting of `edge run` (a --config TOML holds the same names; flags override it)."""

    data: str = ""                 # chats: JSONL/JSON/CSV/Parquet, a datasets folder or a cached hub dataset
    out: str = ""                  # the run folder
    eval: str = ""                 # held-out chats (default: a split of --data)
    model: str = "embedded"
    full: bool = False             # full fine-tuning instead of LoRA
    steps: int = 0                 # 0: from epochs
    epochs: float = 0.0            # 0 with steps 0: DEFAULT_EPOCHS
    batch_size: int = 8
    lr: float = 2e-4
    precision: str = "auto"
    recipes: tuple[str, ...] = ()  # () : quantize.recipes.DEMO_NAMES
    devices: tuple[str, ...] = DEFAULT_DEVICES
    ctx: int = 4096
    push: str = ""
    serial: str = ""
    publish: str = ""
    private: bool | None = None
    eval_fraction: float = 0.1
    seed: int = 0
    accuracy: bool = False         # exact match of greedy replies on the eval chats (short answers)
    eval_tokens: int = 512
    eval_ctx: int = 256
    keep_reference: bool = False   # keep the F32 reference GGUF after scoring (about 1 GB for the 270M)
    name: str = ""                 # files are named <family>-<name>-<RECIPE>.gguf (default: the run folder's name)
    gpus: int = 0                  # fine-tune on N GPUs, one process each (torchrun); in no stage's key: same result

    def __post_init__(self):
        self.recipes = tuple(self.recipes or ())
        self.devices = tuple(self.devices or ())
        if not self.data:
            raise EdgeError("--data is required: your chats (JSONL/JSON/CSV/Parquet, a datasets folder or a hub id)")
        if not self.out:
            raise EdgeError("--out is required: the run folder (e.g. runs/mine)")
        for flag, value, lo in (("--steps", self.steps, 0), ("--epochs", self.epochs, 0), ("--batch-size", self.batch_size, 1),
                                ("--ctx", self.ctx, 1), ("--eval-tokens", self.eval_tokens, 1),
                                ("--eval-ctx", self.eval_ctx, 16), ("--gpus", self.gpus, 0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < lo or not math.isfinite(value):
                raise EdgeError(f"{flag} {value!r} must be a number >= {lo}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise EdgeError(f"--lr {self.lr!r} must be between 0 and 1 (e.g. 2e-4)")
        if not 0 <= self.eval_fraction < 1:
            raise EdgeError(f"--eval-fraction {self.eval_fraction!r} must be in [0, 1)")
        from edge.precision import NAMES, dtype_name

        self.precision = dtype_name(self.precision, "--precision", NAMES)  # edge.precision's names and aliases
        if self.push:
            from edge.apps import APPS

            if self.push not in APPS:
                raise EdgeError(f"--push {self.push!r}: use one of {', '.join(APPS)}")
        if self.publish:
            from edge.publish import check_repo_id

            check_repo_id(self.publish)
            if self.private is None:
                raise EdgeError("--publish needs --private or --public: say who may see the repo")
        if self.name:
            from edge.fsutil import safe_name

            safe_name(self.name, "--name")

    @property
    def epochs_or_default(self) -> float:
        return self.epochs or (0.0 if self.steps else DEFAULT_EPOCHS)


def slug(s: str) -> str:
    """A run folder's name as part of a file name (spaces and other characters become '-')."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.")
    return cleaned[:64]


# ---- the context every stage gets -------------------------------------------------------------
@dataclass
class Ctx:
    run: Run
    s: RunSettings
    say: Callable[[str], None]
    keys: dict = field(default_factory=dict)       # stage -> key in this run
    prev: dict = field(default_factory=dict)       # this stage's run.json entry before it started
    base: dict = field(default_factory=dict)       # public identity of the base model
    cache: dict = field(default_factory=dict)      # loaded objects shared between stages in one process

    def checksum(self, source: str) -> str:
        """source_checksum, once per source in this run (the data stage's key and record share it)."""
        sums = self.cache.setdefault("checksums", {})
        if source not in sums:
            sums[source] = source_checksum(source)
        return sums[source]

    @property
    def label(self) -> str:
        """File stem of this run's GGUFs: <family>-<run name>, e.g. gemma-3-270m-mine."""
        return f"{self.base['family']}-{slug(self.s.name or self.run.name) or 'run'}"


@dataclass
class Outcome:
    """What a stage made: recorded in run.json by the driver, printed in the summary."""

    summary: str
    outputs: dict = field(default_factory=dict)     # role -> path(s)
    inputs: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)       # run.json "summary"
    table: str = ""


# ---- stages ---------------------------------------------------------------------------------
def source_checksum(source: str) -> str:
    """sha256 of a data file; for a folder, a digest of its files' names, sizes and mtimes."""
    from edge.fsutil import sha256_file

    p = Path(source)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        return digest([(str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                       for f in sorted(p.rglob("*")) if f.is_file()])
    return digest(source)   # a cached hub dataset id


def stage_data(c: Ctx) -> Outcome:
    """Read the chats in whatever format they come, write data/train.jsonl and data/eval.jsonl."""
    from edge.data import write_chats

    chats, detected = c.cache["chats"][c.s.data]
    c.say(f"data: {c.s.data}: {detected}")
    if c.s.eval:
        held, held_detected = c.cache["chats"][c.s.eval]
        c.say(f"eval: {c.s.eval}: {held_detected}")
        train, split = chats, f"--eval {Path(c.s.eval).name}"
    else:
        order = list(range(len(chats)))
        random.Random(c.s.seed).shuffle(order)
        n_eval = min(200, max(1, round(len(chats) * c.s.eval_fraction))) if len(chats) >= 5 else 0
        held = [chats[i] for i in sorted(order[:n_eval])]
        train = [chats[i] for i in sorted(order[n_eval:])]
        split = f"{n_eval} of {len(chats)} chats held out (seed {c.s.seed})"
        c.say(f"eval: no --eval given: {split}")
    train_file = write_chats(train, c.run.path("data", "train.jsonl"))
    eval_file = write_chats(held, c.run.path("data", "eval.jsonl")) if held else None
    facts = {"detected": detected, "train_chats": len(train), "eval_chats": len(held), "split": split,
             "name": Path(c.s.data).name, "sha256": c.checksum(c.s.data)}
    return Outcome(f"{len(train)} train + {len(held)} eval chats ({detected.split(':')[0]})",
                   outputs={"train": train_file, "eval": eval_file}, facts=facts)


def train_settings(s: RunSettings):
    """The fine-tune's TrainSettings: --steps as given (warm-up a tenth, one eval at the end, as the
    demo has always trained), else --epochs (default 3), which the fine-tune turns into steps
    over its training chats and reports in one line."""
    from edge.finetune import TrainSettings

    common = dict(batch_size=s.batch_size, lr=s.lr, eval_fraction=0.1, seed=s.seed, full=s.full)
    if s.steps:
        return TrainSettings(steps=s.steps, eval_every=s.steps, warmup=max(1, s.steps // 10), **common)
    return TrainSettings(epochs=s.epochs_or_default, **common)


def _eval_chats(c: Ctx):
    from edge.data import load_chats

    f = c.run.output("data", "eval")
    return load_chats(f) if f is not None and f.is_file() and f.stat().st_size else []


def _accuracy(c: Ctx, model, tok, chats) -> float:
    from edge.task import exact_match, split_prompt

    longest = max(len(split_prompt(ch)[1]) for ch in chats)
    acc, _ = exact_match(model, tok, chats, max_new_tokens=min(64, max(12, longest + 2)))
    return acc


def finetune_out(run: Run, full: bool) -> Path:
    """The fine-tune's folder in a run: the adapter, or with --full the whole model (log.jsonl
    and loss.png beside it)."""
    return run.path("model" if full else "adapter")


def stage_finetune(c: Ctx) -> Outcome:
    import torch

    from edge.finetune import apply_precision_fixes, latest_checkpoint, resolve_precision, train
    from edge.models import load

    s = c.s
    train_file = c.run.output("data", "train")
    out = finetune_out(c.run, s.full)
    resume = (c.prev.get("state") == "running" and c.prev.get("key") == c.keys["fine-tune"]
              and latest_checkpoint(out) is not None)
    p = resolve_precision(s.precision)
    chats = _eval_chats(c) if s.accuracy else []
    before = after = None
    loaded = None
    if chats:
        base_model, tok = load(s.model, dtype=p.dtype, device="cuda" if torch.cuda.is_available() else "cpu")
        apply_precision_fixes(base_model, p)
        t0 = time.time()
        before = _accuracy(c, base_model, tok, chats)
        c.say(f"task accuracy before: {before:.0%} (exact match on {len(chats)} eval chats, {time.time() - t0:.0f} s)")
        loaded = (base_model, tok, p)
    settings = train_settings(s)     # checkpoints: 4 per run
    if resume:
        c.say(f"fine-tune: resuming the interrupted fine-tune from {latest_checkpoint(out)}")
    job = dict(model=s.model, data=train_file, out=out, settings=settings, precision=s.precision,
               force=not resume, resume=resume)
    if s.gpus > 1:
        result = _train_on_gpus(c, job, loaded)
    else:
        result = train(**job, loaded=loaded, say=c.say)
    if result.stopped != "done":
        raise KeyboardInterrupt
    if chats:
        t1 = time.time()
        after = _accuracy(c, result.model if result.model is not None else _trained(loaded, out, s.full), loaded[1],
                          chats)
        c.say(f"task accuracy after:  {after:.0%} ({time.time() - t1:.0f} s)")
    from edge.finetune import LOG, META, PLOT, read_meta

    role = "model" if s.full else "adapter"
    files = sorted(f for f in out.iterdir() if f.is_file() and f.name not in (LOG, PLOT)) if s.full else \
        [out / "adapter_model.safetensors", out / "adapter_config.json", out / META]
    n_train = read_meta(out).get("data", {}).get("train") or 1
    epochs = result.steps * s.batch_size / n_train
    facts = {"steps": result.steps, "epochs": round(epochs, 3), "train_loss": result.train_loss,
             "eval_loss": result.eval_loss, "tokens_per_s": result.tokens_per_s, "precision": result.precision}
    if chats:
        facts["task_accuracy"] = {"before": before, "after": after}
    head = f"task accuracy {before:.0%} -> {after:.0%} " if chats else f"loss {result.train_loss:.3g}, "
    return Outcome(head + f"({result.steps} steps, {epochs:.3g} epochs, {result.precision}, "
                   f"{result.tokens_per_s:.0f} tok/s)",
                   outputs={role: out, "file": files, "log": [out / LOG, out / PLOT]}, inputs=[train_file], facts=facts)


def _train_on_gpus(c: Ctx, job: dict, loaded):
    """The fine-tune in `s.gpus` processes, one per GPU (torchrun, edge.distributed): the same
    settings and the same result as one process. A base model loaded here for the accuracy
    waits on the CPU meanwhile."""
    from edge import distributed, trainjob
    from edge.finetune import latest_checkpoint

    spec = trainjob.write_job(c.run.path("fine-tune-job.json"), **job)
    device = None
    if loaded is not None:
        device = next(loaded[0].parameters()).device
        loaded[0].to("cpu")
    distributed.launch(c.s.gpus, [str(spec)], lambda: latest_checkpoint(job["out"]), module="edge.trainjob")
    result = trainjob.read_result(spec)
    for f in (spec, trainjob.result_path(spec)):
        f.unlink(missing_ok=True)
    if loaded is not None:
        loaded[0].to(device)
    return result


def _trained(loaded, out: Path, full: bool):
    """The fine-tuned model that other processes wrote into `out`, for the accuracy after."""
    base, tok, p = loaded
    if full:
        from edge.models import load

        return load(str(out), dtype=p.dtype, device=next(base.parameters()).device)[0]
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(out)).eval()


def stage_merge(c: Ctx) -> Outcome:
    from edge.merge import merge

    adapter = c.run.adapter()
    out = c.run.path("merged")
    res = merge(adapter, out, dtype="fp32", model=c.s.model, force=True, say=c.say)
    files = sorted(p for p in out.iterdir() if p.is_file())
    return Outcome(f"merged into {out.name}/ (fp32, {res.parameters / 1e6:.0f}M parameters, finite)",
                   outputs={"model": out, "file": files}, inputs=[adapter / "adapter_model.safetensors"],
                   facts={"parameters": res.parameters, "max_abs_weight": res.max_abs_weight})


def stage_export(c: Ctx) -> Outcome:
    from edge.chat import complete
    from edge.export import export_gguf
    from edge.task import split_prompt

    model_dir = c.run.model_dir()
    from edge.fsutil import child

    out = child(c.run.path("gguf"), f"{c.label}-F32.gguf")
    data = c.run.entry("data")["summary"]
    prov = {"name": c.label, "basename": c.label, "size_label": c.base["size_label"],
            "base_model": c.base["base_model"], "dataset": data.get("name"),
            "dataset_sha256": data.get("sha256"), "adapter": None if c.s.full else "adapter",
            "method": "full" if c.s.full else "lora"}
    res = export_gguf(model_dir, out, "f32", provenance=prov, force=True, progress=True)
    c.say(f"exported {model_dir.name} -> {out} ({res.size_bytes / 1e6:.0f} MB) in {res.seconds} s")
    chats = _eval_chats(c)
    messages, expected = (split_prompt(chats[0]) if chats else
                          ([{"role": "user", "content": "What is the capital of France?"}], None))
    reply = complete(out, messages, max_tokens=16, greedy=True)
    c.say(f"llama.cpp chat check (greedy): {messages[-1]['content']!r} -> {reply['text']!r}"
          + (f" (expected {expected!r})" if expected is not None else "") + f", {reply['tokens_per_s']:.1f} tok/s")
    return Outcome(f"{out.name} {res.size_bytes / 1e6:.0f} MB in {res.seconds:.0f} s; chats: {reply['text'][:40]!r}",
                   outputs={"reference": out, "modelfile": Path(res.modelfile)},
                   facts={**asdict(res), "path": out.name, "modelfile": Path(res.modelfile).name,
                          "chat_prompt": messages[-1]["content"], "chat_reply": reply["text"], "chat_expected": expected})


def stage_imatrix(c: Ctx) -> Outcome:
    from quantize.imatrix import build_imatrix

    out = c.run.path("imatrix.gguf")
    train_file = c.run.output("data", "train")
    res = build_imatrix(str(c.run.model_dir()), [str(train_file)], out, max_tokens=2048, chunk=256, force=True)
    return Outcome(f"{res['entries']} matrices from {res['tokens']} tokens of your chats",
                   outputs={"imatrix": out}, inputs=[train_file],
                   facts={k: res[k] for k in ("entries", "chunks", "tokens", "seconds")})


def recipe_names(s: RunSettings) -> list[str]:
    from quantize import recipes as R

    return list(s.recipes or R.DEMO_NAMES)


def stage_quantize(c: Ctx) -> Outcome:
    from quantize.variants import expand_recipes, quantize_variants
    from quantize.imatrix import load_imatrix

    ref = c.run.reference()
    made = quantize_variants(ref, expand_recipes(recipe_names(c.s)), c.run.path("gguf"),
                             imatrix=load_imatrix(c.run.imatrix()), force=True)
    from edge.modelfile import modelfile_path, modelfile_text
    from edge.fsutil import write_text_atomic

    # an Ollama Modelfile beside each file people run (`ollama create NAME -f X.Modelfile`)
    modelfiles = [write_text_atomic(modelfile_path(Path(m["path"])), modelfile_text(Path(m["path"]).name))
                  for m in made]
    rel = [{**m, "path": Path(m["path"]).name} for m in made]
    total = sum(m["seconds"] for m in made)
    return Outcome(f"{len(made)} variants in {total:.0f} s",
                   outputs={"variant": [Path(m["path"]) for m in made], "modelfile": modelfiles}, inputs=[],
                   facts={"made": rel, "quantize_seconds": round(total, 1)},
                   table="\n".join(f"warning: {m['warning']}" for m in made if m.get("warning")))


def stage_evaluate(c: Ctx) -> Outcome:
    from edge.data import ChatText
    from quantize.report import demo_table, score_variants

    made = [{**m, "path": str(c.run.path("gguf", m["path"]))} for m in c.run.entry("quantize")["summary"]["made"]]
    chats = _eval_chats(c)
    text = ChatText.of(chats) if chats else None
    res = score_variants(c.run.reference(), made, c.run.root, eval_text=text, eval_tokens=c.s.eval_tokens,
                         ctx=c.s.eval_ctx, task_eval=chats[:20] if (c.s.accuracy and chats) else None,
                         speed_tokens=32, title=f"{c.label}: quantized variants",
                         quantize_seconds=c.run.entry("quantize")["summary"].get("quantize_seconds"))
    best = min((r for r in res["variants"] if r["name"] != "reference" and isinstance(r.get("kld_mean"), float)),
               key=lambda r: r["kld_mean"], default=None)
    summary = f"{len(made)} variants scored in {res['score_seconds']:.0f} s"
    if best:
        summary += f"; closest: {best['recipe']} {best['size_bytes'] / 1e6:.0f} MB, KLD {best['kld_mean']:.4f}"
    notes = "".join(f"\nwarning: {w}" for w in res["warnings"])
    return Outcome(summary, outputs={"report": Path(res["report_json"]), "report_md": Path(res["report_md"]),
                                     "plot": Path(res["pareto_png"])},
                   facts={"score_seconds": res["score_seconds"], "pareto": res.get("pareto"),
                          "eval_tokens": c.s.eval_tokens, "ctx": c.s.eval_ctx},
                   table=demo_table(res["variants"]) + notes)


def stage_budget(c: Ctx) -> Outcome:
    import json

    from edge.budget import matrix, recommend, verdict_table
    from edge.modelinfo import model_info
    from edge.profiles import get_profile
    from edge.fsutil import write_text_atomic

    paths = c.run.variants()
    devices = [get_profile(d) for d in c.s.devices]
    infos = [model_info(p) for p in paths]
    verdicts = matrix(infos, devices, ctx=c.s.ctx)
    report = c.run.report()
    recs = [recommend(infos, d, report=report, ctx=c.s.ctx) for d in devices]
    out = c.run.path("budget.json")
    data = {"ctx": c.s.ctx, "devices": [asdict(d) for d in devices],
            "verdicts": [asdict(v) for v in verdicts], "recommendations": [asdict(r) for r in recs]}
    write_text_atomic(out, json.dumps(data, indent=2, default=str))
    fits = sum(v.verdict == "fits" for v in verdicts)
    table = verdict_table(verdicts, with_variant=True) + "\n" + "\n".join(
        f"recommended on {r.device}: {r.choice or 'none'} ({r.reason})" for r in recs)
    return Outcome(f"{fits}/{len(verdicts)} (variant, phone) pairs fit at n_ctx {c.s.ctx}; budget.json",
                   outputs={"budget": out}, inputs=paths,
                   facts={"fits": fits, "pairs": len(verdicts), "devices": list(c.s.devices),
                          "recommendations": {r.device: r.choice for r in recs}}, table=table)


def card_facts(c: Ctx) -> "CardFacts":
    import json

    from edge.card import CardFacts
    from quantize.report import read_report

    data, ft = c.run.entry("data")["summary"], c.run.entry("fine-tune")
    report = read_report(c.run.report()) if c.run.report() else {}
    budget = json.loads(c.run.budget().read_text()) if c.run.budget() else {}
    rows = [dict(r, path=Path(str(r.get("path", ""))).name) for r in report.get("variants", [])]
    settings = {"steps": ft.get("summary", {}).get("steps"), "epochs": ft.get("summary", {}).get("epochs"),
                "batch size": c.s.batch_size, "learning rate": c.s.lr,
                "precision": ft.get("summary", {}).get("precision")}
    return CardFacts(title=c.label, base_model=c.base["base_model"], method="full" if c.s.full else "LoRA",
                     data={"name": data.get("name"), "sha256": data.get("sha256"), "chats": data.get("train_chats"),
                           "eval_chats": data.get("eval_chats"), "format": data.get("detected", "").split(":")[0]},
                     settings=settings, variants=rows, scored=report.get("scored", ""),
                     budgets=budget.get("verdicts", []), recommendations=budget.get("recommendations", []),
                     ctx=c.s.ctx, repo=c.s.publish)


def stage_card(c: Ctx) -> Outcome:
    from edge.card import render_card
    from edge.fsutil import write_text_atomic

    out = write_text_atomic(c.run.path("README.md"), render_card(card_facts(c)))
    return Outcome("README.md: base model, data, settings, quality, budgets, how to run", outputs={"card": out})


def chosen_variant(c: Ctx) -> Path:
    """The variant recommended on the first --device (else the closest to the reference that exists)."""
    recs = c.run.entry("budget").get("summary", {}).get("recommendations", {})
    by_name = {p.name: p for p in c.run.variants()}
    for d in c.s.devices:
        if recs.get(d) in by_name:
            return by_name[recs[d]]
    raise EdgeError(f"no variant fits {', '.join(c.s.devices)} at n_ctx {c.s.ctx}; nothing to push "
                    "(try a smaller recipe, a smaller --ctx, or push one by hand with `edge push FILE --force`)")


def stage_push(c: Ctx) -> Outcome:
    from edge.push import push

    import posixpath

    from edge.device import upload

    f = chosen_variant(c)
    res = push(f, c.s.push, c.s.serial, ctx=c.s.ctx)
    card = ""
    if res.route in ("shared storage", "tmp"):      # the card beside the file, where the user can open it
        card = posixpath.join(posixpath.dirname(res.remote_path), f"{f.stem}.README.md")
        upload(res.serial, c.run.card(), card)
    for line in res.next_steps if isinstance(res.next_steps, list) else [res.next_steps]:
        if line:
            c.say(line)
    return Outcome(f"{f.name} -> {res.serial}:{res.remote_path or res.route} ({res.mb_per_s:.0f} MB/s, "
                   f"{'verified' if res.verified else 'not verified'})",
                   facts={"file": f.name, "serial": res.serial, "remote_path": res.remote_path, "card": card,
                          "verified": res.verified, "app": c.s.push})


def stage_publish(c: Ctx) -> Outcome:
    from edge.publish import publish

    f = chosen_variant(c)
    url = publish(c.s.publish, [f], c.run.card().read_text(encoding="utf-8"), private=bool(c.s.private), say=c.say)
    return Outcome(f"{f.name} + README.md -> {url}", facts={"repo": c.s.publish, "url": url, "file": f.name,
                                                              "private": bool(c.s.private)})
