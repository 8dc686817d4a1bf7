"""Where each phone app wants a GGUF, as data, and how it gets there.

Facts, each read in the app's own code or issues:

- ChatterUI (com.Vali98.ChatterUI) imports from the system file picker: "Import Model" copies the
  file into its private models folder (lib/engine/Local/Model.ts, `importModel` -> `copyFileSAF`
  into `AppDirectory.ModelPath`), so the phone holds it twice until the download is deleted.
  "Use External Model" keeps a content:// link instead and fails on some devices (issue #505:
  "no trivial solution other than importing the models into the app"). So the file goes to
  shared storage (`/sdcard/Download/`), a media scan makes it visible, the user imports it.
- PocketPal AI (com.pocketpalai) reads models from its own storage; a file put into
  `Android/data/com.pocketpalai/files` is not seen (issue #199); "Add Local Model" (menu > Models >
  +, README) picks a file and copies it into the app's storage (issue #475: "The external models
  seem to be copied to the application storage"). Same route as ChatterUI, same double storage.
- AnythingLLM mobile (com.anythingllm) has no import of a local file (issue #5432 in
  Mintplex-Labs/anything-llm, open). Its on-device models live in `files/models/gguf/` of its
  private data: catalog models, and models added from Hugging Face at
  `models/gguf/<org>/<repo>/<file>.gguf` (src/utils/models/imported.ts). Recent versions also
  list any `.gguf` found in `models/gguf/<creator>/<model>/` as a model "found on this device"
  (src/utils/AiProviders/onDevice/index.ts, `discoverUnknownStoredModels`). With root (`su`) or a
  debuggable build (`run-as`) we copy the file there; otherwise the way in is a public Hugging
  Face repo that `edge push --publish-hf USER/REPO` creates, never without that flag.
- llama.cpp's Android guide runs its command-line tools from `/data/local/tmp/`.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from edge import device
from edge.device import cmdline, q
from edge.errors import EdgeError


@dataclass(frozen=True)
class AppRoute:
    """One app's delivery route."""

    name: str                 # the --app value
    title: str
    package: str              # Android package ("" for command-line tools)
    folder: str               # default folder on the phone (absolute, or relative to the app's data)
    private: bool             # the folder is inside the app's private data
    media_scan: bool          # make the file visible to the system file picker
    steps: tuple[str, ...]    # what the user does next ({name}, {path}, {repo}, {size} filled in)
    import_copies: bool = False   # the app copies the file into its own storage on import


APPS: dict[str, AppRoute] = {
    "chatterui": AppRoute(
        "chatterui", "ChatterUI", "com.Vali98.ChatterUI", "/sdcard/Download", False, True,
        ("In ChatterUI open the menu > Models and tap 'Import Model'; in the file picker choose "
         "Download > {name}, then tap the model to load it.",
         "Import copies the file into ChatterUI; once it is imported you may delete {path} "
         "to free {size} ('Use External Model' keeps the download instead, but fails on some phones: "
         "ChatterUI issue #505)."),
        import_copies=True),
    "pocketpal": AppRoute(
        "pocketpal", "PocketPal AI", "com.pocketpalai", "/sdcard/Download", False, True,
        ("In PocketPal open the menu (☰) > Models, tap + and choose 'Add Local Model'.",
         "In the file picker choose Download > {name}; PocketPal copies it into its own storage. "
         "Then tap Load next to the model.",
         "Once it is imported you may delete {path} to free {size} (PocketPal keeps its own copy)."),
        import_copies=True),
    "anythingllm": AppRoute(
        "anythingllm", "AnythingLLM", "com.anythingllm", "files/models/gguf/local/{stem}", True, False,
        ("Open AnythingLLM's on-device model list: recent versions list a GGUF found in "
         "files/models/gguf/<creator>/<model>/ as a model 'found on this device' (here: {folder}); "
         "a version without that scan does not list it (then use --publish-hf).",)),
    "llamacpp": AppRoute(
        "llamacpp", "llama.cpp command-line tools", "", "/data/local/tmp/llama", False, False,
        ("Run it: adb shell /data/local/tmp/llama/llama-cli -m {qpath} -p 'Hello'",
         "(push llama.cpp's Android build of llama-cli into /data/local/tmp/llama/ first)")),
}
HF_STEPS = ("In AnythingLLM, add a model from Hugging Face: find {repo} and pick {name} (it downloads it "
            "into files/models/gguf/{repo}/).",)
STAGING = "/data/local/tmp/edge"   # where a private-folder copy is staged (shell-writable)
STORAGE_MARGIN = 64 << 20        # keep this much free beyond the copies (the phone needs room too)


def size_text(n: int | float) -> str:
    """Bytes as a person reads them: '1.07 GB' or '253 MB'."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def copies_on_phone(r: AppRoute) -> int:
    """How many copies of the file the phone holds at the peak: the pushed file, plus the app's
    own copy when it imports by copying (until the download is deleted), or the staged file of a
    private-folder copy (removed after the copy)."""
    return 2 if (r.import_copies or r.private) else 1


def storage_verdict(app: str, file_bytes: int, free_bytes: int | None) -> dict:
    """Whether `file_bytes` fits the phone's free storage for `app`, counting the app's own copy."""
    r = route(app)
    copies = copies_on_phone(r)
    need = copies * file_bytes + STORAGE_MARGIN
    why = {True: "the download + the app's imported copy", False: "one copy"}[copies == 2 and r.import_copies]
    if r.private:
        why = "the staged file + the copy in the app's folder"
    out = {"app": app, "copies": copies, "need_bytes": need, "free_bytes": free_bytes, "fits": None,
           "detail": f"{copies} x {size_text(file_bytes)} ({why}) + {STORAGE_MARGIN >> 20} MB spare"}
    if free_bytes is not None:
        out["fits"] = free_bytes >= need
    return out


def storage_verdicts(file_bytes: int, free_bytes: int | None) -> dict:
    """Per delivery route: the storage the push needs, the app's own copy counted, and whether
    the phone's free space (None: unknown, e.g. a profile) holds it."""
    return {"free_bytes": free_bytes, "apps": {a: storage_verdict(a, file_bytes, free_bytes) for a in APPS}}


# ---- the apps' own memory rules (shown beside the budget's verdict) ------------------------
POCKETPAL_RULE_SOURCE = "https://github.com/a-ghorbani/pocketpal-ai/pull/250"
ANYTHINGLLM_RULE_SOURCE = ("https://github.com/Mintplex-Labs/anythingllm-mobile (src/utils/models/memoryFit.ts; "
                           "context default: src/utils/contextLength.ts, PR #46)")


def pocketpal_rule(file_bytes: int, ram_bytes: int) -> dict:
    """PocketPal AI's memory check (PR #250): need = 0.92 x file + 0.43 GB, a linear fit to its
    phone leaderboard; it warns when need >= min(0.65 x RAM, RAM - 1.2 GB)."""
    need = 0.92 * file_bytes + 0.43e9
    limit = min(0.65 * ram_bytes, ram_bytes - 1.2e9)
    return {"need_bytes": int(need), "limit_bytes": int(limit), "fits": need < limit, "warns": need >= limit,
            "source": POCKETPAL_RULE_SOURCE}


def anythingllm_rule(file_bytes: int, ram_bytes: int) -> dict:
    """AnythingLLM mobile's badge (memoryFit.ts, weights file only): 'impossible' when the file is
    larger than RAM, 'tight' ("May not fit") when larger than RAM - 2.5 GB (its reserve for the OS,
    the app and the KV cache), else 'ok'. Its default context (contextLength.ts, PR #46): 512 under
    4 GB of RAM, 1024 under 6 GB, else 2048 (decimal GB)."""
    badge = "impossible" if file_bytes > ram_bytes else "tight" if file_bytes > ram_bytes - 2.5e9 else "ok"
    ctx = 512 if ram_bytes < 4e9 else 1024 if ram_bytes < 6e9 else 2048
    return {"badge": badge, "fits": badge != "impossible", "tight": badge == "tight",
            "budget_bytes": int(ram_bytes - 2.5e9), "default_ctx": ctx, "source": ANYTHINGLLM_RULE_SOURCE}

AppName = Literal[tuple(APPS)]  # `edge push --app` takes these (edge.cli checks them while parsing)


def route(app: str) -> AppRoute:
    if app not in APPS:
        raise EdgeError(f"unknown app {app!r}; choose one of: {', '.join(APPS)}")
    return APPS[app]


def target_dir(r: AppRoute, local: Path, dest: str = "") -> str:
    """The folder the file lands in (private routes: relative to the app's data folder)."""
    folder = dest or r.folder.format(stem=local.stem)
    if "\n" in folder or "\0" in folder:
        raise EdgeError(f"--dest {dest!r} contains a newline or NUL; choose a plain folder name")
    if not r.private and not folder.startswith("/"):
        raise EdgeError(f"--dest {dest!r} must be an absolute folder on the phone, e.g. /sdcard/Download")
    if r.private and (folder.startswith("/") or ".." in folder.split("/")):
        raise EdgeError(f"--dest {dest!r} for {r.title} is a folder inside its data, e.g. files/models/gguf/me/model")
    return posixpath.normpath(folder)


def private_access(serial: str, package: str) -> str:
    """How we can write into `package`'s private data: 'root', 'run-as', or ''."""
    if device.shell(serial, "su -c id 2>/dev/null").out.find("uid=0") >= 0:
        return "root"
    if device.shell(serial, cmdline(["run-as", package, "id"]) + " 2>/dev/null").rc == 0:
        return "run-as"
    return ""


def installed(serial: str, package: str) -> bool:
    out = device.shell(serial, ["pm", "list", "packages", package]).out
    return f"package:{package}" in out.split()


def media_scan(serial: str, path: str) -> str:
    """Ask the media scanner to index `path` (for the file picker); '' or a warning."""
    uri = "file://" + urllib.parse.quote(path)
    r = device.shell(serial, ["am", "broadcast", "-a", "android.intent.action.MEDIA_SCANNER_SCAN_FILE",
                              "-d", uri])
    if r.rc != 0 or "Broadcast completed" not in r.out:
        return f"media scan did not complete ({device.error_line(r.out)}); the file picker may need a moment"
    return ""


def phone_checksum(serial: str, path: str, access: str = "", package: str = "") -> str:
    """The file's checksum computed on the phone (device.HASH), as root or as the app if asked."""
    tool = f"{device.HASH}sum"
    inner = cmdline([tool, path])
    line = {"root": f"su -c {q(inner)}", "run-as": cmdline(["run-as", package, tool, path])}.get(access, inner)
    out = device.shell(serial, line, timeout=600).out
    h = out.split()[0] if out.split() else ""
    if len(h) != device.HASH_HEX:
        raise EdgeError(f"{tool} of {path} on the phone failed: {device.error_line(out)}")
    return h


def private_exists(serial: str, access: str, package: str, rel_path: str) -> bool:
    """Whether `rel_path` (inside the app's data folder) exists, seen as root or as the app."""
    if access == "root":
        line = f"su -c {q(cmdline(['test', '-e', posixpath.join(f'/data/data/{package}', rel_path)]))}"
    else:
        line = cmdline(["run-as", package, "test", "-e", rel_path])
    return device.shell(serial, line).rc == 0


def copy_private(serial: str, access: str, package: str, staged: str, folder: str, name: str,
                 force: bool) -> str:
    """Copy a verified staged file into the app's private folder; verify; return its path."""
    data = f"/data/data/{package}"
    final_rel = posixpath.join(folder, name)
    part_rel = posixpath.join(folder, f".{name}.edge-partial")
    if access == "root":
        final, part, d = (posixpath.join(data, x) for x in (final_rel, part_rel, folder))
        owner = device.shell(serial, f"su -c {q(cmdline(['stat', '-c', '%u:%g', data]))}").out.strip()
        if not owner or ":" not in owner:
            raise EdgeError(f"cannot read the owner of {data} on the phone ({owner!r})")
        top = posixpath.join(data, folder.split("/")[0])
        inner = " && ".join([cmdline(["mkdir", "-p", d]), cmdline(["cp", staged, part]),
                             cmdline(["mv", "-f", part, final]), cmdline(["chown", "-R", owner, top]),
                             cmdline(["chmod", "660", final]), cmdline(["restorecon", "-R", top])])
        device.shell(serial, f"su -c {q(inner)}", timeout=600, check=True)
    else:  # run-as: the app's own uid writes it (cwd = its data folder), reading from a pipe
        final = posixpath.join(data, final_rel)
        inner = " && ".join([cmdline(["mkdir", "-p", folder]), f"cat > {q(part_rel)}",
                             cmdline(["mv", "-f", part_rel, final_rel])])
        device.shell(serial, f"cat {q(staged)} | " + cmdline(["run-as", package, "sh", "-c", inner]),
                     timeout=600, check=True)
    want = phone_checksum(serial, staged)
    got = phone_checksum(serial, final if access == "root" else final_rel, access, package)
    if got != want:
        raise EdgeError(f"the copy in {final} differs from the pushed file ({got[:12]} != {want[:12]})")
    device.shell(serial, ["rm", "-f", staged])
    return final


# ---- Hugging Face (AnythingLLM without root) ----------------------------------------------
def card_for(local: Path, repo: str) -> str:
    """The model card to publish beside `local`: its run's README.md (`edge run` writes one), else
    one for the file alone, with the quality row of its run's report if there is one."""
    from edge.card import CardFacts, render_card
    from edge.ggufinfo import read_gguf
    from edge.runfolder import run_of

    run = run_of(local)
    if run is not None and run.card() is not None and run.card().is_file():
        return run.card().read_text(encoding="utf-8")
    rows = []
    if run is not None and run.report() is not None:
        from quantize.report import rows_by_file

        rows = [r for stem, r in rows_by_file(run.report()).items() if stem == local.stem]
    meta = read_gguf(local).metadata
    row = rows[0] if rows else {"name": local.name, "size_bytes": local.stat().st_size}
    return render_card(CardFacts(title=local.stem, base_model=str(meta.get("general.base_model.0.name", "")),
                                 variants=[{**row, "path": local.name}], repo=repo))


def publish_hf(local: Path, repo: str, progress: Callable[[str], None] | None = None) -> str:
    """Create (or reuse) the PUBLIC model repo `repo` and upload the GGUF and its model card."""
    from edge.publish import check_repo_id, publish

    check_repo_id(repo, "--publish-hf")
    publish(repo, [local], card_for(local, repo), private=False, say=progress or (lambda m: None))
    return repo
