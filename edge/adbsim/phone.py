"""The simulated phone's state: storage in a temporary folder, properties and canned answers
from fixtures/<phone>/, permissions, and the fault knobs tests turn (see the package docstring)."""

from __future__ import annotations

import posixpath
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path


FIXTURES = Path(__file__).parent / "fixtures"

SHELL_WRITABLE = ("/storage/emulated/0", "/data/local/tmp")
ALIASES = (("/sdcard", "/storage/emulated/0"), ("/storage/self/primary", "/storage/emulated/0"),
           ("/mnt/sdcard", "/storage/emulated/0"), ("/data/user/0", "/data/data"))


class ShellError(Exception):
    """A command failed the way a phone's shell reports it: message and exit status."""

    def __init__(self, message: str, rc: int = 1):
        super().__init__(message)
        self.rc = rc


class Dropped(Exception):
    """The simulated cable was pulled."""


# ---- the phone -----------------------------------------------------------------------------
@dataclass
class Phone:
    """State of the simulated phone; tests tweak the fault fields between calls."""

    fixture: str = "pixel_7"
    capacity: int = 8 << 30                # bytes the data partition holds in all
    df_free: int | None = None             # what df claims is free (None: the truth)
    rooted: bool = False                   # `su` exists and works
    debuggable: set = field(default_factory=set)   # packages `run-as` accepts
    packages: set = field(default_factory=lambda: {"com.Vali98.ChatterUI", "com.anythingllm"})
    drop_after: int | None = None          # pushed bytes after which the link drops (once)
    throttle_bps: float | None = None      # link speed in bytes/s (both directions)
    unauthorized: bool = False             # answer CNXN with AUTH and never accept
    head_c: bool = True                    # toybox head supports -c
    shell_v2: bool = True                  # advertise shell_v2 (Android 7+); False: the v1 shell
    corrupt_after: int | None = None       # flip one bit written after this many pushed bytes
    log: list = field(default_factory=list)        # every shell command line received
    services: list = field(default_factory=list)   # every service name opened (shell,v2,raw ...)
    broadcasts: list = field(default_factory=list)  # intents sent with `am broadcast`
    pushed_bytes: int = 0                  # data bytes received by sync SEND or shell stdin

    def __post_init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="adbsim-"))
        self.lock = threading.Lock()
        fx = FIXTURES / self.fixture
        self.fixtures = {p.stem: p.read_text() for p in sorted(fx.glob("*.txt"))} if fx.is_dir() else {}
        self.props = {}
        for m in re.finditer(r"^\[([^\]]+)\]: \[(.*)\]$", self.fixtures.get("getprop", ""), re.M):
            self.props[m.group(1)] = m.group(2)
        self.props.setdefault("ro.product.model", "Simulated Phone")
        self.props.setdefault("ro.build.version.release", "14")
        self.props.setdefault("ro.product.cpu.abi", "arm64-v8a")
        try:
            from edge.readings import COMMANDS
            self.canned = {cmd: self.fixtures[name] for name, cmd in COMMANDS.items() if name in self.fixtures}
        except ImportError:
            self.canned = {}
        for d in ("/storage/emulated/0/Download", "/data/local/tmp", "/proc"):
            self.host(d).mkdir(parents=True, exist_ok=True)
        for pkg in self.packages:
            self.host(f"/data/data/{pkg}/files").mkdir(parents=True, exist_ok=True)
        for name, path in (("meminfo", "/proc/meminfo"), ("cpuinfo", "/proc/cpuinfo")):
            if name in self.fixtures:
                self.host(path).write_text(self.fixtures[name])

    # paths
    @staticmethod
    def norm(path: str, cwd: str = "/") -> str:
        p = posixpath.normpath(posixpath.join(cwd, path))
        if p.startswith("//"):
            p = "/" + p.lstrip("/")
        for alias, real in ALIASES:
            if p == alias or p.startswith(alias + "/"):
                p = real + p[len(alias):]
        return p

    def host(self, path: str, cwd: str = "/") -> Path:
        return self.root / self.norm(path, cwd).lstrip("/")

    def files(self, path: str) -> dict[str, bytes]:
        """Name -> content of the regular files directly in a phone folder (for tests)."""
        d = self.host(path)
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()} if d.is_dir() else {}

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and "proc" not in p.parts[:len(self.root.parts) + 1])

    def free(self) -> int:
        return max(0, self.capacity - self.used())

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)

    # permissions: shell may write shared storage and /data/local/tmp; an app its own folder
    def can_write(self, path: str, who: str) -> bool:
        if who == "root":
            return True
        if who.startswith("app:"):
            return path.startswith(f"/data/data/{who[4:]}/") or path == f"/data/data/{who[4:]}"
        return any(path == w or path.startswith(w + "/") for w in SHELL_WRITABLE)

    def can_read(self, path: str, who: str) -> bool:
        if path.startswith("/data/data/"):
            return who == "root" or path.startswith(f"/data/data/{who[4:]}") and who.startswith("app:")
        return True

    def count_pushed(self, n: int):
        """Account pushed bytes; raise Dropped when the drop fault fires."""
        with self.lock:
            self.pushed_bytes += n
            if self.drop_after is not None and self.pushed_bytes >= self.drop_after:
                self.drop_after = None
                raise Dropped()


class LimitedFile:
    """A file on the phone's storage: writes fail with ENOSPC past the capacity."""

    def __init__(self, phone: Phone, path: Path, mode: str):
        self.phone, self.f = phone, open(path, mode)
        self.free = phone.free()

    def write(self, data: bytes):
        if self.phone.corrupt_after is not None and self.phone.pushed_bytes >= self.phone.corrupt_after:
            self.phone.corrupt_after = None          # one flipped bit, once: storage/cable error
            data = bytes([data[0] ^ 1]) + data[1:]
        if len(data) > self.free:
            self.f.write(data[:self.free])
            self.free = 0
            raise ShellError("write: No space left on device")
        self.free -= len(data)
        self.f.write(data)

    def close(self):
        self.f.close()
