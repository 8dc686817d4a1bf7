"""The CLI is derived from the commands' signatures, docstrings (docstring_parser), `Literal`
types and settings dataclasses: choices are checked while parsing (before a command's heavy
imports), in any case, with a "did you mean"; `edge finetune`'s training flags are
TrainSettings' and LoraSettings' fields, with their defaults and help."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest

from edge.cli import argv_for, build_parser, call_arguments, main
from edge.finetune import LoraSettings, TrainSettings, finetune_cmd
from edge.precision import ALIASES, DTYPES
from tests.conftest import ROOT


def command_help(name: str) -> str:
    return build_parser(name)._subparsers._group_actions[0].choices[name].format_help()


def parse(argv: list[str]) -> dict:
    return vars(build_parser(argv[0]).parse_args(argv))


def test_a_default_continuation_line_stays_in_its_argument():
    """The old hand parser read `default: ...` on a continuation line as a new argument."""
    text = " ".join(command_help("quantize").split())
    assert "a chat JSONL (e.g. your fine-tune's eval split); default: general English text" in text


@pytest.mark.parametrize("argv, flag", [
    (["merge", "--adapter", "a", "--out", "b", "--dtype", "fp8"], "--dtype"),
    (["export", "--model", "m", "--out", "o.gguf", "--outtype", "q4_k"], "--outtype"),
    (["finetune", "--data", "d", "--out", "o", "--precision", "int8"], "--precision"),
    (["finetune", "--data", "d", "--out", "o", "--memory", "tiny"], "--memory"),
])
def test_bad_choice_is_refused_before_the_command_imports_anything_heavy(argv, flag):
    code = ("import sys\nfrom edge.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nprint(rc, sorted(m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout.split("\n")[0] == "2 []", (p.stdout, p.stderr)  # exit 2; torch never imported
    err = p.stderr.strip()
    assert err.count("\n") == 0 and flag in err and "is not one of" in err, err


def test_did_you_mean_and_any_case(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["merge", "--adapter", "a", "--out", "b", "--dtype", "bf61"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean bf16?" in err and err.count("\n") == 1
    assert parse(["merge", "--adapter", "a", "--out", "b", "--dtype", "BF16"])["dtype"] == "bf16"
    assert parse(["export", "--model", "m", "--out", "o.gguf", "--outtype", "Q8_0"])["outtype"] == "q8_0"
    assert parse(["finetune", "--data", "d", "--out", "o", "--compile", "ON"])["compile"] == "on"


@pytest.mark.parametrize("spelling", [*DTYPES, *ALIASES, "FP32", "Float16"])
def test_the_three_dtype_flags_take_the_same_names(spelling):
    name = ALIASES.get(spelling.lower(), spelling.lower())
    assert parse(["merge", "--adapter", "a", "--out", "b", "--dtype", spelling])["dtype"] == name
    assert parse(["export", "--model", "m", "--out", "o.gguf", "--outtype", spelling])["outtype"] == name
    assert parse(["finetune", "--data", "d", "--out", "o", "--precision", spelling])["precision"] == name
    assert parse(["precision", "--precision", spelling])["precision"] == name


def test_finetune_flags_are_the_settings_fields():
    text = " ".join(command_help("finetune").split())
    own = set(inspect.signature(finetune_cmd).parameters)
    for cls in (TrainSettings, LoraSettings):
        defaults = cls()
        for f in dataclasses.fields(cls):
            flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
            assert flag in text, flag
            value = getattr(defaults, f.name)
            if f.name not in own and value is not None and not isinstance(value, (bool, tuple)):
                assert f"{flag} " in text and f"(default: {value})" in text, (flag, value)
    # the command re-declares no setting's default: its own parameters that share a field's
    # name default to None / "auto" (meaning: the field's default, or a rule the help states)
    for name in own & {f.name for f in dataclasses.fields(TrainSettings)}:
        assert inspect.signature(finetune_cmd).parameters[name].default in (None, "auto"), name


def test_finetune_flags_build_the_settings():
    argv = ["finetune", "--data", "d", "--out", "o", "--batch-size", "4", "--no-pack", "--grad-accum", "2",
            "--rank", "8", "--targets", "q_proj", "--targets", "v_proj", "--memory", "LEAN", "--steps", "7"]
    kw = call_arguments(finetune_cmd, {k: v for k, v in parse(argv).items() if k != "command"})
    assert kw["training"] == TrainSettings(batch_size=4, pack=False, grad_accum=2, memory="lean")
    assert kw["lora"] == LoraSettings(r=8, targets=("q_proj", "v_proj"))
    assert kw["steps"] == 7 and kw["lr"] is None
    # nothing given: no settings object, the command uses the dataclasses' defaults
    kw = call_arguments(finetune_cmd, {k: v for k, v in parse(argv[:5]).items() if k != "command"})
    assert "training" not in kw and "lora" not in kw


def test_relaunch_round_trips_settings_objects():
    train = TrainSettings(batch_size=4, pack=False, memory_budget=0.5, keep=3)
    lora = LoraSettings(r=4, targets=("q_proj",))
    argv = argv_for("finetune", finetune_cmd, dict(data="d", out="o", steps=5, gpus=2, training=train, lora=lora))
    kw = call_arguments(finetune_cmd, {k: v for k, v in parse(argv).items() if k != "command"})
    assert kw["training"] == train and kw["lora"] == lora and kw["steps"] == 5 and kw["gpus"] == 2


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "o"), "--keep", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--keep must be >= 1" in err
