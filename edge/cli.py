"""`edge`: the command line, a thin map from command names to plain library functions.

Flags and help are derived from each function's signature and docstring (the litgpt way), with
argparse and docstring_parser: parameters before `*` are positional arguments, keyword-only
parameters are `--flags` (required when they have no default), `bool` parameters are switches,
`list` ones repeatable, `Literal` ones choices (any case, edge.precision's dtype aliases, "did
you mean"; checked while parsing, before the command's module does any work), and each
parameter's help is its entry in the docstring's `Args:` section. A parameter typed with a
settings dataclass (`training: TrainSettings`) becomes one flag per field, with the field's
type, default and help (its class docstring's `Attributes:`). A usage error is one line and
exit code 2, like every other bad input. The map below is checked by a test: every entry must
import and have a docstring.

jsonargparse (litgpt's choice) was tried: it spells flags with underscores and switches as
`--force true`, and prints multi-line errors; keeping this CLI's flags and error rule would
have meant overriding its internals, so the derivation stays on argparse.

    edge --help
    edge demo --out runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import json
import os
import sys
import types
import typing
import warnings
from dataclasses import asdict, is_dataclass
from typing import Callable

from edge.errors import EdgeError, environment_error, printable

# command name -> (module, function). Modules are imported only when their command runs,
# so `edge --help` and light commands start fast (torch takes seconds to import).
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge.pipeline", "run_cmd"),
    "demo": ("edge.demo", "demo"),
    "convert": ("edge.models", "convert_cmd"),
    "finetune": ("edge.finetune", "finetune_cmd"),
    "merge": ("edge.merge", "merge_cmd"),
    "export": ("edge.export", "export_cmd"),
    "inspect": ("edge.ggufinfo", "inspect_cmd"),
    "modelfile": ("edge.modelfile", "modelfile_cmd"),
    "chat": ("edge.chat", "chat_cmd"),
    "quantize": ("quantize.variants", "quantize_cmd"),
    "imatrix": ("quantize.imatrix", "imatrix_cmd"),
    "profiles": ("edge.profiles", "profiles_cmd"),
    "budget": ("edge.budget", "budget_cmd"),
    "devices": ("edge.device", "devices_cmd"),
    "push": ("edge.push", "push_cmd"),
    "precision": ("edge.precision", "precision_cmd"),
    "tui": ("tui", "tui_cmd"),
}

# One-line summaries for `edge --help`, kept here so help never imports torch.
SUMMARIES: dict[str, str] = {
    "run": "your chats -> fine-tune, GGUF variants, scores, phone budgets, a model card (resumable)",
    "demo": "`edge run` on the bundled task with the embedded Gemma 3 270M, with a summary",
    "convert": "convert the embedded GGUF (or a spec) into a cached Hugging Face checkpoint",
    "finetune": "LoRA fine-tune a Gemma 3 model on chat JSONL",
    "merge": "merge a LoRA adapter into its base model (fp32, checked)",
    "export": "export a Hugging Face Gemma 3 model to GGUF",
    "inspect": "show a GGUF file's metadata, tensor types and bits per weight",
    "modelfile": "write an Ollama Modelfile for a GGUF",
    "chat": "chat with a GGUF locally through llama.cpp",
    "quantize": "quantize a reference GGUF to standard and dynamic variants, with a report",
    "imatrix": "compute an importance matrix from calibration data",
    "profiles": "list the bundled phone profiles",
    "budget": "estimate RAM, speed and heat of a GGUF on a phone or this laptop",
    "devices": "list phones connected over adb",
    "push": "push a GGUF to a phone for ChatterUI, AnythingLLM or llama.cpp",
    "precision": "show which precision `auto` picks on this machine, and why",
    "tui": "open the terminal UI (variants, devices, budget, push)",
}


def _param_help(fn: Callable) -> dict[str, str]:
    """{parameter: help} from the `Args:` section of a Google-style docstring (docstring_parser:
    a continuation line, even one that starts `default:`, belongs to the argument above it)."""
    import docstring_parser

    doc = docstring_parser.parse(inspect.getdoc(fn) or "", docstring_parser.DocstringStyle.GOOGLE)
    return {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


def _field_help(cls) -> dict[str, str]:
    """{field: help} for a settings dataclass, from the `Attributes:` section of its docstring."""
    import docstring_parser

    doc = docstring_parser.parse(inspect.getdoc(cls) or "", docstring_parser.DocstringStyle.GOOGLE)
    return {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


def _base_type(annotation):
    """(container, element type, choices) of a parameter annotation: list/tuple -> repeatable,
    Literal -> choices, Optional unwrapped."""
    if isinstance(annotation, str):
        annotation = {"str": str, "int": int, "float": float, "bool": bool}.get(annotation.split("|")[0].strip(), str)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return None, str, tuple(typing.get_args(annotation))
    if origin in (list, tuple):
        elem = (typing.get_args(annotation) or (str,))[0]
        inner = _base_type(elem)
        return list, inner[1], inner[2]
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if args else (None, str, ())
    return None, annotation if annotation in (int, float, str, bool) else str, ()


def _settings_class(annotation):
    """The settings dataclass a parameter takes (`training: TrainSettings | None`), or None."""
    for a in (annotation, *typing.get_args(annotation)):
        if dataclasses.is_dataclass(a) and isinstance(a, type):
            return a
    return None


def choice(values: tuple[str, ...], flag: str) -> Callable[[str], str]:
    """An argparse `type` for a `Literal` parameter: any case, edge.precision's dtype aliases
    (f32, float16, half...) where they name an allowed value, and a "did you mean" on a typo.
    Checked while parsing, before the command's module does any work."""
    from edge.precision import ALIASES

    lookup = {v.lower(): v for v in values}
    lookup |= {a: lookup[t] for a, t in ALIASES.items() if t in lookup and a not in lookup}

    def convert(text: str) -> str:
        key = str(text).strip().lower()
        if key in lookup:
            return lookup[key]
        near = difflib.get_close_matches(key, list(lookup), n=1, cutoff=0.5)
        hint = f"; did you mean {lookup[near[0]]}?" if near else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(values)}{hint}")

    convert.__name__ = flag  # argparse names the type in some messages
    return convert


ALIASES = {"--from-stage": ["--from"]}   # short spellings for flags whose names Python reserves


def _flags(fn: Callable) -> list[dict]:
    """One entry per command-line argument of `fn`: its parameters, and the fields of each
    settings dataclass it takes (`lora: LoraSettings`, `train: TrainSettings`), whose flags,
    types, defaults and help come from the dataclass (a field may name its flag in
    `metadata={"flag": ...}`); a field with the name of one of `fn`'s own parameters is set
    through that parameter."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    helps = _param_help(fn)
    field_defaults = {f.name: f.default for name in sig.parameters if (c := _settings_class(hints.get(name)))
                      for f in dataclasses.fields(c) if f.default is not dataclasses.MISSING}
    out = []
    for name, p in sig.parameters.items():
        cls = _settings_class(hints.get(name))
        if cls is None:  # a parameter that sets a field itself (None: the field's default) shows that default
            shown = (field_defaults.get(name) or None) if p.default is None else p.default
            out.append(dict(name=name, dest=name, param=p, hint=hints.get(name, str), help=helps.get(name, ""),
                            default=p.default, shown=shown, settings=None))
            continue
        field_hints, field_helps = typing.get_type_hints(cls), _field_help(cls)
        for f in dataclasses.fields(cls):
            dest = f.metadata.get("flag", f.name)
            if dest in sig.parameters:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(dict(name=dest, dest=dest, param=None, hint=field_hints[f.name],
                            help=field_helps.get(f.name, ""), default=default, shown=default,
                            settings=(name, cls, f.name)))
    return out


def add_function(parser: argparse.ArgumentParser, fn: Callable) -> None:
    """Add one argument per parameter of `fn` (and per field of its settings dataclasses)."""
    for a in _flags(fn):
        name, p = a["name"], a["param"]
        container, typ, choices = _base_type(a["hint"])
        help_ = a["help"].replace("%", "%%")  # argparse formats help with %
        flag = "--" + name.replace("_", "-")
        flags = [flag] + ALIASES.get(flag, [])
        if choices:
            typ = choice(choices, flag)
        metavar = "{" + ",".join(choices) + "}" if choices else None
        field = a["settings"] is not None  # not given -> None: the dataclass keeps its default
        if p is not None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            kw = {"nargs": "?", "default": p.default} if p.default is not p.empty else {}
            parser.add_argument(name, type=typ, help=help_, metavar=metavar or name.upper(), **kw)
        elif typ is bool:  # off by default: a plain switch; on by default: --x / --no-x
            on = a["default"] is not inspect.Parameter.empty and bool(a["default"])
            action = argparse.BooleanOptionalAction if on else "store_true"
            parser.add_argument(*flags, dest=a["dest"], action=action, default=None if field else on, help=help_)
        elif container is list:
            parser.add_argument(*flags, dest=a["dest"], type=typ, action="append", metavar=metavar,
                                default=None, help=help_ + " (repeatable)")
        else:
            required = a["default"] is inspect.Parameter.empty
            default = None if required else a["default"]
            shown = "" if required or a["shown"] in (None, "") else f" (default: {a['shown']})"
            parser.add_argument(*flags, dest=a["dest"], type=typ, required=required, metavar=metavar,
                                default=None if field else default, help=help_ + shown)


def call_arguments(fn: Callable, parsed: dict) -> dict:
    """`fn`'s keyword arguments from parsed flags: the fields given for a settings dataclass
    become one instance of it (its own defaults for the rest; its checks raise EdgeError)."""
    kwargs, fields = {}, {}
    for a in _flags(fn):
        v = parsed.get(a["dest"])
        if a["settings"] is None:
            kwargs[a["name"]] = v
        elif v is not None:
            pname, cls, fname = a["settings"]
            fields.setdefault((pname, cls), {})[fname] = tuple(v) if isinstance(v, list) else v
    for (pname, cls), given in fields.items():
        kwargs[pname] = cls(**given)
    return kwargs


def argv_for(command: str, fn: Callable, values: dict) -> list[str]:
    """The command line that gives `fn` these `values`: `add_function` backwards (a launcher
    that starts `edge` again, e.g. `edge finetune --gpus N` through torchrun, uses it).
    A settings dataclass in `values` gives its fields that differ from the class defaults."""
    flat = dict(values)
    for a in _flags(fn):
        if a["settings"] is not None:
            pname, cls, fname = a["settings"]
            obj = values.get(pname)
            if obj is not None and a["dest"] not in values:
                v = getattr(obj, fname)
                flat[a["dest"]] = list(v) if isinstance(v, tuple) else v
    argv = [command]
    for a in _flags(fn):
        name, p = a["name"], a["param"]
        default = a["default"]
        v = flat.get(a["dest"], default)
        if v is inspect.Parameter.empty or v is None:
            continue
        container, typ, _ = _base_type(a["hint"])
        flag = "--" + name.replace("_", "-")
        if p is not None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            argv.append(str(v))
        elif typ is bool:
            on = default is not inspect.Parameter.empty and bool(default)
            if bool(v) != on:
                argv.append(flag if v else "--no-" + name.replace("_", "-"))
        elif container is list:
            if a["settings"] is None or tuple(v) != tuple(default or ()):
                for item in v:
                    argv += [flag, str(item)]
        elif v != default:
            argv += [flag, str(v)]
    return argv


def load_command(name: str) -> Callable:
    """The function behind `edge NAME`; a module that cannot import for want of a package
    (textual for `edge tui`) is the install's fault: one EdgeError, not a traceback."""
    module, attr = COMMANDS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("edge", "quantize"):
            raise  # our own module missing: a broken checkout, keep the traceback
        raise EdgeError(f"cannot start `edge {name}`: {e}; install the toolkit with the README's set-up") from None


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (like every other bad input) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge",
        description="Fine-tune, shrink, profile and push small Gemma 3 models to phones.",
        epilog="Run `edge COMMAND --help` for a command's flags. Bad input exits with code 2.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name == command:
            fn = load_command(name)
            p.description = inspect.getdoc(fn).split("\n\nArgs:")[0]
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            add_function(p, fn)
    return parser


def _print_result(result, as_json: bool) -> None:
    if result is None:
        return
    if as_json:
        data = asdict(result) if is_dataclass(result) else result
        print(json.dumps(data, indent=2, default=str))
    elif isinstance(result, str):
        print(result)


def quiet_libraries() -> None:
    """Our own progress bars stay; transformers' and huggingface_hub's loading bars, their
    info lines and known FutureWarnings do not reach a user of the CLI."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|torch)\b")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")


def _quiet_pipe() -> None:
    """stdout's reader went away (`edge inspect F | head`): stop writing, without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    try:
        parser = build_parser(command)
    except EdgeError as e:
        print(f"edge {command}: error: {printable(e)}", file=sys.stderr)
        return e.exit_code
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (printed as one line): its code; --help still exits
        if e.code in (0, None):
            raise
        return e.code
    if args.command is None:
        parser.print_help()
        return 0
    quiet_libraries()
    fn = load_command(args.command)
    try:
        kwargs = call_arguments(fn, {k: v for k, v in vars(args).items() if k != "command"})
        result = fn(**kwargs)
        _print_result(result, kwargs.get("json", False))
        sys.stdout.flush()
    except EdgeError as e:
        print(f"edge {args.command}: error: {printable(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"edge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_pipe()
        return 141  # 128 + SIGPIPE, what a shell shows for a writer whose reader left
    except Exception as e:
        msg = environment_error(e)
        if msg is None:
            raise  # our bug: keep the traceback
        print(f"edge {args.command}: error: {msg}", file=sys.stderr)
        return EdgeError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
