"""Small file helpers: write under a temporary name and rename when complete; read a
user's JSON; keep names from a file or a user inside the folder they belong to.

A killed process never leaves a half-written file under the final name, and a
user's file is never overwritten unless `force` is set. Temporary names carry the
writer's process id (`.NAME.PID.XXXX.part`), so the next write of the same file removes
what a killed run left behind, and never a running writer's file; the untagged names of
earlier versions go once idle and open in no process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from edge.errors import EdgeError, printable

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def cache_dir() -> Path:
    """The toolkit's cache: `$EDGE_CACHE`, else `$XDG_CACHE_HOME/edge`, else `~/.cache/edge`."""
    root = os.environ.get("EDGE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edge"


def check_writable(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing file or non-empty directory unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        if path.is_dir() and not any(path.iterdir()):
            return
        raise EdgeError(f"{path} already exists; pass --force to overwrite it or choose another path")


def check_not_input(out: Path, *inputs: Path) -> None:
    """Refuse an output that is one of the inputs, or a folder holding one (even with --force:
    the input would be destroyed before or while it is read)."""
    o = Path(out).resolve()
    for i in inputs:
        r = Path(i).resolve()
        if o == r or o in r.parents:
            raise EdgeError(f"the output {out} would overwrite the input {i}; choose another output path")


def safe_name(name: str, what: str) -> str:
    """A name that becomes part of a file name: letters, digits and . _ + - only, no leading dot."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise EdgeError(f"{what} {printable(name, 60)!r} cannot be part of a file name; use letters, digits "
                        "and . _ + - (at most 128 characters, not starting with a dot)")
    return name


def child(folder: Path, name: str) -> Path:
    """folder/name, checked to lie inside folder after resolving links and `..`."""
    folder = Path(folder)
    path = folder / name
    if folder.resolve() not in path.resolve().parents:
        raise EdgeError(f"{printable(name, 60)!r} would be written outside {folder}; give a plain file name")
    return path


def need_file(path, what: str, hint: str) -> Path:
    """An existing regular file, else EdgeError saying whether it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise EdgeError(f"{what} {path} is a folder, not a file; {hint}")
    if not path.is_file():
        raise EdgeError(f"{what} {path} not found; {hint}")
    return path


def read_json(path, what: str, expect: type = dict, hint: str = "fix or re-create it"):
    """A JSON file a user or an earlier run wrote: unreadable, not UTF-8, invalid, nested too
    deep, or of the wrong top-level type -> one EdgeError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise EdgeError(f"{what} {path} not found; {hint}") from None
    except IsADirectoryError:
        raise EdgeError(f"{what} {path} is a folder, not a file; {hint}") from None
    except OSError as e:
        raise EdgeError(f"cannot read {what} {path} ({e.strerror or e}); {hint}") from None
    except UnicodeDecodeError as e:
        raise EdgeError(f"{what} {path} is not UTF-8 text (byte {e.start}); {hint}") from None
    except json.JSONDecodeError as e:
        raise EdgeError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}); {hint}") from None
    except RecursionError:
        raise EdgeError(f"{what} {path} is nested too deeply to be a real {what}; {hint}") from None
    if expect is not None and not isinstance(data, expect):
        words = {dict: "an object", list: "a list"}
        want = " or ".join(words.get(t, t.__name__) for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise EdgeError(f"{what} {path} holds a JSON {type(data).__name__}, not {want}; {hint}")
    return data


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can test: leave it alone
    return True


RANDOM_PART = r"[a-z0-9_]{8}"   # the random part of tempfile's names (mkstemp, mkdtemp)
LEGACY_IDLE_S = 600              # an untagged temporary untouched this long, open in no process, is stale


def _newest_mtime(p: Path) -> float:
    newest = p.lstat().st_mtime
    if p.is_dir() and not p.is_symlink():
        for root, dirs, files in os.walk(p):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def open_anywhere(path: Path) -> bool | None:
    """Whether a process has `path`, or a file under it, open (Linux: /proc/*/fd); None where
    this system cannot tell. Processes of other users cannot be read and do not count."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(Path(path).resolve())
    inside = target + os.sep
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # another user's process, or it just ended
            continue
        for fd in fds:
            try:
                link = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if link == target or link.startswith(inside):
                return True
    return False


def _legacy_stale(p: Path) -> bool:
    """An untagged temporary (no writer pid in its name: an earlier version of this toolkit) is
    stale when nothing in it changed for LEGACY_IDLE_S and no process holds it open."""
    try:
        idle = time.time() - _newest_mtime(p)
    except OSError:
        return False
    return idle >= LEGACY_IDLE_S and open_anywhere(p) is not True


def clean_stale(path: Path, legacy_suffix: str = ".part") -> list[Path]:
    """Remove the temporaries of `path` that no running writer owns: `.NAME.PID.XXXX.part` siblings
    whose PID is not running, and the untagged `.NAME.XXXXXXXX{legacy_suffix}` of earlier versions
    once idle and open nowhere (`_legacy_stale`). A running writer's temporary is never touched."""
    path = Path(path)
    removed = []
    head = re.escape(f".{path.name}.")
    tagged = re.compile(head + r"(\d+)\.[^/.]+\.part")
    legacy = re.compile(head + RANDOM_PART + re.escape(legacy_suffix))
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = tagged.fullmatch(p.name)
        if m:
            stale = not _pid_alive(int(m.group(1)))
        elif legacy.fullmatch(p.name):
            stale = _legacy_stale(p)
        else:
            continue
        if not stale:
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def temp_dir(folder: Path, stem: str) -> Path:
    """A new private folder `FOLDER/.STEM.PID.XXXX.part` for the caller to fill and remove, made
    after the stale ones of STEM are gone (also the untagged `.STEM.XXXXXXXX` of earlier versions)."""
    folder = Path(folder)
    clean_stale(folder / stem, legacy_suffix="")
    return Path(tempfile.mkdtemp(prefix=_prefix(folder / stem), suffix=".part", dir=folder))


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".part", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a finished folder gets the user's umask
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str, force: bool = True) -> Path:
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
