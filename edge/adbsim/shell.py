"""A tiny POSIX-sh interpreter for `adb shell`: tokenizer, parser, pipelines, redirections and
expansions; the commands themselves (toybox-like cat, dd, head, sha1sum, stat, df, pm, am, su,
run-as ...) are in commands.py and act only on the simulated phone's files."""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import re
import threading
from dataclasses import dataclass

from .commands import Builtins
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


class Shell(Builtins):
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
