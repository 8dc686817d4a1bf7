"""`edge`: the command line, a thin map from command names to plain library functions.

Flags and help are derived from each function's signature and docstring (the litgpt way):
parameters before `*` are positional arguments, keyword-only parameters are `--flags`
(required when they have no default), `bool` parameters are switches, and each
parameter's help is its line in the docstring's `Args:` section. The map below is
checked by a test: every entry must import and have a docstring.

    edge --help
    edge demo --out runs/demo
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import sys
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


def _param_help(doc: str) -> dict[str, str]:
    """Parse the `Args:` section of a Google-style docstring into {name: help}."""
    helps: dict[str, str] = {}
    in_args, current = False, None
    for line in (doc or "").splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            in_args = True
            continue
        if not in_args:
            continue
        if stripped and not line.startswith(" " * 8) and stripped.endswith(":"):
            break  # next section (Returns:, Raises:)
        m = re.match(r"\s{4,8}(\w+)(?: \([^)]*\))?:\s*(.*)", line)
        if m and len(line) - len(line.lstrip()) <= 8 and not line.startswith(" " * 12):
            current = m.group(1)
            helps[current] = m.group(2)
        elif current and stripped:
            helps[current] += " " + stripped
    return helps


def _base_type(annotation):
    if isinstance(annotation, str):
        annotation = {"str": str, "int": int, "float": float, "bool": bool}.get(annotation.split("|")[0].strip(), str)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return list, (typing.get_args(annotation) or (str,))[0]
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if args else (None, str)
    return None, annotation if annotation in (int, float, str, bool) else str


ALIASES = {"--from-stage": ["--from"]}   # short spellings for flags whose names Python reserves


def add_function(parser: argparse.ArgumentParser, fn: Callable) -> None:
    """Add one argument per parameter of `fn` to `parser`."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    helps = _param_help(inspect.getdoc(fn) or "")
    for name, p in sig.parameters.items():
        container, typ = _base_type(hints.get(name, str))
        help_ = helps.get(name, "").replace("%", "%%")  # argparse formats help with %
        flag = "--" + name.replace("_", "-")
        flags = [flag] + ALIASES.get(flag, [])
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            kw = {"nargs": "?", "default": p.default} if p.default is not p.empty else {}
            parser.add_argument(name, type=typ, help=help_, metavar=name.upper(), **kw)
        elif typ is bool:  # off by default: a plain switch; on by default: --x / --no-x
            on = p.default is not p.empty and bool(p.default)
            action = argparse.BooleanOptionalAction if on else "store_true"
            parser.add_argument(*flags, dest=name, action=action, default=on, help=help_)
        elif container is list:
            parser.add_argument(*flags, dest=name, type=typ, action="append",
                                default=None, help=help_ + " (repeatable)")
        else:
            required = p.default is p.empty
            default = None if required else p.default
            shown = "" if required or default in (None, "") else f" (default: {default})"
            parser.add_argument(*flags, dest=name, type=typ, required=required, default=default,
                                help=help_ + shown)


def argv_for(command: str, fn: Callable, values: dict) -> list[str]:
    """The command line that gives `fn` these `values`: `add_function` backwards (a launcher
    that starts `edge` again, e.g. `edge finetune --gpus N` through torchrun, uses it)."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    argv = [command]
    for name, p in sig.parameters.items():
        v = values.get(name, p.default)
        if v is p.empty or v is None:
            continue
        container, typ = _base_type(hints.get(name, str))
        flag = "--" + name.replace("_", "-")
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            argv.append(str(v))
        elif typ is bool:
            on = p.default is not p.empty and bool(p.default)
            if bool(v) != on:
                argv.append(flag if v else "--no-" + name.replace("_", "-"))
        elif container is list:
            for item in v:
                argv += [flag, str(item)]
        elif v != p.default:
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
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    quiet_libraries()
    kwargs = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        result = load_command(args.command)(**kwargs)
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
