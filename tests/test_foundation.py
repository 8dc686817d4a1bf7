"""Foundation: CLI map, model specs, chat data, run folder, demo stage plumbing."""

from __future__ import annotations

import inspect
import json
import subprocess
from pathlib import Path

import pytest

from edge import gemma3
from edge.cli import COMMANDS, SUMMARIES, load_command, main
from edge.data import Chat, load_chats, parse_chat, render
from edge.template import render_text
from edge.errors import EdgeError
from tests.conftest import EDGE, ROOT


# --- CLI ---------------------------------------------------------------------------------

def test_every_command_resolves_to_a_documented_function():
    assert set(COMMANDS) == set(SUMMARIES)
    for name in COMMANDS:
        fn = load_command(name)
        assert callable(fn), name
        doc = inspect.getdoc(fn)
        assert doc and doc.strip(), f"{name} has no docstring"
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        for p in params:
            assert f"{p}:" in doc, f"`edge {name}`: parameter {p!r} is not documented in Args:"


def test_help_lists_every_command():
    out = subprocess.run(EDGE + ["--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_command_help_derives_flags_from_signature():
    out = subprocess.run(EDGE + ["demo", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert "--out" in out.stdout and "--steps" in out.stdout and "fine-tuning steps" in out.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run(EDGE + ["convert", "--model", str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "no such local directory" in out.stderr


# --- models ------------------------------------------------------------------------------

def test_model_specs_give_clear_errors(tmp_path):
    from edge.models import resolve

    with pytest.raises(EdgeError, match="no config.json"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(EdgeError, match="only Gemma 3"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    with pytest.raises(EdgeError, match="no weights"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EdgeError, match="not valid JSON"):
        resolve(str(tmp_path))
    with pytest.raises(EdgeError, match="not in the local Hugging Face cache"):
        resolve("nobody/not-a-cached-model")


def test_tiny_directory_loads(tiny_dir):
    from edge.models import load

    model, tok = load(str(tiny_dir))
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert tok.chat_template


def test_embedded_cache_conversion_is_locked(tmp_path, monkeypatch):
    """A second process waiting on the lock finds the finished checkpoint and does not convert."""
    import edge.models as m

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path))
    calls = []

    def fake_convert(gguf, out):
        calls.append(out)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(m, "_convert_gguf", fake_convert)
    monkeypatch.setattr(m, "embedded_gguf", lambda: Path("x.gguf"))
    assert m.ensure_embedded() == tmp_path / "models" / m.EMBEDDED_DIR_NAME
    assert m.ensure_embedded() == tmp_path / "models" / m.EMBEDDED_DIR_NAME
    assert len(calls) == 1
    assert not (tmp_path / "models" / (m.EMBEDDED_DIR_NAME + ".part")).exists()


@pytest.mark.real
def test_embedded_is_the_real_270m(real_model):
    model, tok = real_model
    n = sum(p.numel() for p in model.parameters())
    assert 268.0e6 < n < 268.2e6
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == gemma3.BOS_ID and (ids == gemma3.BOS_ID).sum() == 1
    import torch

    # Real weights know English: low perplexity on a plain sentence (random weights: ~262,144).
    text = tok("The quick brown fox jumps over the lazy dog. The capital of France is Paris.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**text, labels=text.input_ids).loss
    assert torch.exp(loss) < 100, f"perplexity {torch.exp(loss):.0f}: these are not the real weights"


# --- data --------------------------------------------------------------------------------

def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_jsonl_errors_name_the_line(tmp_path):
    ok = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    with pytest.raises(EdgeError, match=r"d.jsonl:2: not valid JSON"):
        load_chats(_write(tmp_path, [ok, "{oops"]))
    with pytest.raises(EdgeError, match=r"d.jsonl:1: message 0 has role 'bot'"):
        load_chats(_write(tmp_path, [json.dumps({"messages": [{"role": "bot", "content": "x"}]})]))
    with pytest.raises(EdgeError, match="no examples"):
        load_chats(_write(tmp_path, [""]))
    with pytest.raises(EdgeError, match="no assistant/model turns"):
        load_chats(_write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "x"}]})]))
    assert len(load_chats(_write(tmp_path, [ok, "", ok]))) == 2


def test_render_masks_only_replies_and_has_one_bos(tokenizer):
    chat = parse_chat({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Again"},
        {"role": "model", "content": "Hello"},
    ]}, "t")
    ids, mask = render(tokenizer, chat)
    assert ids.count(gemma3.BOS_ID) == 1 and ids[0] == gemma3.BOS_ID
    replies = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert replies == "Hi there<end_of_turn>Hello<end_of_turn>"
    # The same text as the tokenizer's chat template (which must not add a second <bos>).
    text, _ = render_text(chat)
    templ = tokenizer.apply_chat_template(list(chat.messages), tokenize=False)
    assert templ == text
    assert tokenizer.apply_chat_template(list(chat.messages), tokenize=True, return_dict=True)["input_ids"].count(gemma3.BOS_ID) <= 1


def test_demo_task_is_bundled():
    from edge import task

    train, evals = load_chats(task.TRAIN), load_chats(task.EVAL)
    assert len(train) >= 200 and len(evals) >= 50
    prompts = {c.messages[0]["content"] for c in train}
    assert not prompts & {c.messages[0]["content"] for c in evals}, "eval leaks into train"


# --- run folder and demo plumbing ----------------------------------------------------------

def test_run_manifest_records_outputs(tmp_path):
    from edge.runfolder import Run

    run = Run.open(tmp_path / "r")
    f = run.path("a.txt")
    f.write_text("hello")
    run.record("stage", outputs=[f], settings={"x": 1})
    again = Run.open(tmp_path / "r")
    out = again.data["stages"]["stage"]["outputs"][0]
    assert out["path"] == "a.txt" and out["size"] == 5 and len(out["sha256"]) == 64
    assert again.outputs("stage") == [run.path("a.txt")]


def test_no_stage_imports_the_pipeline_or_the_demo():
    """The pipeline imports the stages, never the reverse (an import contract, as the TUI's)."""
    import ast

    stages = ["edge/finetune.py", "edge/merge.py", "edge/export.py", "edge/budget.py", "edge/evaluate.py",
              "edge/modelinfo.py", "edge/phonespeed.py", "edge/profiles/__init__.py",
              "edge/push.py", "edge/apps.py", "edge/card.py", "edge/publish.py", "edge/data.py",
              "edge/chatformats.py", "edge/runfolder.py", "edge/stages.py", "edge/vocab.py", "edge/template.py",
              "edge/modelfile.py", "edge/ggufinfo.py", *map(str, Path(ROOT, "quantize").glob("*.py"))]
    for f in stages:
        tree = ast.parse(Path(ROOT, f).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"edge.pipeline", "edge.demo"}, f"{f} imports {names & {'edge.pipeline', 'edge.demo'}}"
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "demo_stage" for n in ast.walk(tree)), f


def import_cycles(root: Path) -> list[set[str]]:
    """The import cycles among edge/, quantize/, tui_screens/ and tui.py: every import statement,
    lazy ones inside functions included, as a module graph; its strongly connected components."""
    import ast
    import sys

    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in ("edge", "quantize", "tui_screens") for p in (root / pkg).rglob("*.py")}
    files["tui"] = root / "tui.py"
    graph: dict[str, set[str]] = {m: set() for m in files}
    for m, p in files.items():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                names = [n.module] + [f"{n.module}.{a.name}" for a in n.names]
            else:
                continue
            graph[m] |= {x for x in names if x in files and x != m}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(files)))

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle(tmp_path):
    # lazy imports count: a cycle through a function's import is still a cycle
    assert import_cycles(ROOT) == []
    # the check sees a cycle made of lazy imports
    for name, text in (("a", "def f():\n    from edge import b\n"), ("b", "import edge.a\n")):
        (tmp_path / "edge").mkdir(exist_ok=True)
        (tmp_path / "edge" / f"{name}.py").write_text(text)
    (tmp_path / "tui.py").write_text("")
    assert import_cycles(tmp_path) == [{"edge.a", "edge.b"}]
