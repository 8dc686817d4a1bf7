"""The simulated phone's shell commands (toybox-like cat, dd, head, tee, df, sha1sum, stat, ls,
mkdir, rm, mv, cp, truncate, test, sh -c, su, run-as, pm, am ...), acting on its files; the
`Shell` interpreter (shell.py) inherits them and dispatches `cmd_NAME`."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil

from .phone import LimitedFile, ShellError


class Builtins:
    """`cmd_NAME(argv, stdin, out, err) -> rc` for each command; needs Shell's phone, who, cwd,
    env, child(), _check_read() and _check_write(). Each acts only on the simulated phone."""

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
