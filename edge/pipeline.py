"""`edge run`: the user's chats in, phone-ready GGUF files, a model card and a recommendation out.

    edge run --data chats.jsonl --out runs/mine
    edge run --data alpaca.json --out runs/mine --recipes XL6.2-Q8_0,Q8_0 --device pixel_7 --push chatterui
    edge run --config run.toml --out runs/mine --from quantize      # redo quantize and what follows

This module is the one place that knows the order of the stages. Each stage is a small
function in edge/stages.py that calls the library (edge.finetune.train, edge.merge.merge,
edge.export.export_gguf, quantize.imatrix.build_imatrix, quantize.variants.quantize_variants /
score_variants, edge.budget, edge.card, edge.push, edge.publish) and returns what to record; no
stage module imports this one.

Stages, in order: data -> fine-tune -> merge (LoRA only) -> export -> imatrix -> quantize ->
evaluate -> budget -> card -> push (with --push) -> publish (with --publish).

Resumable and idempotent: run.json (edge/runfolder.py) records each stage's key, a digest of its
settings and of the keys of the stages it reads (the data by checksum, the base model by
fingerprint). A rerun skips a stage whose key is unchanged and whose outputs are intact; a
changed setting reruns that stage and everything after it; `--from STAGE` forces a stage and
what follows. A fine-tune killed midway resumes from its last checkpoint; every other file is
written under a temporary name, so a kill never leaves a half-written final file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal

from edge.errors import EdgeError
from edge.precision import PrecisionName
from edge.runfolder import Run, digest
from edge.stages import (RunSettings, Ctx, Outcome, recipe_names, stage_budget,
                         stage_card, stage_data, stage_evaluate, stage_export, stage_finetune, stage_imatrix,
                         stage_merge, stage_publish, stage_push, stage_quantize)

STAGE_VERSION = 1     # bump when a stage's outputs change meaning: old runs then redo it


# ---- the order, what each stage depends on, and the settings in its key ---------------------
@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[Ctx], Outcome]
    needs: tuple[str, ...]
    settings: Callable[["Ctx"], dict]
    when: Callable[[RunSettings], bool] = lambda s: True
    files_from: tuple[str, ...] = ()          # stages whose files must exist on disk to run this one


def _data_key(c: Ctx) -> dict:
    s = c.s
    return {"data": c.checksum(s.data), "eval": c.checksum(s.eval) if s.eval else "",
            "eval_fraction": s.eval_fraction, "seed": s.seed}


STAGES: tuple[Stage, ...] = (
    Stage("data", stage_data, (), _data_key),
    Stage("fine-tune", stage_finetune, ("data",),
          lambda c: {"model": c.base["fingerprint"], "full": c.s.full, "steps": c.s.steps,
                     "epochs": c.s.epochs_or_default, "batch_size": c.s.batch_size, "lr": c.s.lr,
                     "precision": c.s.precision, "seed": c.s.seed, "accuracy": c.s.accuracy},
          files_from=("data",)),
    Stage("merge", stage_merge, ("fine-tune",), lambda c: {"dtype": "fp32"}, when=lambda s: not s.full,
          files_from=("fine-tune",)),
    Stage("export", stage_export, ("fine-tune", "merge"), lambda c: {"outtype": "f32", "label": c.label},
          files_from=("merge",)),
    Stage("imatrix", stage_imatrix, ("fine-tune", "merge"), lambda c: {"max_tokens": 2048, "chunk": 256},
          files_from=("merge",)),
    Stage("quantize", stage_quantize, ("export", "imatrix"), lambda c: {"recipes": recipe_names(c.s)},
          files_from=("export", "imatrix")),
    Stage("evaluate", stage_evaluate, ("quantize",),
          lambda c: {"eval_tokens": c.s.eval_tokens, "ctx": c.s.eval_ctx, "accuracy": c.s.accuracy},
          files_from=("export", "quantize")),
    Stage("budget", stage_budget, ("evaluate",), lambda c: {"devices": list(c.s.devices), "ctx": c.s.ctx}),
    Stage("card", stage_card, ("budget",), lambda c: {"publish": c.s.publish}),
    Stage("push", stage_push, ("card",), lambda c: {"app": c.s.push, "serial": c.s.serial},
          when=lambda s: bool(s.push)),
    Stage("publish", stage_publish, ("card",), lambda c: {"repo": c.s.publish, "private": c.s.private},
          when=lambda s: bool(s.publish)),
)
STAGE_NAMES = tuple(st.name for st in STAGES)
StageName = Literal[STAGE_NAMES]   # --from-stage: checked while parsing, any case, "did you mean"


def _check_out(s: RunSettings) -> None:
    """The run folder is new, empty or an earlier run's: a run writes README.md, data/, gguf/ ...
    there, which must never replace a user's own files (`--out .` in a project, or the chats)."""
    from edge.runfolder import MANIFEST

    out = Path(s.out)
    if out.is_dir() and not (out / MANIFEST).is_file():
        try:
            taken = next(iter(out.iterdir()), None)
        except OSError as e:
            raise EdgeError(f"--out {out}: cannot read the folder ({e.strerror})") from None
        if taken is not None:
            raise EdgeError(f"--out {out} holds other files ({taken.name}, ...) and is not a run folder (no "
                            f"{MANIFEST}); give a new or empty folder, or the folder of an earlier `edge run`")
    own = {(out / "data" / name).resolve() for name in ("train.jsonl", "eval.jsonl")}
    for flag, value in (("--data", s.data), ("--eval", s.eval)):
        if value and Path(value).resolve() in own:
            raise EdgeError(f"{flag} {value} is the run's own copy of the chats, which the run rewrites; "
                            "give your original file")


def _check_inputs(s: RunSettings) -> None:
    """Cheap checks before anything heavy is imported or any stage runs."""
    _check_out(s)
    for flag, value in (("--data", s.data), ("--eval", s.eval)):
        if value and not Path(value).exists():
            import re

            if not re.fullmatch(r"[\w.-]+/[\w.-]+", value) or Path(value).suffix:
                raise EdgeError(f"{flag} {value}: no such file or folder")
    from edge.profiles import get_profile

    for d in s.devices:
        get_profile(d)
    if s.recipes:
        from quantize.variants import expand_recipes

        expand_recipes(list(s.recipes))
    if s.gpus:    # N GPUs must be there now (and this process must not be one of several already)
        from edge import distributed

        if distributed.launched():
            raise EdgeError("edge run starts its own processes for the fine-tune: run it once, with --gpus N, "
                            "not under torchrun or accelerate launch")
        distributed.needs_launch(s.gpus)
    if s.push:    # a phone must be there now, not after an hour of work
        from edge.apps import route
        from edge.device import pick_device

        route(s.push)
        pick_device(s.serial)


@dataclass
class RunResult:
    out: str
    stages: list[dict]
    seconds: float
    recommendations: dict = field(default_factory=dict)


def run_pipeline(s: RunSettings, *, from_stage: str = "", say: Callable[[str], None] = print,
                 title: str = "edge run") -> RunResult:
    """Run every stage that is not already finished with the same inputs and settings."""
    if from_stage and from_stage not in STAGE_NAMES:
        raise EdgeError(f"--from {from_stage!r}: use one of {', '.join(STAGE_NAMES)}")
    _check_inputs(s)
    from edge.data import read_chats

    # the chats are read (and every record checked) before the run folder is touched
    chats = {src: read_chats(src, require_reply=src == s.data) for src in filter(None, (s.data, s.eval))}
    from edge.finetune import model_fingerprint
    from edge.models import public_identity, resolve

    # an earlier run's damaged run.json is one line before the model is resolved (it may be
    # converted, minutes); a missing model is one line before a new run folder is made
    run = Run.open(s.out) if Path(s.out).exists() else None
    model_dir = resolve(s.model)
    base = {**public_identity(s.model, model_dir), "fingerprint": model_fingerprint(model_dir)}
    run = run or Run.open(s.out)
    run.data["settings"] = {k: v for k, v in asdict(s).items()}
    c = Ctx(run=run, s=s, say=say, base=base, cache={"chats": chats})
    rows, forced, t_all = [], False, time.time()
    say(f"{title}: writing into {run.root}")
    for st in STAGES:
        if not st.when(s):
            continue
        key = digest({"stage": st.name, "v": STAGE_VERSION, "settings": st.settings(c),
                      "after": [c.keys.get(n, "") for n in st.needs]})
        c.keys[st.name] = key
        forced = forced or st.name == from_stage
        if not forced and run.finished(st.name, key):
            rows.append((st.name, "up to date (skipped)", ""))
            continue
        for dep in st.files_from:    # a reference dropped after scoring is made again when needed
            if run.missing_outputs(dep) and dep in c.keys:
                say(f"\n== {dep} (again: {st.name} needs its files)")
                _run_stage(c, next(x for x in STAGES if x.name == dep), c.keys[dep])
        say(f"\n== {st.name}")
        t0 = time.time()
        out = _run_stage(c, st, key)
        forced = True   # what follows a stage that ran reads its new outputs
        rows.append((st.name, out.summary, f"{time.time() - t0:.0f} s"))
        if out.table:
            say(out.table)
        if st.name == "evaluate" and not s.keep_reference:
            gone = run.drop("export", "reference") + run.drop("export", "modelfile")
            if gone:
                say(f"dropped {gone[0].name} (scored; --keep-reference keeps it)")
    total = time.time() - t_all
    width = max([len(r[0]) for r in rows] + [5])
    lines = ["", "Summary", "-------"] + [f"{n:<{width}}  {t:>6}  {x}" for n, x, t in rows]
    lines.append(f"{'total':<{width}}  {total:>4.0f} s  run folder: {run.root}")
    recs = run.entry("budget").get("summary", {}).get("recommendations", {})
    lines += [f"recommended on {d}: {v or 'none fits'}" for d, v in recs.items()]
    say("\n".join(lines))
    run.data["last_run"] = {"rows": rows, "seconds": round(total, 1)}
    run.save()
    return RunResult(out=str(run.root), stages=[{"stage": n, "summary": x, "time": t} for n, x, t in rows],
                     seconds=total, recommendations=recs)


def _run_stage(c: Ctx, st: Stage, key: str) -> Outcome:
    c.prev = dict(c.run.entry(st.name))
    c.run.begin(st.name, key, st.settings(c))
    t0 = time.time()
    out = st.fn(c)
    c.run.record(st.name, outputs=out.outputs, inputs=out.inputs, settings=st.settings(c),
                 seconds=round(time.time() - t0, 1), summary=out.facts, key=key)
    return out


# ---- the command ----------------------------------------------------------------------------
def load_config(path: str) -> dict:
    """A run.toml: the same names as `edge run`'s flags (underscores or dashes)."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise EdgeError(f"--config {path}: {'a folder, not a run.toml file' if p.is_dir() else 'no such file'}")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise EdgeError(f"--config {path}: not valid TOML ({why})") from None
    except OSError as e:
        raise EdgeError(f"--config {path}: cannot read it ({e.strerror})") from None
    raw = raw.get("run", raw)
    if not isinstance(raw, dict):
        raise EdgeError(f"--config {path}: `run` must be a table ([run]) of settings")
    kinds = {f.name: str(f.type) for f in fields(RunSettings)}
    cfg = {}
    for k, v in raw.items():
        name = k.replace("-", "_")
        name = {"recipe": "recipes", "device": "devices"}.get(name, name)
        if name not in kinds:
            raise EdgeError(f"--config {path}: unknown setting {k!r}; known: {', '.join(sorted(kinds))}")
        cfg[name] = _typed(v, kinds[name], f"--config {path}: {k}")
    return cfg


def _typed(v, kind: str, where: str):
    """A run.toml value checked against its RunSettings field's type (TOML has its own types:
    `full = "no"` must not turn full fine-tuning on, nor `steps = 1.5` pass as a step count)."""
    if kind.startswith("tuple"):    # recipes, devices: "a,b" or ["a", "b"]
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return v
        raise EdgeError(f"{where} must be a list of names or one comma-separated string, not {v!r:.80}")
    want = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "bool | None": (bool,)}.get(kind)
    if want is None:                # a field of another type: RunSettings checks it
        return v
    if isinstance(v, bool) != (bool in want) or not isinstance(v, want):
        words = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
                 "bool | None": "true or false"}
        raise EdgeError(f"{where} must be {words[kind]}, not {v!r:.80}")
    return v


def build_settings(config: str, given: dict, *, private: bool = False, public: bool = False) -> RunSettings:
    """RunSettings from a run.toml (if any) and the flags given (which win). Flags not given are
    None or ""; switches can only turn a setting on."""
    if private and public:
        raise EdgeError("give --private or --public, not both")
    cfg = load_config(config) if config else {}
    merged = {**cfg, **{k: v for k, v in given.items() if v not in (None, "") and not isinstance(v, bool)}}
    for k, v in given.items():
        if isinstance(v, bool):
            merged[k] = bool(v or cfg.get(k, False))
    if private or public:
        merged["private"] = bool(private)
    try:
        return RunSettings(**merged)
    except TypeError as e:
        raise EdgeError(f"bad setting: {e}") from None


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [x.strip() for v in values for x in str(v).split(",") if x.strip()]


def run_cmd(*, data: str = "", out: str = "", eval: str = "", model: str | None = None, full: bool = False,
            steps: int | None = None, epochs: float | None = None, batch_size: int | None = None,
            lr: float | None = None, precision: PrecisionName | None = None, recipes: list[str] | None = None,
            device: list[str] | None = None, ctx: int | None = None, push: str = "", serial: str = "",
            publish: str = "", private: bool = False, public: bool = False, accuracy: bool = False,
            keep_reference: bool = False, name: str = "", gpus: int | None = None, config: str = "",
            from_stage: StageName | None = None, json: bool = False):
    """From your chats to phone-ready GGUF files, a model card and a recommendation, in one resumable command.

    Stages: data -> fine-tune -> merge -> export -> imatrix -> quantize -> evaluate -> budget -> card
    [-> push] [-> publish]. Everything lands in the --out folder (run.json says what, from what).
    Run the same command again after an interruption: finished stages are skipped, a changed
    setting reruns that stage and what follows, `--from-stage STAGE` forces one.

    Args:
        data: your chats: JSONL/JSON/CSV/Parquet in messages, ShareGPT, Alpaca or text form, a datasets folder or a cached hub dataset id.
        out: the run folder (created; an earlier run there is resumed).
        eval: held-out chats to score on (default: 10% of --data, at most 200, held out and recorded).
        model: base model: 'embedded' (default), a local Hugging Face directory or a cached hub id.
        full: full fine-tuning instead of LoRA (nothing to merge).
        steps: optimizer steps (default: from --epochs).
        epochs: passes over the training chats (default: 3 when --steps is not given).
        batch_size: chats per step (default: 8).
        lr: peak learning rate (default: 2e-4).
        precision: auto, bf16, fp16 or fp32 (default: auto; `edge precision` explains).
        recipes: quantization recipes, comma-separated (default: the demo's four, quantize.recipes.DEMO_NAMES; `edge quantize --help` lists them).
        device: a phone profile to budget for (repeatable; default: galaxy_a12, pixel_7, galaxy_s24_ultra).
        ctx: context length n_ctx for the budget (default: 4096).
        push: push the variant recommended on the first --device to this app (chatterui, pocketpal, anythingllm, llamacpp; `edge push --help`).
        serial: the phone's adb serial for --push (optional with one phone connected).
        publish: upload the recommended GGUF and the card to this Hugging Face repo (USER/NAME); needs --private or --public.
        private: with --publish: a private repo.
        public: with --publish: a public repo.
        accuracy: also measure exact-match accuracy of greedy replies on the eval chats (short reference answers).
        keep_reference: keep the F32 reference GGUF after scoring (it is about 1 GB; dropped by default).
        name: the name in file names, <family>-<name>-<RECIPE>.gguf (default: the run folder's name).
        gpus: fine-tune on N GPUs, one process each, through torchrun (default: one); the result is the same, so a run resumes on any number.
        config: a run.toml with any of these settings; flags given here override it.
        from_stage: redo this stage and every later one.
        json: print the result as JSON at the end.
    """
    given = {"data": data, "out": out, "eval": eval, "model": model, "steps": steps, "epochs": epochs,
             "batch_size": batch_size, "lr": lr, "precision": precision, "recipes": _split(recipes),
             "devices": _split(device), "ctx": ctx, "push": push, "serial": serial, "publish": publish,
             "name": name, "gpus": gpus, "full": full, "accuracy": accuracy, "keep_reference": keep_reference}
    settings = build_settings(config, given, private=private, public=public)
    say = (lambda m: None) if json else print
    result = run_pipeline(settings, from_stage=from_stage or "", say=say)
    return asdict(result) if json else None
