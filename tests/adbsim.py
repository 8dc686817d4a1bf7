"""A simulated Android phone that speaks adb's device-side protocol on a loopback TCP port.

The REAL adb server attaches it with `adb connect 127.0.0.1:PORT`, exactly as it attaches
a phone in wireless-debugging mode. Everything the host sees goes through adb's transport
(AOSP packages/modules/adb protocol.txt): 24-byte message headers CNXN / AUTH / OPEN /
OKAY / WRTE / CLSE, one OKAY per WRTE (no delayed-ack feature advertised), and these
services:

- `shell:CMD` and `exec:CMD` (v1, raw: no shell_v2 feature is advertised, so the host uses
  the old protocol; stdout and stderr are one stream; stdin arrives as WRTE packets);
- `sync:` (SYNC.TXT: STAT / LIST / SEND+DATA+DONE / RECV / QUIT; v1 only).

Shell commands are NOT run by a shell of this machine. `Shell` below is a tiny interpreter
that tokenizes like POSIX sh (quotes, backslashes, `;` `&&` `||` `|`, redirections, `$?`,
`$VAR`, `$(...)` and backticks, field splitting, globbing) and dispatches to builtins
that act on the phone's files in a temporary directory. Because it *does* run command
substitutions and `;`-separated commands the way a phone's sh would (inside the sandbox),
a quoting bug on the host shows up as a stray file or a wrong name here.

Answers come from fixtures in the real output formats: `tests/fixtures/android/<phone>/`
holds one file per `edge.readings.COMMANDS` entry; such a command gets its fixture
verbatim; `getprop KEY` reads getprop.txt, `cat /proc/meminfo` meminfo.txt, `df` is
computed from the simulated storage.

Faults: `drop_after` (close the TCP connection once that many pushed bytes have arrived),
`capacity` / `df_free` (storage full, or a df that claims more than there is),
`unauthorized` (send AUTH, never accept the key), `throttle_bps` (link speed).

    with AdbSim(phone="pixel_7") as sim:       # listens on 127.0.0.1:<free port>
        subprocess.run(["adb", "connect", sim.serial])
        ...
        sim.files("/sdcard/Download")             # what arrived
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import posixpath
import queue
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "android"

# ---- transport (protocol.txt) --------------------------------------------------------------
A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
A_VERSION = 0x01000001           # >= 0x01000001: payload checksums are not computed
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
HEADER = struct.Struct("<6I")
SYNC_DATA_MAX = 64 * 1024
S_IFREG, S_IFDIR = 0o100000, 0o040000

SHELL_WRITABLE = ("/storage/emulated/0", "/data/local/tmp")
ALIASES = (("/sdcard", "/storage/emulated/0"), ("/storage/self/primary", "/storage/emulated/0"),
           ("/mnt/sdcard", "/storage/emulated/0"), ("/data/user/0", "/data/data"))


def _message(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return HEADER.pack(cmd, arg0, arg1, len(data), 0, cmd ^ 0xFFFFFFFF) + data


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


# ---- the shell: tokenizer -------------------------------------------------------------------
OPERATORS = ("&&", "||", ";;", ">>", "2>&1", "2>>", "2>", ">&2", "1>", "&", "|", ";", "\n", ">", "<", "(", ")")


@dataclass
class Word:
    parts: list  # (kind, text, quoted): kind in lit | sub | var


def _find_close_paren(s: str, i: int) -> int:
    """Index of the `)` closing a `$(` whose body starts at s[i]."""
    depth, q = 1, None
    while i < len(s):
        c = s[i]
        if q == "'":
            q = None if c == "'" else q
        elif q == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                q = None
        elif c in "'\"":
            q = c
        elif c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ShellError("syntax error: unterminated $(", 2)


def _dollar(s: str, i: int, parts: list, quoted: bool) -> int:
    """Parse an expansion at s[i] == '$'; append it; return the next index."""
    if s.startswith("$(", i):
        end = _find_close_paren(s, i + 2)
        parts.append(("sub", s[i + 2:end], quoted))
        return end + 1
    if s.startswith("${", i):
        end = s.find("}", i)
        if end < 0:
            raise ShellError("syntax error: bad substitution", 2)
        parts.append(("var", s[i + 2:end], quoted))
        return end + 1
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*|[?$#0-9]", s[i + 1:])
    if m:
        parts.append(("var", m.group(0), quoted))
        return i + 1 + len(m.group(0))
    parts.append(("lit", "$", quoted))
    return i + 1


def tokenize(s: str) -> list:
    """sh-like tokens: Word objects and operator strings."""
    toks, parts, i = [], [], 0

    def flush():
        nonlocal parts
        if parts:
            toks.append(Word(parts))
            parts = []

    while i < len(s):
        c = s[i]
        if c in " \t":
            flush(); i += 1
        elif c == "#" and not parts:
            while i < len(s) and s[i] != "\n":
                i += 1
        elif c == "\\":
            if i + 1 < len(s) and s[i + 1] == "\n":
                i += 2
            else:
                parts.append(("lit", s[i + 1:i + 2], True)); i += 2
        elif c == "'":
            end = s.find("'", i + 1)
            if end < 0:
                raise ShellError("syntax error: unterminated quoted string", 2)
            parts.append(("lit", s[i + 1:end], True)); i = end + 1
            if end == i - 1:
                pass
        elif c == '"':
            i += 1
            buf = []
            parts.append(("lit", "", True))  # "" is an (empty) word
            while True:
                if i >= len(s):
                    raise ShellError("syntax error: unterminated quoted string", 2)
                c = s[i]
                if c == '"':
                    i += 1; break
                if c == "\\" and i + 1 < len(s) and s[i + 1] in '"\\$`\n':
                    buf.append(s[i + 1]); i += 2
                elif c == "$":
                    parts.append(("lit", "".join(buf), True)); buf = []
                    i = _dollar(s, i, parts, True)
                elif c == "`":
                    end = s.find("`", i + 1)
                    if end < 0:
                        raise ShellError("syntax error: unterminated `", 2)
                    parts.append(("lit", "".join(buf), True)); buf = []
                    parts.append(("sub", s[i + 1:end], True)); i = end + 1
                else:
                    buf.append(c); i += 1
            parts.append(("lit", "".join(buf), True))
        elif c == "$":
            i = _dollar(s, i, parts, False)
        elif c == "`":
            end = s.find("`", i + 1)
            if end < 0:
                raise ShellError("syntax error: unterminated `", 2)
            parts.append(("sub", s[i + 1:end], False)); i = end + 1
        else:
            op = next((o for o in OPERATORS if s.startswith(o, i)), None)
            if op and not (op[0].isdigit() and parts):
                flush(); toks.append(op); i += len(op)
            else:
                parts.append(("lit", c, False)); i += 1
    flush()
    return toks


@dataclass
class Simple:
    words: list
    redirects: list  # (op, Word)


def parse(toks: list) -> list:
    """-> [(connector, [Simple, ...pipeline])]; connector of the first is ';'."""
    out, pipeline, words, redirs, conn = [], [], [], [], ";"
    i = 0

    def end_simple():
        nonlocal words, redirs
        if words or redirs:
            pipeline.append(Simple(words, redirs))
        elif pipeline:
            raise ShellError("syntax error: unexpected '|'", 2)
        words, redirs = [], []

    while i < len(toks):
        t = toks[i]
        if isinstance(t, Word):
            words.append(t)
        elif t in (">", ">>", "<", "2>", "2>>", "1>"):
            if i + 1 >= len(toks) or not isinstance(toks[i + 1], Word):
                raise ShellError(f"syntax error: unexpected {t!r}", 2)
            redirs.append((t, toks[i + 1])); i += 1
        elif t in ("2>&1", ">&2"):
            redirs.append((t, None))
        elif t == "|":
            end_simple()
        elif t in (";", "\n", "&", "&&", "||"):
            end_simple()
            if pipeline:
                out.append((conn, pipeline))
            elif t in ("&&", "||", ";", "&"):
                raise ShellError(f"syntax error: unexpected {t!r}", 2)
            pipeline, conn = [], (t if t in ("&&", "||") else ";")
        else:  # ( ) ;; are not supported: a real sh would also choke on them unquoted
            raise ShellError(f"syntax error: unexpected {t!r}", 2)
        i += 1
    end_simple()
    if pipeline:
        out.append((conn, pipeline))
    elif conn in ("&&", "||"):
        raise ShellError("syntax error: unexpected end of file", 2)
    return out


class Stdin:
    """A command's standard input: bytes, a file, or the live stream from the host."""

    def __init__(self, source=None):
        self.source = source if source is not None else io.BytesIO(b"")

    def read(self, n: int = -1) -> bytes:
        return self.source.read(n)


class Shell:
    """Runs one command line on the simulated phone as `who` (shell, root, app:PKG)."""

    def __init__(self, phone: Phone, who: str = "shell", cwd: str = "/", env: dict | None = None):
        self.phone, self.who, self.cwd = phone, who, cwd
        self.env = dict(env or {"PATH": "/system/bin", "HOME": "/"})
        self.rc = 0

    def child(self, who=None, cwd=None) -> "Shell":
        return Shell(self.phone, who or self.who, cwd or self.cwd, self.env)

    # running
    def run(self, line: str, stdin: Stdin | None = None) -> tuple[int, bytes]:
        out = io.BytesIO()
        canned = self.phone.canned.get(line.strip())
        if canned is not None:
            return 0, canned.encode()
        try:
            lists = parse(tokenize(line))
        except ShellError as e:
            return e.rc, f"/system/bin/sh: {e}\n".encode()
        stdin = stdin or Stdin()
        for conn, pipeline in lists:
            if (conn == "&&" and self.rc != 0) or (conn == "||" and self.rc == 0):
                continue
            self.rc = self._pipeline(pipeline, stdin, out)
        return self.rc, out.getvalue()

    def _pipeline(self, pipeline: list, stdin: Stdin, out) -> int:
        """Run the stages concurrently, joined by OS pipes, as sh does; stderr goes to `out`."""
        if len(pipeline) == 1:
            return self._simple(pipeline[0], stdin, out)
        rcs, threads, errors = [0] * len(pipeline), [], []
        src = stdin
        for k, simple in enumerate(pipeline):
            last = k == len(pipeline) - 1
            if last:
                sink, nxt = out, None
            else:
                r, w = os.pipe()
                sink, nxt = os.fdopen(w, "wb", buffering=1 << 20), os.fdopen(r, "rb")

            def stage(k=k, simple=simple, src=src, sink=sink, last=last):
                try:
                    rcs[k] = self.child()._simple(simple, src, sink, err=out)
                except BrokenPipeError:
                    rcs[k] = 141                       # killed by SIGPIPE
                except BaseException as x:            # Dropped: re-raised below
                    errors.append(x)
                finally:
                    if not last:
                        try:
                            sink.close()
                        except BrokenPipeError:
                            pass
                    if isinstance(src.source, io.BufferedReader) and k > 0:
                        src.source.close()             # a writer upstream now gets EPIPE

            t = threading.Thread(target=stage, daemon=True)
            t.start()
            threads.append(t)
            if nxt is not None:
                src = Stdin(nxt)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return rcs[-1]

    def expand(self, word: Word) -> list[str]:
        fields, cur, any_quoted, globbable = [], [], False, False
        for kind, text, quoted in word.parts:
            any_quoted |= quoted
            if kind == "lit":
                cur.append(text)
                globbable |= (not quoted and any(ch in text for ch in "*?"))
                continue
            if kind == "var":
                value = str(self.rc) if text == "?" else self.env.get(text, "")
            else:
                _, value_b = self.child().run(text)
                value = value_b.decode(errors="replace").rstrip("\n")
            if quoted:
                cur.append(value)
            else:  # field splitting of unquoted expansions
                pieces = value.split()
                if not pieces:
                    continue
                if value[:1].isspace() and cur:
                    fields.append("".join(cur)); cur = []
                cur.append(pieces[0])
                for p in pieces[1:]:
                    fields.append("".join(cur)); cur = [p]
                if value[-1:].isspace():
                    fields.append("".join(cur)); cur = []
        if cur or (any_quoted and not fields):
            fields.append("".join(cur))
        if globbable and len(fields) == 1:
            matches = self._glob(fields[0])
            if matches:
                return matches
        return fields

    def _glob(self, pattern: str) -> list[str]:
        d, base = posixpath.split(pattern)
        hd = self.phone.host(d or ".", self.cwd)
        if not hd.is_dir():
            return []
        return sorted(posixpath.join(d, n) for n in os.listdir(hd) if fnmatch.fnmatch(n, base))

    def _simple(self, simple: Simple, stdin: Stdin, out, err=None) -> int:
        argv = [f for w in simple.words for f in self.expand(w)]
        err = out if err is None else err
        opened = []
        try:
            for op, w in simple.redirects:
                if op == "2>&1":
                    err = out
                    continue
                if op == ">&2":
                    continue
                target = self.expand(w)
                if len(target) != 1:
                    raise ShellError("ambiguous redirect", 1)
                path = self.phone.norm(target[0], self.cwd)
                if op == "<":
                    self._check_read(path)
                    f = open(self.phone.host(path), "rb"); opened.append(f)
                    stdin = Stdin(f)
                    continue
                if path == "/dev/null":
                    f = open(os.devnull, "wb")
                else:
                    self._check_write(path)
                    f = LimitedFile(self.phone, self.phone.host(path), "ab" if op.endswith(">>") else "wb")
                opened.append(f)
                if op in ("2>", "2>>"):
                    err = f
                else:
                    out = f
            if not argv:
                return 0
            self.phone.log.append(argv)
            return self.call(argv, stdin, out, err)
        except ShellError as e:
            err.write(f"{argv[0] if argv else 'sh'}: {e}\n".encode() if str(e) else b"")
            return e.rc
        finally:
            for f in opened:
                try:
                    f.close()
                except ShellError as e:
                    out.write(f"sh: {e}\n".encode())

    def _check_write(self, path: str):
        if not self.phone.can_write(path, self.who):
            raise ShellError(f"{path}: Permission denied", 1)
        if not self.phone.host(posixpath.dirname(path)).is_dir():
            raise ShellError(f"{path}: No such file or directory", 1)

    def _check_read(self, path: str):
        if not self.phone.can_read(path, self.who):
            raise ShellError(f"{path}: Permission denied", 1)
        if not self.phone.host(path).exists():
            raise ShellError(f"{path}: No such file or directory", 1)

    def call(self, argv: list[str], stdin: Stdin, out, err) -> int:
        name = argv[0]
        fn = getattr(self, "cmd_" + name.replace("-", "_").replace(".", "_").replace("[", "test"), None)
        if fn is None or not re.fullmatch(r"[a-z0-9_.\[-]+", name):
            err.write(f"/system/bin/sh: {name}: inaccessible or not found\n".encode())
            return 127
        return fn(argv[1:], stdin, out, err) or 0

    # ---- builtins (each acts only on the simulated phone) ----
    def cmd_true(self, a, i, o, e): return 0
    def cmd_false(self, a, i, o, e): return 1
    def cmd_sync(self, a, i, o, e): return 0
    def cmd_sleep(self, a, i, o, e): return 0

    def cmd_echo(self, a, i, o, e):
        nl = True
        if a and a[0] == "-n":
            nl, a = False, a[1:]
        o.write((" ".join(a) + ("\n" if nl else "")).encode())

    def cmd_printf(self, a, i, o, e):
        if not a:
            return 1
        fmt = a[0].replace("\\n", "\n").replace("\\t", "\t")
        args = a[1:]
        n = max(fmt.count("%s"), 1)
        out = ""
        while True:
            chunk, args = args[:n], args[n:]
            out += fmt.replace("%s", "{}").format(*(chunk + [""] * (n - len(chunk)))) if "%s" in fmt else fmt
            if not args:
                break
        o.write(out.encode())

    def cmd_id(self, a, i, o, e):
        who = {"root": "uid=0(root) gid=0(root)", "shell": "uid=2000(shell) gid=2000(shell)"}
        o.write((who.get(self.who, "uid=10234(u0_a234) gid=10234(u0_a234)") + "\n").encode())

    def cmd_getprop(self, a, i, o, e):
        if a:
            o.write((self.phone.props.get(a[0], a[1] if len(a) > 1 else "") + "\n").encode())
        else:
            o.write("".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.phone.props.items())).encode())

    def cmd_dumpsys(self, a, i, o, e):
        name = {"meminfo": "dumpsys_meminfo", "battery": "battery", "thermalservice": "thermalservice"}.get(a[0] if a else "")
        if name and name in self.phone.fixtures:
            o.write(self.phone.fixtures[name].encode())
            return 0
        e.write(f"Can't find service: {a[0] if a else ''}\n".encode())
        return 0

    def cmd_cat(self, a, i, o, e):
        rc = 0
        for p in a or ["-"]:
            if p == "-":
                _copy(i, o)
                continue
            path = self.phone.norm(p, self.cwd)
            try:
                self._check_read(path)
                if self.phone.host(path).is_dir():
                    raise ShellError(f"{p}: Is a directory")
                with open(self.phone.host(path), "rb") as f:
                    _copy(f, o)
            except ShellError as x:
                e.write(f"cat: {x}\n".encode()); rc = 1
        return rc

    def cmd_head(self, a, i, o, e):
        if not a or a[0] != "-c" or len(a) < 2:
            e.write(b"head: only -c N is simulated\n")
            return 1
        if not self.phone.head_c:
            e.write(b"head: Unknown option 'c'\n")
            return 1
        n = int(a[1])
        src = i
        if len(a) > 2:
            path = self.phone.norm(a[2], self.cwd)
            self._check_read(path)
            src = open(self.phone.host(path), "rb")
        while n > 0:
            chunk = src.read(min(n, 1 << 20))
            if not chunk:
                break
            o.write(chunk)
            n -= len(chunk)
        return 0

    def cmd_dd(self, a, i, o, e):
        opts = dict(x.split("=", 1) for x in a if "=" in x)
        bs = int(opts.get("bs", "512"))
        skip, count = int(opts.get("skip", "0")), int(opts["count"]) if "count" in opts else None
        src = i
        if "if" in opts:
            path = self.phone.norm(opts["if"], self.cwd)
            self._check_read(path)
            src = open(self.phone.host(path), "rb")
            src.seek(skip * bs)
        records, total = 0, 0
        while count is None or records < count:
            block = src.read(bs)
            if not block:
                break
            o.write(block)
            records += 1
            total += len(block)
        e.write(f"{records}+0 records in\n{records}+0 records out\n{total} bytes copied\n".encode())

    def cmd_tee(self, a, i, o, e):
        append = a and a[0] == "-a"
        paths = [self.phone.norm(p, self.cwd) for p in (a[1:] if append else a)]
        for p in paths:
            self._check_write(p)
        files = [LimitedFile(self.phone, self.phone.host(p), "ab" if append else "wb") for p in paths]
        try:
            while chunk := i.read(1 << 20):
                for f in files:
                    f.write(chunk)
                o.write(chunk)
        finally:
            for f in files:
                f.close()

    def cmd_df(self, a, i, o, e):
        paths = [p for p in a if not p.startswith("-")] or ["/data"]
        cap = self.phone.capacity // 1024
        free = (self.phone.df_free if self.phone.df_free is not None else self.phone.free()) // 1024
        used = max(0, cap - free)
        o.write(b"Filesystem      1K-blocks     Used Available Use% Mounted on\n")
        for p in paths:
            path = self.phone.norm(p, self.cwd)
            if not self.phone.host(path).exists():
                e.write(f"df: {p}: No such file or directory\n".encode())
                return 1
            mount, dev = ("/storage/emulated", "/dev/fuse") if path.startswith("/storage") else ("/data", "/dev/block/dm-39")
            pct = (used * 100 + cap - 1) // max(cap, 1)
            o.write(f"{dev:<15} {cap:>9} {used:>8} {free:>9} {pct:>3}% {mount}\n".encode())

    def cmd_sha256sum(self, a, i, o, e):
        return self._hashsum("sha256", a, i, o, e)

    def cmd_sha1sum(self, a, i, o, e):
        return self._hashsum("sha1", a, i, o, e)

    def cmd_md5sum(self, a, i, o, e):
        return self._hashsum("md5", a, i, o, e)

    def _hashsum(self, algo, a, i, o, e):
        """toybox md5sum / sha1sum / sha256sum: `HEX  NAME` per file, `-` for stdin."""
        rc = 0
        for p in a or ["-"]:
            h = hashlib.new(algo)
            try:
                if p == "-":
                    src = i
                else:
                    path = self.phone.norm(p, self.cwd)
                    self._check_read(path)
                    src = open(self.phone.host(path), "rb")
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                o.write(f"{h.hexdigest()}  {p}\n".encode())
            except ShellError as x:
                e.write(f"{algo}sum: {x}\n".encode()); rc = 1
        return rc

    def cmd_stat(self, a, i, o, e):
        fmt = "%s"
        if a[:1] == ["-c"]:
            fmt, a = a[1], a[2:]
        rc = 0
        for p in a:
            path = self.phone.norm(p, self.cwd)
            hp = self.phone.host(path)
            if not hp.exists():
                e.write(f"stat: '{p}': No such file or directory\n".encode()); rc = 1
                continue
            st = hp.stat()
            uid = 0 if "/data/data/" not in path else 10234
            vals = {"s": str(st.st_size), "u": str(uid), "g": str(uid), "a": f"{st.st_mode & 0o777:o}",
                    "n": p, "F": "directory" if hp.is_dir() else "regular file", "Y": str(int(st.st_mtime))}
            o.write((re.sub(r"%(.)", lambda m: vals.get(m.group(1), m.group(0)), fmt) + "\n").encode())
        return rc

    def cmd_wc(self, a, i, o, e):
        data_len = 0
        while chunk := i.read(1 << 20):
            data_len += len(chunk)
        o.write(f"{data_len}\n".encode())

    def cmd_ls(self, a, i, o, e):
        long = any(x.startswith("-") and "l" in x for x in a)
        paths = [p for p in a if not p.startswith("-")] or [self.cwd]
        rc = 0
        for p in paths:
            path = self.phone.norm(p, self.cwd)
            hp = self.phone.host(path)
            if not self.phone.can_read(path, self.who):
                e.write(f"ls: {p}: Permission denied\n".encode()); rc = 1
                continue
            if not hp.exists():
                e.write(f"ls: {p}: No such file or directory\n".encode()); rc = 1
                continue
            names = sorted(os.listdir(hp)) if hp.is_dir() else [p]
            for n in names:
                if long:
                    st = (hp / n if hp.is_dir() else hp).stat()
                    o.write(f"-rw-rw---- 1 root sdcard_rw {st.st_size} 2026-01-01 00:00 {n}\n".encode())
                else:
                    o.write(f"{n}\n".encode())
        return rc

    def cmd_mkdir(self, a, i, o, e):
        parents = "-p" in a
        for p in (x for x in a if x != "-p"):
            path = self.phone.norm(p, self.cwd)
            hp = self.phone.host(path)
            if hp.is_dir() and parents:
                continue
            self._check_write(path) if not parents else None
            if not self.phone.can_write(path, self.who):
                raise ShellError(f"'{p}': Permission denied")
            try:
                hp.mkdir(parents=parents)
            except FileExistsError:
                raise ShellError(f"'{p}': File exists")
            except FileNotFoundError:
                raise ShellError(f"'{p}': No such file or directory")

    def cmd_touch(self, a, i, o, e):
        for p in a:
            path = self.phone.norm(p, self.cwd)
            self._check_write(path)
            self.phone.host(path).touch()

    def cmd_rm(self, a, i, o, e):
        force = any(x.startswith("-") and "f" in x for x in a)
        rec = any(x.startswith("-") and "r" in x for x in a)
        rc = 0
        for p in (x for x in a if not x.startswith("-")):
            path = self.phone.norm(p, self.cwd)
            hp = self.phone.host(path)
            if not self.phone.can_write(path, self.who):
                e.write(f"rm: {p}: Permission denied\n".encode()); rc = 1
            elif hp.is_dir():
                if rec:
                    shutil.rmtree(hp)
                else:
                    e.write(f"rm: {p}: Is a directory\n".encode()); rc = 1
            elif hp.exists():
                hp.unlink()
            elif not force:
                e.write(f"rm: {p}: No such file or directory\n".encode()); rc = 1
        return rc

    def _two_paths(self, a):
        args = [x for x in a if not x.startswith("-")]
        if len(args) != 2:
            raise ShellError("needs 2 arguments")
        src, dst = (self.phone.norm(x, self.cwd) for x in args)
        self._check_read(src)
        if self.phone.host(dst).is_dir():
            dst = posixpath.join(dst, posixpath.basename(src))
        self._check_write(dst)
        return src, dst

    def cmd_mv(self, a, i, o, e):
        src, dst = self._two_paths(a)
        if not self.phone.can_write(src, self.who):
            raise ShellError(f"{src}: Permission denied")
        os.replace(self.phone.host(src), self.phone.host(dst))

    def cmd_cp(self, a, i, o, e):
        src, dst = self._two_paths(a)
        with open(self.phone.host(src), "rb") as f:
            out = LimitedFile(self.phone, self.phone.host(dst), "wb")
            try:
                _copy(f, out)
            finally:
                out.close()

    def cmd_truncate(self, a, i, o, e):
        if len(a) != 3 or a[0] != "-s" or not a[1].isdigit():
            raise ShellError("usage: truncate -s SIZE FILE")
        path = self.phone.norm(a[2], self.cwd)
        self._check_write(path)
        os.truncate(self.phone.host(path), int(a[1]))

    def cmd_chmod(self, a, i, o, e): return 0

    def cmd_chown(self, a, i, o, e):
        if self.who != "root":
            raise ShellError("Operation not permitted")

    def cmd_restorecon(self, a, i, o, e): return 0

    def cmd_test(self, a, i, o, e):
        a = a[:-1] if a[-1:] == ["]"] else a
        if len(a) == 2 and a[0] in ("-e", "-f", "-d", "-s"):
            path = self.phone.norm(a[1], self.cwd)
            hp = self.phone.host(path)
            ok = {"-e": hp.exists(), "-f": hp.is_file(), "-d": hp.is_dir(),
                  "-s": hp.is_file() and hp.stat().st_size > 0}[a[0]]
            return 0 if ok else 1
        if len(a) == 3 and a[1] in ("=", "!="):
            return 0 if (a[0] == a[2]) == (a[1] == "=") else 1
        return 2
    cmd_testtest = cmd_test  # `[`

    def cmd_sh(self, a, i, o, e):
        if len(a) >= 2 and a[0] == "-c":
            rc, out = self.child().run(a[1], i)
            o.write(out)
            return rc
        e.write(b"sh: only sh -c is simulated\n")
        return 2

    def cmd_su(self, a, i, o, e):
        if not self.phone.rooted:
            e.write(b"/system/bin/sh: su: inaccessible or not found\n")
            return 127
        if len(a) >= 2 and a[0] == "-c":
            rc, out = self.child(who="root").run(a[1], i)
        elif a and a[0] in ("0", "root"):
            rc = self.child(who="root").call(a[1:], i, o, e) if len(a) > 1 else 0
            return rc
        else:
            e.write(b"su: usage: su -c COMMAND\n")
            return 2
        o.write(out)
        return rc

    def cmd_run_as(self, a, i, o, e):
        if not a:
            e.write(b"run-as: usage: run-as PACKAGE [COMMAND...]\n")
            return 1
        pkg = a[0]
        if pkg not in self.phone.packages:
            e.write(f"run-as: unknown package: {pkg}\n".encode())
            return 1
        if pkg not in self.phone.debuggable:
            e.write(f"run-as: package not debuggable: {pkg}\n".encode())
            return 1
        return self.child(who=f"app:{pkg}", cwd=f"/data/data/{pkg}").call(a[1:], i, o, e)

    def cmd_pm(self, a, i, o, e):
        if a[:2] == ["list", "packages"]:
            want = [x for x in a[2:] if not x.startswith("-")]
            for p in sorted(self.phone.packages):
                if not want or want[0] in p:
                    o.write(f"package:{p}\n".encode())
            return 0
        e.write(b"pm: only `pm list packages` is simulated\n")
        return 1

    def cmd_am(self, a, i, o, e):
        if not a or a[0] != "broadcast":
            e.write(b"am: only `am broadcast` is simulated\n")
            return 1
        opts = dict(zip(a[1::2], a[2::2]))
        self.phone.broadcasts.append(opts)
        desc = " ".join(f"{k[1:]}={v}" for k, v in (("-a", opts.get("-a")), ("-d", opts.get("-d"))) if v)
        desc = desc.replace("a=", "act=", 1).replace("d=", "dat=", 1)
        o.write(f"Broadcasting: Intent {{ {desc} flg=0x400000 }}\nBroadcast completed: result=0\n".encode())


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


def _copy(src, dst):
    while chunk := src.read(1 << 20):
        dst.write(chunk)


# ---- streams -------------------------------------------------------------------------------
class Stream:
    """One adb stream (an OPENed service) with its own worker thread."""

    def __init__(self, conn: "Connection", local_id: int, remote_id: int):
        self.conn, self.local, self.remote = conn, local_id, remote_id
        self.inbox: queue.Queue = queue.Queue()
        self.ready = threading.Semaphore(0)    # an OKAY from the host for our last WRTE
        self.closed = False
        self._buf = b""

    # host -> device
    def read(self, n: int = -1) -> bytes:
        """Stdin for a command: pull WRTE payloads (and OKAY each as it is consumed)."""
        while not self._buf:
            data = self.inbox.get()
            if data is None:
                self.inbox.put(None)
                return b""
            self._buf = data
            self.conn.send(A_OKAY, self.local, self.remote)
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_exact(self, n: int) -> bytes:
        parts, need = [], n
        while need:
            chunk = self.read(need)
            if not chunk:
                raise EOFError
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    # device -> host
    def write(self, data: bytes):
        for k in range(0, len(data), self.conn.max_payload):
            if self.closed or self.conn.dead:
                return
            self.conn.send(A_WRTE, self.local, self.remote, data[k:k + self.conn.max_payload])
            while not self.ready.acquire(timeout=0.5):
                if self.closed or self.conn.dead:
                    return

    def close(self):
        if not self.closed:
            self.closed = True
            self.conn.send(A_CLSE, self.local, self.remote)
            self.conn.streams.pop(self.local, None)


class ShellStream(Stream):
    """`shell:CMD` / `exec:CMD` (raw bytes both ways, no exit status) or, when the phone
    advertises shell_v2, `shell,v2[,raw|pty]:CMD` (shell_protocol.h: 5-byte headers, id
    0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close-stdin, 5 window size)."""

    def __init__(self, conn, local_id, remote_id, command: str, v2: bool = False):
        super().__init__(conn, local_id, remote_id)
        self.command, self.v2 = command, v2
        self._left = 0            # v2: stdin bytes left in the current packet

    def stdin_read(self, n: int = -1) -> bytes:
        chunk = self._stdin_read(n)
        self.conn.phone.count_pushed(len(chunk))      # data bytes (the drop fault fires here)
        return chunk

    def _stdin_read(self, n: int) -> bytes:
        if not self.v2:
            return self.read(n)
        while self._left == 0:
            try:
                head = self.read_exact(5)
            except EOFError:
                return b""
            pid, length = head[0], struct.unpack("<I", head[1:])[0]
            if pid == 0:
                self._left = length
            elif pid == 4:
                return b""        # close-stdin: EOF for the command
            elif length:
                self.read_exact(length)   # window size etc.: ignored
        chunk = self.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(chunk)
        return chunk

    def run(self):
        phone = self.conn.phone
        phone.log.append(["<shell>", self.command])
        try:
            stdin = Stdin(types.SimpleNamespace(read=self.stdin_read))
            rc, out = Shell(phone).run(self.command, stdin)
            if self.v2:
                step = self.conn.max_payload - 5
                for k in range(0, len(out), step):
                    self.write(b"\x01" + struct.pack("<I", len(out[k:k + step])) + out[k:k + step])
                self.write(b"\x03" + struct.pack("<I", 1) + bytes([rc & 0xFF]))
            else:
                self.write(out)
        except Dropped:
            self.conn.drop()
            return
        self.close()


class SyncStream(Stream):
    def run(self):
        try:
            while True:
                head = self.read_exact(8)
                sid, n = head[:4], struct.unpack("<I", head[4:])[0]
                if sid == b"QUIT":
                    break
                arg = self.read_exact(n) if sid in (b"STAT", b"LIST", b"SEND", b"RECV") else b""
                if sid == b"STAT":
                    self._stat(arg.decode(errors="replace"))
                elif sid == b"LIST":
                    self._list(arg.decode(errors="replace"))
                elif sid == b"SEND":
                    if not self._send(arg.decode(errors="replace")):
                        break
                elif sid == b"RECV":
                    self._recv(arg.decode(errors="replace"))
                else:
                    self._fail(f"unknown sync command {sid!r}")
                    break
        except EOFError:
            pass
        except Dropped:
            self.conn.drop()
            return
        self.close()

    def _fail(self, msg: str):
        m = msg.encode()
        self.write(b"FAIL" + struct.pack("<I", len(m)) + m)

    def _stat(self, path):
        hp = self.conn.phone.host(path)
        if hp.exists():
            st = hp.stat()
            mode = (S_IFDIR if hp.is_dir() else S_IFREG) | 0o770
            self.write(b"STAT" + struct.pack("<III", mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))
        else:
            self.write(b"STAT" + struct.pack("<III", 0, 0, 0))

    def _list(self, path):
        hp = self.conn.phone.host(path)
        if hp.is_dir():
            for name in [".", ".."] + sorted(os.listdir(hp)):
                st = (hp / name).stat()
                mode = (S_IFDIR if (hp / name).is_dir() else S_IFREG) | 0o770
                nb = name.encode()
                self.write(b"DENT" + struct.pack("<IIII", mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(nb)) + nb)
        self.write(b"DONE" + b"\0" * 16)

    def _recv(self, path):
        phone = self.conn.phone
        p = phone.norm(path)
        hp = phone.host(p)
        if not hp.is_file() or not phone.can_read(p, "shell"):
            return self._fail(f"open failed: No such file or directory")
        with open(hp, "rb") as f:
            while chunk := f.read(SYNC_DATA_MAX):
                self.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        self.write(b"DONE" + struct.pack("<I", 0))

    def _send(self, spec: str) -> bool:
        """SEND path,mode; DATA...; DONE mtime. As adbd: a failed file is deleted."""
        phone = self.conn.phone
        path, _, _mode = spec.rpartition(",")
        p = phone.norm(path)
        phone.log.append(["<sync-send>", p])
        hp = phone.host(p)
        error = None
        if not phone.can_write(p, "shell"):
            error = f"couldn't create file: Permission denied"
        else:
            hp.parent.mkdir(parents=True, exist_ok=True)   # adbd makes the parent folders
        f = None if error else LimitedFile(phone, hp, "wb")
        try:
            while True:
                head = self.read_exact(8)
                sid, n = head[:4], struct.unpack("<I", head[4:])[0]
                if sid == b"DONE":
                    break
                if sid != b"DATA" or n > SYNC_DATA_MAX:
                    error = error or f"invalid data message {sid!r}"
                    break
                data = self.read_exact(n)
                phone.count_pushed(n)
                if f is not None and error is None:
                    try:
                        f.write(data)
                    except ShellError:
                        error = "write failed: No space left on device"
        except (Dropped, EOFError):
            if f is not None:
                f.close()
                hp.unlink(missing_ok=True)
            raise
        if f is not None:
            f.close()
        if error:
            if hp.exists() and f is not None:
                hp.unlink()
            self._fail(error)
            return False
        self.write(b"OKAY" + struct.pack("<I", 0))
        return True


class Connection:
    """One TCP connection from the adb server: the transport."""

    def __init__(self, sim: "AdbSim", sock: socket.socket):
        self.sim, self.phone, self.sock = sim, sim.phone, sock
        self.lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.max_payload = 4096
        self.dead = False
        self.online = False
        self._wire = {"in": 0.0, "out": 0.0}    # when each direction of the link is free again
        self._wire_lock = threading.Lock()

    def send(self, cmd, a0, a1, data=b""):
        if self.dead:
            return
        self._throttle(len(data), "out")
        try:
            with self.lock:
                self.sock.sendall(_message(cmd, a0, a1, data))
        except OSError:
            self.dead = True

    def _throttle(self, n, direction: str):
        """A link of `throttle_bps` each way: a message occupies its direction of the wire
        for n / bps seconds after the previous one; the phone's work overlaps with the wire
        time, as on a cable (no credit for idle time, so no bursts)."""
        bps = self.phone.throttle_bps
        if not bps:
            return
        with self._wire_lock:
            now = time.monotonic()
            self._wire[direction] = max(now, self._wire[direction]) + n / bps
            wait = self._wire[direction] - now
        time.sleep(wait)

    def drop(self):
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for s in list(self.streams.values()):
            s.inbox.put(None)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _read_wire(self, inbox: queue.Queue):
        """The cable into the phone: messages arrive at the link's speed into a small buffer
        (the USB stack's), while the phone handles earlier ones."""
        try:
            while not self.dead:
                cmd, a0, a1, n, _crc, magic = HEADER.unpack(self._recv_exact(24))
                if magic != cmd ^ 0xFFFFFFFF:
                    break
                data = self._recv_exact(n) if n else b""
                self._throttle(n, "in")
                inbox.put((cmd, a0, a1, data))
        except (EOFError, OSError):
            pass
        finally:
            inbox.put(None)

    def serve(self):
        inbox: queue.Queue = queue.Queue(maxsize=8)
        threading.Thread(target=self._read_wire, args=(inbox,), daemon=True).start()
        try:
            while not self.dead and (msg := inbox.get()) is not None:
                self.handle(*msg)
        except (EOFError, OSError):
            pass
        finally:
            self.dead = True
            for s in list(self.streams.values()):
                s.inbox.put(None)
            try:
                self.sock.close()
            except OSError:
                pass
            while not inbox.empty():           # unblock the reader if it waits on a full buffer
                inbox.get_nowait()

    def handle(self, cmd, a0, a1, data):
        phone = self.phone
        if cmd == A_CNXN:
            self.max_payload = min(a1, MAX_PAYLOAD)
            if phone.unauthorized:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                return
            self._connect()
        elif cmd == A_AUTH:
            if phone.unauthorized:
                if a0 == AUTH_SIGNATURE:           # wrong key: ask again; the public key
                    self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))   # then waits for a tap
                return
            self._connect()
        elif not self.online:
            return
        elif cmd == A_OPEN:
            service = data.rstrip(b"\0").decode(errors="replace")
            local = self.next_id
            self.next_id += 1
            phone.services.append(service.split(":", 1)[0])
            name, _, command = service.partition(":")
            if name in ("shell", "exec") or (name.startswith("shell,") and phone.shell_v2):
                v2 = "v2" in name.split(",")[1:]
                stream = ShellStream(self, local, a0, command, v2=v2)
            elif service == "sync:":
                stream = SyncStream(self, local, a0)
            else:
                self.send(A_CLSE, 0, a0)
                return
            self.streams[local] = stream
            self.send(A_OKAY, local, a0)
            threading.Thread(target=stream.run, daemon=True).start()
        elif cmd == A_WRTE:
            s = self.streams.get(a1)
            if s is None:
                self.send(A_CLSE, 0, a0)
            else:
                s.inbox.put(data)
        elif cmd == A_OKAY:
            s = self.streams.get(a1)
            if s is not None:
                s.ready.release()
        elif cmd == A_CLSE:
            s = self.streams.pop(a1, None)
            if s is not None:
                s.closed = True
                s.inbox.put(None)

    def _connect(self):
        self.online = True
        p = self.phone.props
        banner = (f"device::ro.product.name={p.get('ro.product.name', 'sim')};"
                  f"ro.product.model={p['ro.product.model'].replace(' ', '_')};"
                  f"ro.product.device={p.get('ro.product.device', 'sim')};"
                  f"features=cmd{',shell_v2' if self.phone.shell_v2 else ''}")
        self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, banner.encode())


class AdbSim:
    """Listen on 127.0.0.1:port and serve the phone to every adb connection."""

    def __init__(self, phone: Phone | None = None, port: int = 0, **phone_kw):
        self.phone = phone or Phone(**phone_kw)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.serial = f"127.0.0.1:{self.port}"
        self.connections: list[Connection] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Connection(self, sock)
            self.connections.append(c)
            threading.Thread(target=c.serve, daemon=True).start()

    def drop_all(self):
        for c in self.connections:
            if not c.dead:
                c.drop()

    def close(self):
        self._stop = True
        self.listener.close()
        self.drop_all()
        self.phone.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":   # python -m tests.adbsim [phone] [--throttle MB/s]: serve until Ctrl-C
    import argparse
    ap = argparse.ArgumentParser(description="a simulated phone for `adb connect`")
    ap.add_argument("fixture", nargs="?", default="pixel_7", help="tests/fixtures/android/<fixture>")
    ap.add_argument("--throttle", type=float, default=0.0, help="link speed in MB/s each way (0: unthrottled)")
    ap.add_argument("--capacity-gb", type=float, default=0.0, help="storage size (default: the fixture's)")
    args = ap.parse_args()
    kw = {"capacity": int(args.capacity_gb * 2**30)} if args.capacity_gb else {}
    sim = AdbSim(fixture=args.fixture, throttle_bps=args.throttle * 1e6 or None, **kw)
    print(f"simulated phone on {sim.serial}; run: adb connect {sim.serial}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sim.close()


# ---- helpers for tests and benchmarks: a private adb server ----------------------------------
class AdbServer:
    """A private adb server (real adb) on a free port; `attach(sim)` = `adb connect`."""

    def __init__(self):
        import subprocess
        self._sp = subprocess
        s = socket.create_server(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.old = os.environ.get("ANDROID_ADB_SERVER_PORT")
        os.environ["ANDROID_ADB_SERVER_PORT"] = str(self.port)
        self.adb("start-server")

    def adb(self, *args: str, timeout: float = 60) -> str:
        r = self._sp.run(["adb", *args], stdout=self._sp.PIPE, stderr=self._sp.STDOUT, timeout=timeout,
                         env={**os.environ, "ANDROID_ADB_SERVER_PORT": str(self.port)})
        return r.stdout.decode(errors="replace")

    def attach(self, sim: AdbSim, wait_s: float = 10.0) -> str:
        return self.connect(sim.serial, "unauthorized" if sim.phone.unauthorized else "device", wait_s)

    def connect(self, serial: str, want: str = "device", wait_s: float = 10.0) -> str:
        """`adb connect serial` (a simulator in this or another process); wait until listed as `want`."""
        self.adb("connect", serial)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if f"{serial}\t{want}" in self.adb("devices"):
                return serial
            time.sleep(0.05)
        raise RuntimeError(f"adb did not list {serial} as {want}: {self.adb('devices')}")

    def detach(self, sim: AdbSim) -> None:
        self.adb("disconnect", sim.serial)

    def close(self):
        self.adb("kill-server")
        if self.old is None:
            os.environ.pop("ANDROID_ADB_SERVER_PORT", None)
        else:
            os.environ["ANDROID_ADB_SERVER_PORT"] = self.old
