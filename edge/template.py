"""Gemma 3's chat format, and the renderer for the chat templates that GGUF files carry.

`chat_template(model_dir)` picks the template an export embeds as `tokenizer.chat_template`;
`render_chat(template, messages)` renders any template the way engines do, in a bounded
jinja2 sandbox (a template comes from a user's file). Nothing is written here.

    python -c "from edge.template import render_chat; from edge import gemma3; print(render_chat(gemma3.GGUF_CHAT_TEMPLATE, [{'role': 'user', 'content': 'hi'}]))"
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

from edge import gemma3
from edge.errors import EdgeError, printable


def chat_template(model_dir: Path) -> tuple[str, str]:
    """(template, source) for `tokenizer.chat_template`: it must render exactly one `<bos>`,
    at the start (see gemma3.GGUF_CHAT_TEMPLATE for why engines then send exactly one).

    The model's own template is kept when it is Gemma's format; one that renders no `<bos>`
    gets `{{ bos_token }}` in front; anything else is replaced by the toolkit's template.
    """
    text = None
    if (model_dir / "chat_template.jinja").is_file():
        try:
            text = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
    elif (model_dir / "tokenizer_config.json").is_file():
        try:
            text = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError, AttributeError):
            text = None
    if not isinstance(text, str) or not text.strip():
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model has none)"
    if text == gemma3.CHAT_TEMPLATE:
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model's, with {{ bos_token }} for engines)"
    try:
        rendered = render_chat(text, [{"role": "user", "content": "hi"}, {"role": "model", "content": "yo"},
                                      {"role": "user", "content": "ok"}])
    except EdgeError:  # a template we cannot render (or that runs away) is replaced
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model's template does not render)"
    if gemma3.START_OF_TURN not in rendered:
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model's template is not Gemma's format)"
    n_bos = rendered.count(gemma3.BOS)
    if n_bos == 0:
        return "{{ bos_token }}" + text, "model (with {{ bos_token }} for engines)"
    if n_bos == 1 and rendered.startswith(gemma3.BOS):
        return text, "model"
    return gemma3.GGUF_CHAT_TEMPLATE, f"edge.gemma3 (the model's template renders {n_bos} <bos>)"


RENDER_SECONDS = 2.0        # a chat template renders in about a millisecond; a runaway one stops here
RENDER_CHARS = 1 << 20      # longest rendered prompt, and longest string a template may build


class _RenderLimit(Exception):
    pass


def _bounded_env():
    """jinja2's immutable sandbox (no attribute tricks, no mutation), plus bounds on what a
    hostile template can make it do: strings and lists built by `*`, `+`, `%`, filters and
    method calls stay under RENDER_CHARS, `**` under 1024-bit exponents, and integer
    arguments (`center(10**10)`) under RENDER_CHARS."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def check_args(args, kwargs):
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > RENDER_CHARS:
                raise _RenderLimit(f"the number {a} is too large for a chat template")

    def check_format(fmt):  # "{:>1000000000}".format(1), "%0999999999d" % 1: widths a template may not ask
        if isinstance(fmt, str) and ("%" in fmt or "{" in fmt) and re.search(r"\d{7,}", fmt):
            raise _RenderLimit("a format width is too large for a chat template")

    def check_result(v):
        if isinstance(v, (str, list, tuple, bytes)) and len(v) > RENDER_CHARS:
            raise _RenderLimit(f"the template built a value of {len(v):,} items")
        return v

    def bounded(fn):
        def wrapper(*args, **kwargs):
            check_args(args[1:], kwargs)
            for a in args[:2]:
                check_format(a)
            return check_result(fn(*args, **kwargs))
        for attr in ("jinja_pass_arg", "__name__"):
            if hasattr(fn, attr):
                setattr(wrapper, attr, getattr(fn, attr))
        return wrapper

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            sized = (str, list, tuple, bytes)
            if operator == "*":
                n, seq = (right, left) if isinstance(left, sized) else (left, right)
                if isinstance(seq, sized) and isinstance(n, int) and len(seq) * n > RENDER_CHARS:
                    raise _RenderLimit(f"a {len(seq)}-item value repeated {n} times")
            elif operator == "**":
                if isinstance(right, (int, float)) and isinstance(left, int) and abs(left) > 1 \
                        and abs(left).bit_length() * abs(right) > 1 << 16:
                    raise _RenderLimit("a power too large for a chat template")
            elif operator == "+":
                if isinstance(left, sized) and isinstance(right, sized) and len(left) + len(right) > RENDER_CHARS:
                    raise _RenderLimit("a concatenation is too long")
            elif operator == "%" and isinstance(left, str):
                check_format(left)
                check_args(right if isinstance(right, tuple) else (right,), {})
            return check_result(super().call_binop(context, operator, left, right))

        def wrap_str_format(self, value):
            check_format(getattr(value, "__self__", None))
            return super().wrap_str_format(value)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            check_args(args, kwargs)
            return check_result(super().call(__context, __obj, *args, **kwargs))

    env = Env(trim_blocks=True, lstrip_blocks=True)
    env.filters = {k: bounded(f) for k, f in env.filters.items()}
    return env


@contextlib.contextmanager
def _deadline(seconds: float):
    """Stop a template's own code (loops included) after `seconds`: a line trace on the
    compiled template's frames only, restored afterwards."""
    end = time.monotonic() + seconds
    old = sys.gettrace()

    def local(frame, event, arg):
        if time.monotonic() > end:
            raise _RenderLimit(f"rendering took longer than {seconds:g} s")
        return local

    def trace(frame, event, arg):
        return local if frame.f_code.co_filename == "<template>" else None

    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(old)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                source: str = "the chat template") -> str:
    """Render a chat template the way engines do (jinja2, bos/eos variables defined).

    A template comes from a user's file: it runs in jinja2's sandbox with bounded time
    (RENDER_SECONDS), output and value sizes (RENDER_CHARS); a syntax error, an undefined
    name, a blocked operation or a bound reached is one EdgeError naming `source`."""
    from jinja2 import TemplateError

    try:
        env = _bounded_env()
        with _deadline(RENDER_SECONDS):
            parts, n = [], 0
            for piece in env.from_string(template).generate(
                    messages=messages, add_generation_prompt=add_generation_prompt,
                    bos_token=gemma3.BOS, eos_token=gemma3.EOS):
                n += len(piece)
                if n > RENDER_CHARS:
                    raise _RenderLimit(f"the output passed {RENDER_CHARS:,} characters")
                parts.append(piece)
        return "".join(parts)
    except _RenderLimit as e:
        raise EdgeError(f"{source} was stopped: {e}; use a plain chat template (e.g. re-export the "
                        "model, which writes Gemma 3's)") from None
    except TemplateError as e:
        raise EdgeError(f"{source} cannot be rendered ({type(e).__name__}: {printable(e, 160)}); "
                        "re-export the model to get Gemma 3's template") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError,
            MemoryError) as e:
        raise EdgeError(f"{source} fails ({type(e).__name__}: {printable(e, 160)}); "
                        "re-export the model to get Gemma 3's template") from None
