"""The one door to phones: everything that talks to adb lives here.

We drive the real `adb` binary (Debian's `adb` package or Android platform-tools) as a
subprocess rather than a Python client library: it is the program users already trust with
their phone (USB, RSA keys, wireless debugging, shell protocol v1 and v2), it needs no extra
dependency, and because we stream file data into `adb shell` ourselves we get exact progress,
cancel and resume, which `adb push` (and adbutils' push) do not offer. See `upload`.

    edge devices [--json]                      # serial, state, model, Android, ABI, storage, RAM
    from edge.device import list_devices, shell, read_state, upload

Remote command lines are always built from argument lists with `q()` (POSIX single
quoting, which the phone's sh undoes): a file name with spaces, quotes, `;`, `$()` or
newlines arrives as one argument and runs nothing. The adb server port follows
`ANDROID_ADB_SERVER_PORT` (the tests run a private server); `EDGE_ADB` names another binary.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from edge.errors import EdgeError

RC_MARK = "__edge_rc="          # appended `echo` that carries the exit status (shell v1 has none)
SEGMENT_BYTES = 16 << 20        # verification granularity: each segment is hashed on the phone
CHUNK_BYTES = 1 << 20           # bytes handed to adb per write (progress / cancel granularity)
IN_FLIGHT_BYTES = 1 << 20       # roughly what sits in pipes and adb's buffers before the phone has it
TAIL_BYTES = 4 << 20            # the last segment is at most this: it is hashed after the transfer
MIB = 1 << 20
SHELL_TIMEOUT_S = 60.0
# The segment checksum, computed by the phone's toybox (`sha1sum`, there since Android 6, like
# `sha256sum`) and by hashlib here. Its job is catching a flaky cable or a bad write, not an
# attacker, and SHA-1 is about twice as fast as SHA-256 on a CPU without SHA extensions (the
# laptop side; a phone's ARMv8 crypto instructions do either at over 1 GB/s).
HASH = "sha1"
HASH_LABEL = "SHA-1"            # how messages name HASH
HASH_HEX = hashlib.new(HASH).digest_size * 2


def q(arg: str) -> str:
    """Quote one argument for the phone's shell (mksh/toybox sh: POSIX single quotes)."""
    if "\0" in arg:
        raise EdgeError(f"a NUL byte cannot be part of a phone path: {arg!r}")
    return shlex.quote(arg)


def cmdline(argv: Sequence[str]) -> str:
    """One safely quoted command line from an argument list."""
    return " ".join(q(a) for a in argv)


# ---- the adb binary -----------------------------------------------------------------------
def adb_path() -> str:
    exe = shutil.which(os.environ.get("EDGE_ADB") or "adb")
    if not exe:
        raise EdgeError("adb not found; install it (`sudo apt-get install adb`, or Android "
                        "platform-tools) or set EDGE_ADB to its path")
    return exe


def adb(*args: str, serial: str = "", input: bytes | None = None,
        timeout: float = SHELL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `adb [-s SERIAL] ARGS...`; stdout+stderr as bytes in .stdout."""
    cmd = [adb_path()] + (["-s", serial] if serial else []) + list(args)
    try:
        return subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise EdgeError(f"adb did not answer within {timeout:.0f} s ({' '.join(args[:2])}); "
                        f"check the cable and `adb devices`") from e


def start_server() -> None:
    r = adb("start-server", timeout=30)
    if r.returncode != 0:
        raise EdgeError(f"cannot start the adb server: {r.stdout.decode(errors='replace').strip()}")


@dataclass
class DeviceInfo:
    """One line of `edge devices`."""

    serial: str
    state: str                      # device | unauthorized | offline | ...
    model: str = ""
    android: str = ""
    sdk: int | None = None
    abi: str = ""
    storage_free_bytes: int | None = None   # df -k /data "Available"
    ram_total_bytes: int | None = None      # /proc/meminfo MemTotal
    transport: str = ""                     # usb | tcp
    note: str = ""                          # what to do when state is not `device`


STATE_HELP = {
    "unauthorized": "unlock the phone and accept the 'Allow USB debugging?' prompt (the RSA key), then retry",
    "offline": "the phone is not answering: replug the cable or toggle USB debugging off and on",
    "no permissions": "the USB device is not accessible: add a udev rule for it (see README) or run adb as root",
    "authorizing": "the phone is checking this computer's key: unlock it and wait a moment",
    "connecting": "still connecting: wait a moment and retry",
}


def parse_devices(text: str) -> list[DeviceInfo]:
    """Parse `adb devices -l`."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("List of devices", "*", "adb server")):
            continue
        m = re.match(r"(\S+)\s+(no permissions.*?|\S+)(?:\s+(.*))?$", line)
        if not m:
            continue
        serial, state, rest = m.group(1), m.group(2), m.group(3) or ""
        state = "no permissions" if state.startswith("no permissions") else state
        info = dict(kv.split(":", 1) for kv in rest.split() if ":" in kv)
        out.append(DeviceInfo(serial=serial, state=state, model=info.get("model", "").replace("_", " "),
                              transport="tcp" if re.search(r":\d+$", serial) else "usb",
                              note=STATE_HELP.get(state, "")))
    return out


def list_devices(details: bool = True) -> list[DeviceInfo]:
    """Every device the adb server knows, with model/Android/ABI/storage/RAM for online ones."""
    start_server()
    r = adb("devices", "-l", timeout=30)
    devs = parse_devices(r.stdout.decode(errors="replace"))
    if details:
        for d in devs:
            if d.state == "device":
                _fill_details(d)
    return devs


def _fill_details(d: DeviceInfo) -> None:
    from edge.readings import parse_df, parse_getprop, parse_proc_meminfo

    try:
        props = parse_getprop(shell(d.serial, "getprop", timeout=15).out)
        mem = parse_proc_meminfo(shell(d.serial, ["cat", "/proc/meminfo"], timeout=15).out)
        free = parse_df(shell(d.serial, ["df", "-k", "/data"], timeout=15).out)
    except EdgeError as e:
        d.note = str(e)
        return
    d.model = props.get("ro.product.model", d.model)
    d.android = props.get("ro.build.version.release", "")
    sdk = props.get("ro.build.version.sdk", "")
    d.sdk = int(sdk) if sdk.isdigit() else None
    d.abi = props.get("ro.product.cpu.abi", "")
    d.ram_total_bytes = mem.get("MemTotal")
    d.storage_free_bytes = free


def pick_device(serial: str = "") -> str:
    """The serial to use: the one given (checked), or the only online device."""
    devs = list_devices(details=False)
    if serial:
        d = next((d for d in devs if d.serial == serial), None)
        if d is None and re.search(r":\d+$", serial):      # a wireless/TCP device: try to attach
            adb("connect", serial, timeout=15)
            d = next((d for d in list_devices(details=False) if d.serial == serial), None)
        if d is None:
            known = ", ".join(x.serial for x in devs) or "none"
            raise EdgeError(f"no device with serial {serial!r} (connected: {known}); see `edge devices`")
        if d.state == "offline" and d.transport == "tcp" and wait_online(serial, 10.0):
            return serial                                   # a dropped wireless link, re-attached
        _require_online(d)
        return serial
    online = [d for d in devs if d.state == "device"]
    if len(online) == 1:
        return online[0].serial
    if not devs:
        raise EdgeError("no phone connected: plug it in with USB debugging on (see README: "
                        "'Pushing to a phone'), then run `edge devices`")
    if not online:
        _require_online(devs[0])
    raise EdgeError(f"{len(online)} phones connected ({', '.join(d.serial for d in online)}); "
                    f"pass --serial with one of them")


def _require_online(d: DeviceInfo) -> None:
    if d.state != "device":
        raise EdgeError(f"device {d.serial} is {d.state}: {STATE_HELP.get(d.state, 'check `adb devices`')}")


# ---- shell ---------------------------------------------------------------------------------
@dataclass
class ShellResult:
    rc: int
    out: str


def shell(serial: str, command: str | Sequence[str], *, timeout: float = SHELL_TIMEOUT_S,
          check: bool = False) -> ShellResult:
    """Run a command on the phone. A list is quoted argument by argument (always safe);
    a string is sent as is (only for command lines built here with `q`)."""
    line = command if isinstance(command, str) else cmdline(command)
    r = adb("shell", f"{line}; echo {RC_MARK}$?", serial=serial, timeout=timeout)
    text = r.stdout.decode(errors="replace")
    out, mark, rc = text.rpartition(RC_MARK)
    if not mark or not rc.strip().isdigit():
        raise EdgeError(f"device {serial} did not answer ({error_line(text) or 'no output'}); "
                        f"check `edge devices`")
    res = ShellResult(int(rc.strip()), out)
    if check and res.rc != 0:
        raise EdgeError(f"on the phone, `{line[:120]}` failed (exit {res.rc}): {error_line(out)}")
    return res


def error_line(text: str) -> str:
    """What a phone's output says went wrong: its last non-empty line (stripped)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def read_state(serial: str):
    """Read the phone's state (memory, thermal, battery, SoC, storage) -> readings.DeviceState."""
    from edge.readings import COMMANDS, parse_state

    def run(cmd: str) -> str:
        try:
            return shell(serial, cmd, timeout=20).out
        except EdgeError:
            return ""

    # one adb shell each, all at once: `dumpsys meminfo` alone takes seconds on a real phone
    with ThreadPoolExecutor(len(COMMANDS)) as pool:
        outputs = dict(zip(COMMANDS, pool.map(run, COMMANDS.values())))
    return parse_state(outputs, serial=serial)


def remote_size(serial: str, path: str) -> int | None:
    r = shell(serial, f"stat -c %s {q(path)} 2>/dev/null")
    return int(r.out.strip()) if r.rc == 0 and r.out.strip().isdigit() else None


def free_bytes(serial: str, path: str) -> int | None:
    """Free bytes on the file system holding `path` (toybox `df -k`)."""
    from edge.readings import parse_df

    return parse_df(shell(serial, ["df", "-k", path]).out)


def wait_online(serial: str, timeout: float = 30.0) -> bool:
    """After a dropped link: re-attach a TCP device, wait until it answers a shell."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(r":\d+$", serial):
            adb("connect", serial, timeout=10)
        r = adb("shell", "echo ok", serial=serial, timeout=10)
        if r.returncode == 0 and b"ok" in r.stdout:
            return True
        time.sleep(0.5)
    return False


# ---- upload: stream + verify + rename --------------------------------------------------------
@dataclass
class Progress:
    """Reported to a `progress` callback during an upload."""

    stage: str                  # push | verify | retry | done
    done: int                   # bytes handed to the phone
    total: int
    bytes_per_s: float = 0.0
    eta_s: float | None = None
    message: str = ""


@dataclass
class UploadStats:
    remote_path: str
    size_bytes: int
    seconds: float
    segments_verified: int
    segment_bytes: int
    resumed_at: list[int] = field(default_factory=list)   # offsets pushing resumed from
    retries: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.size_bytes / 1e6 / max(self.seconds, 1e-9)


class Cancelled(EdgeError):
    """The caller set the cancel event."""


def partial_name(local: Path, remote_dir: str, name: str) -> str:
    """The temporary name on the phone: hidden, in the final folder (so `mv` is atomic),
    tied to this local file's size and mtime so a later run resumes only the same file."""
    st = local.stat()
    fp = hashlib.sha1(f"{local.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return posixpath.join(remote_dir, f".{name}.{fp}.edge-partial")


def segments(size: int, segment_bytes: int = SEGMENT_BYTES, tail: int = TAIL_BYTES) -> list[tuple[int, int]]:
    """The byte ranges verified one by one: `segment_bytes` each (whole MiB, so `dd bs=1M`
    reads them), the last cut to at most `tail` bytes, since it is hashed after the last byte
    arrives rather than during the transfer."""
    if segment_bytes % MIB:
        raise ValueError("segment_bytes must be a multiple of 1 MiB")
    starts = list(range(0, size, segment_bytes)) or [0]
    cut = (size - tail) // MIB * MIB
    if cut > starts[-1]:
        starts.append(cut)
    return list(zip(starts, starts[1:] + [size]))


def _hash_cmd(tmp: str, seg: tuple[int, int]) -> str:
    """Phone-side checksum of one segment of tmp (the count may run past the end: dd stops there)."""
    a, b = seg
    return f"dd if={q(tmp)} bs={MIB} skip={a // MIB} count={-(-(b - a) // MIB)} 2>/dev/null | {HASH}sum"


def _size_and_hashes(out: str) -> tuple[int | None, list[str]]:
    """Parse `stat -c %s FILE; dd ... | sha1sum; ...` output: the size, then the hashes."""
    size = re.match(r"\s*(\d+)\s*$", out.lstrip().split("\n", 1)[0])
    return (int(size.group(1)) if size else None), re.findall(rf"^([0-9a-f]{{{HASH_HEX}}})\s", out, re.M)


def upload(serial: str, local: Path, remote: str, *, progress: Callable[[Progress], None] | None = None,
           cancel: threading.Event | None = None, segment_bytes: int = SEGMENT_BYTES,
           retries: int = 5, reconnect_s: float = 30.0) -> UploadStats:
    """Copy `local` to `remote` on the phone: stream to a temporary name, verify every segment
    with a checksum computed on the phone (`HASH`; while later segments are still on the wire; the
    last, short one by the same command that writes it), then rename. A dropped link resumes
    from the bytes the phone has; the final name only ever holds a complete, verified file."""
    local = Path(local)
    size = local.stat().st_size
    segs = segments(size, segment_bytes)
    tmp = partial_name(local, posixpath.dirname(remote), posixpath.basename(remote))
    # one round trip: the folder, `head -c` on this phone, and a partial file to resume
    prep = shell(serial, f"mkdir -p {q(posixpath.dirname(remote))} || echo mkdir-failed; "
                         f"echo abc | head -c 2; echo; stat -c %s {q(tmp)} 2>/dev/null")
    lines = prep.out.splitlines()
    if "mkdir-failed" in prep.out:
        raise EdgeError(f"cannot create {posixpath.dirname(remote)} on the phone: {error_line(prep.out)}")
    writer = "head"          # `head -c N >> tmp` stops after exactly the bytes we send
    if not lines or lines[0] != "ab":
        # no `head -c` (older toybox): `cat` works where shell protocol v2 carries end-of-stdin
        if "shell_v2" not in adb("features", serial=serial, timeout=15).stdout.decode(errors="replace"):
            raise EdgeError(f"the phone's shell has no `head -c` (said {error_line(prep.out)!r}) and its "
                            f"adb has no shell protocol v2; this Android version is too old for edge push")
        writer = "cat"
    have = int(lines[1]) if len(lines) > 1 and lines[1].strip().isdigit() else 0
    _remove_stale_partials(serial, posixpath.dirname(remote), posixpath.basename(remote), tmp)
    if have > size:
        shell(serial, ["rm", "-f", tmp], check=True)
        have = 0
    t0 = time.monotonic()
    verifier = _Verifier(serial, local, tmp, segs)
    stats = UploadStats(remote, size, 0.0, 0, segment_bytes)
    user_report = progress or (lambda p: None)

    def report(p: Progress):
        verifier.sent = p.done if p.stage == "push" else verifier.sent
        user_report(p)

    restarted = False
    try:
        verifier.start()
        while True:
            if have:
                stats.resumed_at.append(have)
            try:
                got, tail_hash = stream_append(serial, local, tmp, have, size, report, cancel, writer, tail=segs[-1])
            except _LinkDropped as e:
                stats.retries += 1
                if stats.retries > retries:
                    raise EdgeError(f"the link to {serial} dropped {stats.retries} times ({e}); "
                                    f"the partial file {tmp} stays for a resume: rerun the same command") from e
                report(Progress("retry", have, size, message=f"link dropped ({e}); reconnecting"))
                if not wait_online(serial, reconnect_s):
                    raise EdgeError(f"{serial} did not come back within {reconnect_s:.0f} s; "
                                    f"rerun the same command to resume from the partial file {tmp}") from e
                have = _stable_size(serial, tmp)
                continue
            if got != size:
                raise EdgeError(f"after pushing, {tmp} holds {got} of {size} bytes")
            report(Progress("verify", size, size, message="checking the last segments on the phone"))
            bad = verifier.finish(tail_hash)
            if bad is None:
                break
            if restarted:
                raise EdgeError(f"segment at byte {bad} differs on the phone twice; the storage or "
                                f"cable is unreliable: try another cable or folder")
            # a segment differs: cut the file there and push from that segment on again
            restarted = True
            report(Progress("retry", bad, size, message=f"segment at byte {bad} differs; pushing it again"))
            shell(serial, ["truncate", "-s", str(bad), tmp], check=True)
            have = bad
            verifier.stop()
            verifier = _Verifier(serial, local, tmp, segs, verified=[a for a, _ in segs].index(bad))
            verifier.start()
        shell(serial, ["mv", "-f", tmp, remote], check=True)
    except Cancelled:
        verifier.stop()
        shell(serial, ["rm", "-f", tmp])
        raise
    finally:
        verifier.stop()
    stats.seconds = time.monotonic() - t0
    stats.segments_verified = verifier.verified
    report(Progress("done", size, size, size / max(stats.seconds, 1e-9), 0.0))
    return stats


def _remove_stale_partials(serial: str, folder: str, name: str, keep: str) -> None:
    """Partial files of an earlier version of this file (another size/mtime) are litter."""
    pat = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{10}}\.edge-partial")
    listing = shell(serial, ["ls", "-a", folder]).out.splitlines()
    stale = [posixpath.join(folder, n) for n in listing if pat.fullmatch(n)]
    stale = [p for p in stale if p != keep]
    if stale:
        shell(serial, ["rm", "-f", *stale])


class _LinkDropped(Exception):
    pass


def stream_append(serial, local, tmp, offset, size, report, cancel, writer: str = "head",
            tail: tuple[int, int] | None = None) -> tuple[int | None, str | None]:
    """Append local[offset:] to tmp through `adb shell` stdin: `head -c N >> tmp`, or
    `cat >> tmp` (ends when shell protocol v2 closes the phone's stdin). The same command
    then reports the file's size and, given a `tail` segment, its checksum on the phone:
    (size, hash)."""
    remaining = size - offset
    cmd = f"head -c {remaining}" if writer == "head" else "cat"
    line = f"{cmd} >> {q(tmp)}; echo {RC_MARK}$?; stat -c %s {q(tmp)}"
    if tail is not None:
        line += "; " + _hash_cmd(tmp, tail)
    p = subprocess.Popen([adb_path(), "-s", serial, "shell", "-e", "none", line],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sent, start, err = offset, time.monotonic(), None
    try:
        with open(local, "rb") as f:
            f.seek(offset)
            while sent < size:
                if cancel is not None and cancel.is_set():
                    p.kill()
                    raise Cancelled("push cancelled")
                chunk = f.read(min(CHUNK_BYTES, size - sent))
                try:
                    p.stdin.write(chunk)
                except (BrokenPipeError, OSError) as e:
                    err = e
                    break
                sent += len(chunk)
                rate = (sent - offset) / max(time.monotonic() - start, 1e-9)
                report(Progress("push", sent, size, rate, (size - sent) / rate if rate else None))
        out, _ = p.communicate(timeout=max(30.0, remaining / 5e6))
    except subprocess.TimeoutExpired:
        p.kill()
        raise _LinkDropped("no answer after the last byte")
    text = out.decode(errors="replace")
    before, mark, after = text.partition(RC_MARK)
    rc, _, after = after.partition("\n")
    if mark and rc.strip() == "0":
        got, hashes = _size_and_hashes(after)
        return got, (hashes[0] if hashes else None)
    if mark and rc.strip().isdigit():   # the phone answered: a real error (storage full, permission)
        raise EdgeError(f"writing {tmp} on the phone failed: {error_line(before) or 'exit ' + rc.strip()}")
    raise _LinkDropped(error_line(text) or str(err) or "adb exited")


def _stable_size(serial: str, tmp: str) -> int:
    """The partial file's size once it stops changing (a killed writer may still flush)."""
    last = remote_size(serial, tmp) or 0
    for _ in range(20):
        time.sleep(0.3)
        now = remote_size(serial, tmp) or 0
        if now == last:
            return now
        last = now
    return last


class _LocalHashes(threading.Thread):
    """The checksum of each segment of the local file, computed ahead (on another core) so the
    phone's hashes can be checked the moment they arrive."""

    def __init__(self, local: Path, segs: list[tuple[int, int]], first: int):
        super().__init__(daemon=True)
        self.local, self.segs, self.first = local, segs, first
        self.hashes: dict[int, str] = {}
        self.error: str | None = None
        self.halt = False
        self._cond = threading.Condition()

    def run(self):
        try:
            with open(self.local, "rb") as f:
                for k in range(self.first, len(self.segs)):
                    a, b = self.segs[k]
                    f.seek(a)
                    h = hashlib.new(HASH)
                    while a < b:
                        if self.halt:
                            raise OSError("stopped")
                        buf = f.read(min(b - a, 4 << 20))
                        if not buf:
                            raise OSError(f"{self.local} shrank while being pushed")
                        h.update(buf)
                        a += len(buf)
                    with self._cond:
                        self.hashes[k] = h.hexdigest()
                        self._cond.notify_all()
        except OSError as e:
            with self._cond:
                self.error = str(e)
                self._cond.notify_all()

    def get(self, k: int) -> str:
        with self._cond:
            self._cond.wait_for(lambda: k in self.hashes or self.error is not None)
            if k not in self.hashes:
                raise EdgeError(f"cannot read {self.local} to check it: {self.error}")
            return self.hashes[k]


class _Verifier(threading.Thread):
    """Hash segments on the phone (dd | sha1sum) as soon as they are complete there, and
    compare with the local ones; overlapped with the transfer so verification is mostly free.
    The last segment's hash comes with the stream command (`finish(tail_hash)`)."""

    def __init__(self, serial, local, tmp, segs: list[tuple[int, int]], verified: int = 0):
        super().__init__(daemon=True)
        self.serial, self.tmp, self.segs = serial, tmp, segs
        self.size, self.n = segs[-1][1], len(segs)
        self.local = _LocalHashes(local, segs, verified)
        self.verified = verified          # segments [0, verified) match
        self.sent = 0                     # bytes handed to adb so far (a hint: ask only then)
        self.bad: int | None = None       # byte offset of a mismatching segment
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def start(self):
        self.local.start()
        super().start()

    def _step(self, last: int, known: dict[int, str] | None = None) -> None:
        """Check segments [verified, last) against the phone: one round trip that reads the
        file's size and hashes those not `known`; only segments complete at that size count."""
        with self._lock:
            first = self.verified
            if last <= first or self.bad is not None:
                return
            known = known or {}
            ask = [k for k in range(first, last) if k not in known]
            line = "; ".join([f"stat -c %s {q(self.tmp)}"] + [_hash_cmd(self.tmp, self.segs[k]) for k in ask])
            r = shell(self.serial, line, timeout=120)
            have, hashes = _size_and_hashes(r.out)
            if have is None or len(hashes) != len(ask):
                raise EdgeError(f"cannot hash {self.tmp} on the phone: {error_line(r.out) or 'no answer'}")
            remote = {**known, **dict(zip(ask, hashes))}
            for k in range(first, last):
                if self.segs[k][1] > have:
                    return                # not all on the phone yet: ask again later
                if remote[k] != self.local.get(k):
                    self.bad = self.segs[k][0]
                    return
                self.verified = k + 1

    def run(self):
        while not self._halt.is_set() and self.verified < self.n - 1 and self.bad is None:
            ready = self.verified
            while ready < self.n - 1 and self.segs[ready][1] + IN_FLIGHT_BYTES <= self.sent:
                ready += 1
            if ready == self.verified:
                self._halt.wait(0.05)     # not on the phone yet: no need to ask
                continue
            try:
                before = self.verified
                self._step(ready)
                if self.verified > before:
                    continue
            except EdgeError:
                pass                      # link down: the pusher reconnects; try again later
            self._halt.wait(0.1)

    def finish(self, tail_hash: str | None) -> int | None:
        """After the push (the phone has every byte): verify what is left, the last segment
        from `tail_hash` if the stream command gave it; None if every segment matches, else
        the offset of the first bad one."""
        self._halt.set()
        self.join()
        self._step(self.n, {self.n - 1: tail_hash} if tail_hash else None)
        if self.verified < self.n and self.bad is None:
            raise EdgeError(f"verified {self.verified} of {self.n} segments of {self.tmp}")
        return self.bad

    def stop(self):
        self._halt.set()
        self.local.halt = True


# ---- the command -----------------------------------------------------------------------------
def _gb(n: int | None) -> str:
    return f"{n / 1e9:.1f} GB" if n is not None else "?"


def devices_cmd(*, json: bool = False):
    """List the phones the adb server sees: serial, state, model, Android, ABI, free storage, RAM.

    A phone shows as `unauthorized` until you accept this computer's key on it, and as
    `offline` when it stops answering; the note says what to do.

    Args:
        json: print the list as JSON (for scripts) instead of a table.
    """
    devs = list_devices()
    if not json:
        if not devs:
            print("no phones: connect one with USB debugging on (see README), or `adb connect HOST:PORT`")
        else:
            print(f"{'serial':<22} {'state':<13} {'model':<18} {'android':<8} {'abi':<12} {'free':>8} {'RAM':>8}")
            for d in devs:
                print(f"{d.serial:<22} {d.state:<13} {d.model[:18]:<18} {d.android:<8} {d.abi:<12} "
                      f"{_gb(d.storage_free_bytes):>8} {_gb(d.ram_total_bytes):>8}")
                if d.note:
                    print(f"  -> {d.note}")
    return {"devices": [asdict(d) for d in devs]}
