"""A small renderer for the subset of Go's text/template that Ollama chat templates use, so the
Modelfile's TEMPLATE can be rendered in a test (no Go toolchain here).

Faithful to text/template (pkg.go.dev/text/template) for what it accepts: `{{- ` / ` -}}` trim
markers (space, tab, CR, LF), `range $i, $x := PIPE` / `range PIPE` (dot is the element),
`if` / `else if` / `else` / `end`, variable declaration `$x := ...` (scoped to the enclosing
block) and assignment `$x = ...` (the nearest declared `$x`), `.Field`, `$.Field`, `$x.Field`,
string literals with Go escapes, integers, `true`/`false`, parenthesized calls, and the
builtins eq, ne, and, or, not, len, slice, index, printf (%s %d %v). Anything else raises
`ValueError`, so a template using more than this subset fails the test instead of rendering
differently from Ollama.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+)|(?P<lp>\()|(?P<rp>\))'
                    r"|(?P<op>:=|=)|(?P<comma>,)|(?P<word>[$.A-Za-z_][\w.$]*))")
_WS = " \t\r\n"


def _lex(text: str):
    """[("text", s) | ("action", s)] with the trim markers applied."""
    out, pos = [], 0
    for m in _ACTION.finditer(text):
        chunk = text[pos:m.start()]
        if m.group(1):
            chunk = chunk.rstrip(_WS)
        out.append(["text", chunk])
        out.append(["action", m.group(2).strip(), bool(m.group(3))])
        pos = m.end()
    out.append(["text", text[pos:]])
    for i, item in enumerate(out):  # a right trim marker eats the whitespace after it
        if item[0] == "action" and item[2] and i + 1 < len(out):
            out[i + 1][1] = out[i + 1][1].lstrip(_WS)
    return [(k, v) for k, v, *_ in out if not (k == "text" and v == "")]


def _tokens(src: str) -> list[tuple[str, str]]:
    toks, pos = [], 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unsupported template syntax: {src[pos:]!r}")
        kind = m.lastgroup
        toks.append((kind, m.group(kind)))
        pos = m.end()
    return toks


def _parse(items):
    """A tree of nodes: ("text", s), ("expr", tokens), ("range", vars, tokens, body),
    ("if", [(tokens, body), ...], else_body)."""
    def block(i, stop):
        nodes = []
        while i < len(items):
            kind, v = items[i]
            if kind == "text":
                nodes.append(("text", v))
                i += 1
                continue
            word = v.split(None, 1)[0] if v else ""
            if word in stop:
                return nodes, i
            if word == "range":
                rest = v[len("range"):].strip()
                m = re.match(r"(\$\w*)\s*,\s*(\$\w*)\s*:=\s*(.*)$|(\$\w*)\s*:=\s*(.*)$", rest, re.S)
                if m and m.group(1):
                    names, expr = [m.group(1), m.group(2)], m.group(3)
                elif m:
                    names, expr = [None, m.group(4)], m.group(5)
                else:
                    names, expr = [None, None], rest
                body, i = block(i + 1, {"end"})
                nodes.append(("range", names, _tokens(expr), body))
                i += 1
            elif word == "if":
                branches, else_body = [], []
                cond = v[2:].strip()
                while True:
                    body, i = block(i + 1, {"else", "end"})
                    branches.append((_tokens(cond), body))
                    v = items[i][1]
                    if v.startswith("else if"):
                        cond = v[len("else if"):].strip()
                        continue
                    if v == "else":
                        else_body, i = block(i + 1, {"end"})
                    break
                nodes.append(("if", branches, else_body))
                i += 1
            elif word in ("else", "end", "with", "define", "template", "block"):
                raise ValueError(f"unsupported or misplaced action {{{{ {v} }}}}")
            else:
                nodes.append(("expr", _tokens(v)))
                i += 1
        if stop:
            raise ValueError(f"missing {{{{ end }}}} (one of {stop})")
        return nodes, i
    return block(0, set())[0]


def _truth(v) -> bool:
    return not (v is None or v is False or v == 0 and not isinstance(v, bool) and isinstance(v, int)
                or isinstance(v, (str, list, tuple, dict)) and len(v) == 0)


def _go_str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def _printf(fmt: str, *args) -> str:
    it = iter(args)

    def one(m):
        if m.group() == "%%":
            return "%"
        v = next(it)
        return _go_str(v) if m.group() in ("%s", "%v") else str(int(v))
    return re.sub(r"%[sdv%]", one, fmt)


def _slice(x, *ij):
    return x[ij[0]:ij[1]] if len(ij) == 2 else x[ij[0]:]


FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "len": len,
    "slice": _slice,
    "index": lambda x, *ks: _index(x, ks),
    "printf": _printf,
}


def _index(x, ks):
    for k in ks:
        x = x[k]
    return x


class _Scope:
    def __init__(self, root):
        self.frames = [{"$": root}]

    def get(self, name):
        for f in reversed(self.frames):
            if name in f:
                return f[name]
        raise ValueError(f"undefined variable {name}")

    def set(self, name, value):
        for f in reversed(self.frames):
            if name in f:
                f[name] = value
                return
        raise ValueError(f"assignment to undeclared variable {name}")


def _field(v, path: str):
    for part in filter(None, path.split(".")):
        if not isinstance(v, dict) or part not in v:
            raise ValueError(f"no field {part} in {v!r}")
        v = v[part]
    return v


def _eval(toks, dot, scope, pos=0, stop=None):
    """Evaluate a command (operand, or function and arguments) from toks[pos:]; -> (value, pos)."""
    args = []
    while pos < len(toks) and toks[pos][0] != stop:
        kind, v = toks[pos]
        if kind == "lp":
            val, pos = _eval(toks, dot, scope, pos + 1, "rp")
            args.append(val)
        elif kind == "str":
            args.append(bytes(v[1:-1], "utf-8").decode("unicode_escape"))
        elif kind == "num":
            args.append(int(v))
        elif kind == "word" and v in ("true", "false"):
            args.append(v == "true")
        elif kind == "word" and v.startswith("$"):
            name, _, rest = v.partition(".")
            args.append(_field(scope.get(name), rest))
        elif kind == "word" and v.startswith("."):
            args.append(_field(dot, v))
        elif kind == "word" and v in ("and", "or") + tuple(FUNCS):
            args.append(("fn", v))
        else:
            raise ValueError(f"unsupported token {v!r}")
        pos += 1
    if stop is not None:
        if pos >= len(toks):
            raise ValueError("unclosed (")
    if args and isinstance(args[0], tuple) and args[0][0] == "fn":
        name, rest = args[0][1], args[1:]
        if name == "and":
            val = next((a for a in rest if not _truth(a)), rest[-1])
        elif name == "or":
            val = next((a for a in rest if _truth(a)), rest[-1])
        else:
            val = FUNCS[name](*rest)
    elif len(args) == 1:
        val = args[0]
    else:
        raise ValueError(f"cannot evaluate {toks!r}")
    return val, pos


def _run(nodes, dot, scope, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "expr":
            toks = node[1]
            if len(toks) >= 2 and toks[1][0] == "op":
                val, _ = _eval(toks, dot, scope, 2)
                if toks[1][1] == ":=":
                    scope.frames[-1][toks[0][1]] = val
                else:
                    scope.set(toks[0][1], val)
            else:
                out.append(_go_str(_eval(toks, dot, scope)[0]))
        elif kind == "range":
            (iname, ename), toks, body = node[1], node[2], node[3]
            for i, item in enumerate(_eval(toks, dot, scope)[0] or []):
                scope.frames.append({k: v for k, v in ((iname, i), (ename, item)) if k})
                _run(body, item, scope, out)
                scope.frames.pop()
        elif kind == "if":
            for cond, body in node[1]:
                if _truth(_eval(cond, dot, scope)[0]):
                    scope.frames.append({})
                    _run(body, dot, scope, out)
                    scope.frames.pop()
                    break
            else:
                scope.frames.append({})
                _run(node[2], dot, scope, out)
                scope.frames.pop()


def render(template: str, data: dict) -> str:
    """Render `template` with `data` as dot (e.g. {"Messages": [{"Role": ..., "Content": ...}]})."""
    out: list[str] = []
    _run(_parse(_lex(template)), data, _Scope(data), out)
    return "".join(out)
