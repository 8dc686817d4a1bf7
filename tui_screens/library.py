"""The TUI's one door into the library: which GGUF files a run has, and their report rows.

Only glue lives here: which files (run.json, else the folder's *.gguf that `edge.budget`
reads as a model), which report entry goes with which file, and thin calls into
`edge.budget`, `edge.readings`, `edge.device`, `edge.push` and `edge.apps`. Every number
comes from those modules, the quantize report (`report.json`, written by `edge quantize`)
or `edge.ggufinfo.inspect_gguf`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.modelinfo import model_info
from edge.errors import EdgeError, NotAModel, printable

REPORT = "report.json"
REPORT_FIELDS = ("recipe", "bpw", "kld_mean", "kld_p99", "top1", "ppl", "tok_s", "task_accuracy")


@dataclass
class Variant:
    """One GGUF file and what the quantize report says about it (None = not measured)."""

    name: str
    path: Path
    size_bytes: int
    recipe: str = ""
    bpw: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    top1: float | None = None
    ppl: float | None = None
    tok_s: float | None = None
    task_accuracy: float | None = None


def _gguf_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.gguf") if p.is_file() and not p.name.startswith("."))


def _run_files(run_dir: Path) -> list[Path]:
    """The run's variants and its reference, as run.json records them (by role, not by name);
    a folder without run.json: every *.gguf in it."""
    from edge.runfolder import MANIFEST, Run

    if not (run_dir / MANIFEST).is_file():
        return _gguf_files(run_dir)
    run = Run.open(run_dir, create=False)
    ref = run.reference()
    return run.variants() + ([ref] if ref is not None and ref.is_file() else [])


def variants(run_dir: Path | None, folder: Path | None) -> tuple[str, list[Variant], Path | None]:
    """(a line saying where the files came from, the variants smallest first, the quality
    report if there is one)."""
    if run_dir is not None:
        if not run_dir.is_dir():
            raise EdgeError(f"run folder {run_dir} does not exist; give a folder made by `edge demo --out`")
        root, files, where = run_dir, _run_files(run_dir), f"run {run_dir}"
    elif folder is not None:
        if not folder.is_dir():
            raise EdgeError(f"folder {folder} does not exist; give a folder that holds .gguf files")
        root, files, where = folder, _gguf_files(folder), f"folder {folder}"
    else:
        from edge.models import embedded_gguf

        path = embedded_gguf()
        root, files, where = path.parent, [path], "the embedded Gemma 3 270M (no --run or --folder given)"
    if not files:
        raise EdgeError(f"no .gguf files in {root}; run `edge export` / `edge quantize` into it first")
    models, skipped = [], []
    for f in files:   # a run also lists non-model GGUFs (the importance matrix): not variants
        try:
            model_info(f)
        except NotAModel:
            skipped.append(f"{f.name} (not a model)")
            continue
        except Exception:  # damaged or odd: listed, and the screens say what is wrong
            pass
        models.append(f)
    files, seen = [], set()
    for f in models:    # one file per name: the budget and the report know variants by file name
        if f.name in seen:
            skipped.append(f"{f} (same name as another)")
            continue
        seen.add(f.name)
        files.append(f)
    if not files:
        raise EdgeError(f"no model .gguf files in {root} (only {', '.join(skipped)}); "
                        "run `edge export` / `edge quantize` into it first")
    if skipped:
        where += f" · not listed: {', '.join(skipped)}"
    by_name: dict[str, dict] = {}
    report: Path | None = root / REPORT
    if report.is_file():
        from quantize.report import rows_by_file

        by_name = rows_by_file(report)
        where += f" · quality from {REPORT}"
    else:
        report = None
    out = []
    for f in files:
        entry = by_name.get(f.stem, {})
        name = entry.get("name")
        v = Variant(name=printable(name, 60) if isinstance(name, str) and name else f.stem, path=f,
                    size_bytes=f.stat().st_size)
        for k in REPORT_FIELDS:  # a value of the wrong type (`"bpw": "abc"`) is left out, never shown
            x = entry.get(k)
            if k == "recipe" and isinstance(x, str):
                setattr(v, k, printable(x, 40))
            elif k != "recipe" and isinstance(x, (int, float)) and not isinstance(x, bool):
                setattr(v, k, x)
        out.append(v)
    out.sort(key=lambda v: v.size_bytes)
    return where, out, report


def bits_per_weight(path: Path) -> float:
    """Bits per weight over all tensors, as `edge inspect` reports it (a damaged or
    truncated file is an EdgeError, shown on the Variants screen)."""
    from edge.ggufinfo import inspect_gguf

    bpw = inspect_gguf(path)["bits_per_weight"]
    if bpw is None:
        raise EdgeError(f"{path} has no tensors; re-export it")
    return float(bpw)


# ---- phones (edge.device, edge.push, edge.apps) -------------------------------------------------
NO_DEVICE_HELP = ("no phone connected: plug it in with USB debugging on (Settings > Developer options) "
                  "and accept the prompt on the phone; `adb devices` should list it. Press r to look again.")


def connected_devices() -> list:
    """`edge.device.list_devices` without the per-phone details (the Devices screen reads
    each phone's full state itself): [DeviceInfo(serial, state, model, note)]."""
    from edge import device

    return device.list_devices(details=False)


def read_state(serial: str):
    """The phone's live state (edge.device.read_state -> edge.readings.DeviceState)."""
    from edge import device

    return device.read_state(serial)


def push_apps() -> list[tuple[str, str]]:
    """(key, title) of every app `edge push --app` knows."""
    from edge.apps import APPS

    return [(key, r.title) for key, r in APPS.items()]


def push(path: Path, app: str, serial: str, *, force: bool, ctx: int, progress, cancel):
    """`edge.push.push`: checks, upload verified with SHA-1 computed on the phone, the app's route."""
    from edge.push import push as push_file

    return push_file(path, app, serial, force=force, ctx=ctx, progress=progress, cancel=cancel)


# ---- budget (edge.budget, edge.readings) ----------------------------------------------------------
def profiles() -> list:
    """The bundled phone profiles (edge.profiles.load_profiles), in file order."""
    from edge.profiles import load_profiles

    return list(load_profiles().values())


def usable_bytes(profile) -> int:
    """What one foreground app can take on this phone, by the budget's rule."""
    from edge.profiles import usable_bytes_for

    return usable_bytes_for(profile.ram_bytes)


@dataclass
class Column:
    """One device of the budget: a profile, a live phone or this machine."""

    key: str
    label: str
    device: object          # edge.profiles.Profile or edge.readings.DeviceState


def budget_devices(live: bool, host: bool) -> tuple[list[Column], list[str]]:
    """Every device to budget for: connected phones first (live state), then this machine,
    then the bundled profiles. Second value: notes on devices that could not be read."""
    from edge.readings import host_state

    out, notes = [], []
    if live:
        try:
            for d in connected_devices():
                if d.state != "device":
                    continue
                try:
                    st = read_state(d.serial)
                    out.append(Column(f"adb:{d.serial}", f"phone: {st.model or d.serial}", st))
                except Exception as e:
                    notes.append(f"{d.serial}: {e}")
        except Exception as e:  # adb missing: budget the profiles anyway
            notes.append(str(e).split(";")[0])
    if host:
        out.append(Column("host", "this machine", host_state()))
    out += [Column(p.key, p.name, p) for p in profiles()]
    return out, notes


@dataclass
class BudgetResult:
    """The verdict grid and, per device, the recommended variant (a file name) and why."""

    variants: list[str]                         # file names
    devices: list[Column]
    verdicts: dict[tuple[str, str], object]     # (device key, file name) -> edge.budget.Verdict
    recommended: dict[str, str | None]          # device key -> file name
    reasons: dict[str, str]
    ctx: int
    notes: list[str]


def budget(paths: list[Path], devices: list[Column], *, ctx: int, report: Path | None,
           notes: list[str] = ()) -> BudgetResult:
    """edge.budget.matrix over every (variant, device), and edge.budget.recommend per device."""
    from edge import budget as b

    infos, skipped = b.read_models(paths)   # one damaged file must not blank the whole grid
    notes = [*notes, *(f"skipped {s}" for s in skipped)]
    names = [Path(i.path).name for i in infos]
    grid = b.matrix(infos, [c.device for c in devices], ctx=ctx)
    verdicts = {(c.key, names[i]): grid[i * len(devices) + j]
                for i in range(len(infos)) for j, c in enumerate(devices)}
    recommended, reasons = {}, {}
    for c in devices:
        r = b.recommend(infos, c.device, report=report, ctx=ctx)
        recommended[c.key], reasons[c.key] = r.choice, r.reason
    return BudgetResult(names, devices, verdicts, recommended, reasons, ctx, list(notes))
