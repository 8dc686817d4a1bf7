"""Push a GGUF to a phone and into the app that will run it.

    edge push run/gguf/model-Q4_K_M.gguf --app chatterui            # -> /sdcard/Download/, media scan
    edge push model.gguf --app pocketpal                             # the same, then "Add Local Model"
    edge push model.gguf --app llamacpp --serial 127.0.0.1:5555      # -> /data/local/tmp/llama/
    edge push model.gguf --app anythingllm                           # root / run-as copy into the app
    edge push model.gguf --app anythingllm --publish-hf me/my-gemma  # else: a PUBLIC HF repo

Checks first (the file is a GGUF, our budget says it fits this phone, there is room for it and
for the app's own copy where the app copies on import, the target name is free — each else
`--force`), then `edge.device.upload`:
a temporary name, SHA-1 of every segment computed on the phone, resume after a dropped
link, rename. Routes per app are data in `edge.apps`.

The TUI calls `push(file, app, serial, progress=callback, cancel=event) -> PushResult`.
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edge import apps, device, ggufinfo
from edge.device import Cancelled, Progress, q
from edge.errors import EdgeError, printable

GGUF_MAGIC = b"GGUF"


@dataclass
class PushResult:
    """What `push` did; `next_steps` is what the user does on the phone."""

    file: str
    app: str
    serial: str
    remote_path: str = ""          # where the file now is on the phone ("" for HF-only)
    route: str = ""                # shared storage | tmp | root copy | run-as copy | huggingface
    size_bytes: int = 0
    seconds: float = 0.0
    mb_per_s: float = 0.0
    verified: bool = False         # every segment's checksum on the phone matched
    segments_verified: int = 0
    resumed_at: list[int] = field(default_factory=list)
    retries: int = 0
    budget: str = ""               # fits | tight | does not fit | unknown
    ctx: int = 4096                # the n_ctx the budget verdict was made at
    storage: dict = field(default_factory=dict)   # apps.storage_verdict: need, free, fits
    hf_repo: str = ""
    warnings: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


def check_gguf(path: Path) -> None:
    """A complete, readable GGUF model file (the bounded header walk of `edge.ggufinfo`: every
    count checked against the file, every tensor inside it), else EdgeError: a truncated or
    damaged file is refused, not pushed with a warning."""
    path = Path(path)
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise EdgeError(f"the file name {printable(path.name)!r} is not valid UTF-8, which the phone's "
                        "file system needs; rename the file") from None
    if not path.is_file():
        raise EdgeError(f"{path} is {'a folder' if path.is_dir() else 'not a file'}; give the path of a "
                        ".gguf (e.g. from `edge quantize`)")
    info = ggufinfo.read_gguf(path)
    if not info.tensors:
        raise EdgeError(f"{path} is a GGUF with no tensors, not a model; push a model file")


@contextlib.contextmanager
def _push_lock(serial: str, remote: str):
    """One push at a time to one phone path (on this machine): a second one is refused at once."""
    import hashlib

    from filelock import FileLock, Timeout

    from edge.fsutil import cache_dir

    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{serial}\0{remote}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    lock = FileLock(str(folder / f"push-{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise EdgeError(f"another `edge push` to {serial}:{remote} is running; wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()


def budget_verdict(path: Path, state, ctx: int = 4096) -> tuple[str, str]:
    """(verdict, detail) of `edge.budget.verdict` at n_ctx `ctx`: fits, tight or does not fit; or
    "unknown" when the budget cannot answer (the push then goes on with a warning)."""
    from edge import budget

    try:
        v = budget.verdict(path, state, ctx=ctx)
    except EdgeError as e:
        return "unknown", f"budget: {e}"
    except Exception as e:  # the estimator's bug must not block a push: report it as a warning
        return "unknown", f"budget check failed ({type(e).__name__}: {e})"
    return v.verdict, f"needs {v.peak_bytes / 1e9:.2f} GB at n_ctx {v.ctx}, {v.usable_bytes / 1e9:.2f} GB usable"


def push(file: str | Path, app: str, serial: str = "", *, dest: str = "", force: bool = False,
         ctx: int = 4096, publish_hf: str = "", progress: Callable[[Progress], None] | None = None,
         cancel: threading.Event | None = None, segment_bytes: int = device.SEGMENT_BYTES,
         retries: int = 5) -> PushResult:
    """Push `file` for `app` (chatterui | pocketpal | anythingllm | llamacpp) to the phone `serial`.

    The budget check is made at n_ctx `ctx` (the context the app will be set to).
    `progress(Progress)` is called from this thread with stage push/verify/retry/done and
    bytes done/total/speed/ETA; setting `cancel` stops the push and removes the partial file.
    """
    local = Path(file)
    route = apps.route(app)
    check_gguf(local)
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1:
        raise EdgeError(f"--ctx {ctx!r} must be a positive number of tokens, e.g. 4096")
    if publish_hf and app != "anythingllm":
        raise EdgeError("--publish-hf is only for --app anythingllm (the other apps import local files)")
    size = local.stat().st_size
    report = progress or (lambda p: None)
    t0 = time.monotonic()
    serial = device.pick_device(serial)
    res = PushResult(file=str(local), app=app, serial=serial, size_bytes=size, ctx=ctx)

    # does it fit? (our budget, from the phone's live state)
    try:
        state = device.read_state(serial)
    except EdgeError as e:
        state = None
        res.warnings.append(f"could not read the phone's state: {e}")
    if state is not None:
        res.budget, detail = budget_verdict(local, state, ctx)
        if res.budget == "does not fit" and not force:
            raise EdgeError(f"{local.name} does not fit {state.model or serial} by our budget ({detail}); "
                            f"pick a smaller variant or pass --force to push anyway")
        if res.budget != "fits":
            res.warnings.append(f"budget: {res.budget}" + (f" ({detail})" if detail else ""))

    access = ""
    if route.private:
        if route.package and not apps.installed(serial, route.package):
            res.warnings.append(f"{route.title} ({route.package}) is not installed on the phone")
        access = apps.private_access(serial, route.package)
        if not access:
            if not publish_hf:
                raise EdgeError(f"{route.title} has no local import and this phone is neither rooted nor "
                                f"running a debuggable build; pass --publish-hf USER/REPO to upload the file "
                                f"to a PUBLIC Hugging Face repo and add it in the app from there")
            return _publish(local, publish_hf, res, t0)

    folder = apps.target_dir(route, local, dest)
    remote_dir = apps.STAGING if route.private else folder
    remote = posixpath.join(remote_dir, local.name)

    # room on the phone (the app's own copy counted), and a free target name
    from edge.readings import parse_df

    probe = device.shell(serial, f"mkdir -p {q(remote_dir)} && df -k {q(remote_dir)}; "
                                 f"test -e {q(remote)} && echo edge-exists")
    res.storage = apps.storage_verdict(app, size, parse_df(probe.out))
    if res.storage["fits"] is None:
        res.warnings.append(f"could not read free storage of {remote_dir}: {device.error_line(probe.out)}")
    elif not res.storage["fits"]:
        msg = (f"the phone has {apps.size_text(res.storage['free_bytes'])} free in {remote_dir}; {route.title} needs "
               f"{apps.size_text(res.storage['need_bytes'])} ({res.storage['detail']})")
        if not force:
            raise EdgeError(f"{msg}; free some space on the phone, or pass --force to push anyway")
        res.warnings.append(f"{msg}; pushing anyway (--force)")
    if not route.private and "edge-exists" in probe.out.split() and not force:
        raise EdgeError(f"{remote} already exists on the phone; pass --force to replace it")
    if route.private and not force and apps.private_exists(serial, access, route.package,
                                                           posixpath.join(folder, local.name)):
        raise EdgeError(f"{posixpath.join(folder, local.name)} already exists in {route.title}'s data; "
                        f"pass --force to replace it")

    with _push_lock(serial, remote):
        st = device.upload(serial, local, remote, progress=report, cancel=cancel,
                           segment_bytes=segment_bytes, retries=retries)
    res.verified = True
    res.segments_verified, res.resumed_at, res.retries = st.segments_verified, st.resumed_at, st.retries
    res.remote_path = remote
    res.route = "shared storage" if remote.startswith(("/sdcard", "/storage")) else "tmp"

    if route.private:
        res.remote_path = apps.copy_private(serial, access, route.package, remote, folder, local.name, force)
        res.route = f"{access} copy"
    if route.media_scan:
        warn = apps.media_scan(serial, res.remote_path)
        if warn:
            res.warnings.append(warn)
    res.seconds = time.monotonic() - t0
    res.mb_per_s = size / 1e6 / max(st.seconds, 1e-9)
    fill = {"name": local.name, "path": res.remote_path, "qpath": q(res.remote_path), "size": apps.size_text(size),
            "folder": folder}
    res.next_steps = [s.format(**fill) for s in route.steps]
    return res


def _publish(local: Path, repo: str, res: PushResult, t0: float) -> PushResult:
    res.hf_repo = apps.publish_hf(local, repo)
    res.route = "huggingface"
    res.seconds = time.monotonic() - t0
    res.next_steps = [s.format(repo=repo, name=local.name) for s in apps.HF_STEPS]
    return res


def push_cmd(file: str, *, app: apps.AppName, serial: str = "", dest: str = "", force: bool = False,
             ctx: int = 4096, publish_hf: str = "", json: bool = False):
    """Push a GGUF to a phone for ChatterUI, PocketPal, AnythingLLM or the llama.cpp tools.

    Checks that the file is a GGUF that our budget says fits the phone and that the phone has room
    for it (twice for ChatterUI and PocketPal, which copy it on import), then copies it under a
    temporary name, checks every part with SHA-1 computed on the phone, resumes after a dropped
    connection, and renames it. The final name never holds a partial file. ChatterUI and
    PocketPal: /sdcard/Download/ + media scan, then the app's import ("Import Model" / "Add Local
    Model"). AnythingLLM (no local import): a copy into its model folder on a rooted phone or
    debuggable build; otherwise only with --publish-hf (uploads to a PUBLIC Hugging Face repo).
    llamacpp: /data/local/tmp/llama/.

    Args:
        file: the .gguf file to push.
        app: chatterui, pocketpal, anythingllm or llamacpp.
        serial: the phone's adb serial (see `edge devices`); optional with one phone connected.
        dest: another folder on the phone (AnythingLLM: a folder inside its data, e.g. files/models/gguf/me/x).
        force: push even if our budget says it does not fit or the storage looks too small, and replace a file of the same name.
        ctx: the context length (n_ctx) the app will run the model at; the budget check uses it.
        publish_hf: AnythingLLM without root: upload to this PUBLIC Hugging Face repo (USER/NAME).
        json: print the result as JSON instead of text and a progress bar.
    """
    bar = None

    def progress(p: Progress):
        nonlocal bar
        if json:
            return
        if bar is None:            # only once bytes move: every check has passed by then
            from tqdm import tqdm

            bar = tqdm(total=p.total, unit="B", unit_scale=True, unit_divisor=1024, desc="push", leave=True)
        if p.stage in ("push", "done"):
            bar.update(max(0, p.done - bar.n))
        if p.stage != "push" and p.message:
            bar.set_postfix_str(p.message[:40])

    try:
        res = push(file, app, serial, dest=dest, force=force, ctx=ctx, publish_hf=publish_hf, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if json:
        return asdict(res)
    where = f"https://huggingface.co/{res.hf_repo}" if res.hf_repo else f"{res.serial}:{res.remote_path}"
    print(f"pushed {Path(file).name} ({res.size_bytes / 1e6:.1f} MB) -> {where}")
    if res.route != "huggingface":
        print(f"  {res.mb_per_s:.1f} MB/s, {device.HASH_LABEL} verified on the phone ({res.segments_verified} segments)"
              + (f", resumed {len(res.resumed_at)}x" if res.resumed_at else ""))
    if res.budget:
        print(f"  budget at n_ctx {res.ctx}: {res.budget}")
    for w in res.warnings:
        print(f"  warning: {w}")
    for s in res.next_steps:
        print(f"  next: {s}")
    return res
