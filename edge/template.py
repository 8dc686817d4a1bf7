"""Gemma 3's chat format: one definition, and the three texts that carry it.

The definition is `render_text` (what the fine-tune trains on): each turn is
`<start_of_turn>ROLE\nCONTENT<end_of_turn>\n` with ROLE `model` for assistant/model messages
and `user` for the rest; a leading system message is folded into the first turn, followed by a
blank line, as Gemma 3's own template does (Gemma 3 has no system role); contents are stripped;
the generation prompt is `<start_of_turn>model\n`; no `<bos>` (the tokenizer adds it).
Three texts carry the same format to other engines and are tested against it
(tests/test_chat_format.py), with and without a system message:

- `CHAT_TEMPLATE` (Jinja): the tokenizer's, saved with every checkpoint;
- `GGUF_CHAT_TEMPLATE` (Jinja): the same behind `{{ bos_token }}`, embedded in every GGUF;
- `OLLAMA_TEMPLATE` (Go text/template): the Modelfile's `TEMPLATE` (edge/modelfile.py).
  Two differences are Ollama's, not the template's: Go's text/template has no trim, so
  contents are sent as given, and Ollama itself joins consecutive messages of one role.

`chat_template(model_dir)` picks the template an export embeds; `render_chat(template,
messages)` renders any Jinja chat template the way engines do, in a bounded jinja2 sandbox
(a template comes from a user's file). Nothing is written here.

    python -c "from edge.template import render_text; print(render_text([{'role': 'user', 'content': 'hi'}], True)[0])"
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


def render_text(messages, add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The chat as Gemma 3 text (without `<bos>`) and the character spans of model replies.

    `messages`: a list of {"role", "content"} (or an `edge.data.Chat`). A reply span covers the
    reply text and its `<end_of_turn>`, so the model learns to stop.
    """
    messages = list(getattr(messages, "messages", messages))
    prefix = ""
    if messages and messages[0]["role"] == "system":
        prefix = messages[0]["content"] + "\n\n"
        messages = messages[1:]
    text, spans = "", []
    for i, m in enumerate(messages):
        role = "model" if m["role"] in ("assistant", "model") else "user"
        content = (prefix if i == 0 else "") + m["content"].strip()
        text += f"{gemma3.START_OF_TURN}{role}\n"
        start = len(text)
        text += content + gemma3.END_OF_TURN
        if role == "model":
            spans.append((start, len(text)))
        text += "\n"
    if add_generation_prompt:
        text += f"{gemma3.START_OF_TURN}model\n"
    return text, spans


# `render_text` as a Jinja chat template (transformers' apply_chat_template, saved with every
# checkpoint). It never emits `<bos>`: our tokenizer adds it, so rendering with
# `add_special_tokens=True` gives exactly one.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] in ('assistant', 'model') else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# The template embedded in exported GGUFs (`tokenizer.chat_template`): CHAT_TEMPLATE behind
# `{{ bos_token }}`, as Google's own Gemma 3 template starts. Engines still see one <bos>:
# llama.cpp's common chat code strips a leading bos_token from the rendered text when the
# vocab adds one itself (common/chat.cpp: `if (inputs.add_bos && string_starts_with(result,
# tmpl.bos_token()))`), and llama-cpp-python's Jinja2ChatFormatter marks its output
# `added_special=True`, so it adds no <bos> of its own: without `{{ bos_token }}` its
# create_chat_completion would send none (checked in tests/test_export.py).
GGUF_CHAT_TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE

# `render_text` in Go's text/template, for an Ollama Modelfile's TEMPLATE (Ollama adds no <bos>
# itself for a GGUF with add_bos_token true: llama.cpp's tokenizer does). A leading system
# message becomes `$prefix` of the first turn; the generation prompt follows a last message
# that is not the model's (Ollama has no add_generation_prompt: a chat request ends in a user
# turn). Ollama keeps system messages in .Messages (template.go, collate), so the Modelfile's
# SYSTEM or a request's system message arrives here as messages[0].
OLLAMA_TEMPLATE = (
    '{{- $prefix := "" }}'
    "{{- range $i, $_ := .Messages }}"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
    '{{- if and (eq $i 0) (eq .Role "system") }}{{ $prefix = printf "%s\\n\\n" .Content }}'
    '{{- else }}<start_of_turn>{{ if or (eq .Role "assistant") (eq .Role "model") }}model{{ else }}user{{ end }}\n'
    '{{ $prefix }}{{ .Content }}<end_of_turn>\n'
    '{{ $prefix = "" }}'
    "{{- end }}"
    '{{- if and $last (ne .Role "assistant") (ne .Role "model") }}<start_of_turn>model\n{{ end }}'
    "{{- end }}"
)


def chat_template(model_dir: Path) -> tuple[str, str]:
    """(template, source) for `tokenizer.chat_template`: it must render exactly one `<bos>`,
    at the start (see GGUF_CHAT_TEMPLATE for why engines then send exactly one).

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
        return GGUF_CHAT_TEMPLATE, "edge.template (the model has none)"
    if text == CHAT_TEMPLATE:
        return GGUF_CHAT_TEMPLATE, "edge.template (the model's, with {{ bos_token }} for engines)"
    try:
        rendered = render_chat(text, [{"role": "user", "content": "hi"}, {"role": "model", "content": "yo"},
                                      {"role": "user", "content": "ok"}])
    except EdgeError:  # a template we cannot render (or that runs away) is replaced
        return GGUF_CHAT_TEMPLATE, "edge.template (the model's template does not render)"
    if gemma3.START_OF_TURN not in rendered:
        return GGUF_CHAT_TEMPLATE, "edge.template (the model's template is not Gemma's format)"
    n_bos = rendered.count(gemma3.BOS)
    if n_bos == 0:
        return "{{ bos_token }}" + text, "model (with {{ bos_token }} for engines)"
    if n_bos == 1 and rendered.startswith(gemma3.BOS):
        return text, "model"
    return GGUF_CHAT_TEMPLATE, f"edge.template (the model's template renders {n_bos} <bos>)"


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
