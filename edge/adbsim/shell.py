"""A tiny POSIX-sh interpreter for `adb shell`: tokenizer, parser and the builtins (toybox-like
cat, dd, head, sha1sum, stat, df, pm, am, su, run-as ...) acting on the simulated phone's files."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import posixpath
import re
import shutil
import threading
from dataclasses import dataclass

from .phone import LimitedFile, Phone, ShellError

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


def _copy(src, dst):
    while chunk := src.read(1 << 20):
        dst.write(chunk)
