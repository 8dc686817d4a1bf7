"""One chat format: `edge.template.render_text` (what the fine-tune trains on) is the definition;
the tokenizer's Jinja template, the GGUF's Jinja template and the Ollama Modelfile's Go template
must render the same text, with and without a system message. The Modelfile's template is read
back from a written Modelfile and rendered by tests/gotemplate.py (a renderer of the Go
text/template subset it uses)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from edge import gemma3
from edge.modelfile import modelfile_cmd, modelfile_text
from edge.template import CHAT_TEMPLATE, GGUF_CHAT_TEMPLATE, OLLAMA_TEMPLATE, render_chat, render_text
from tests import gotemplate
from tests.ggufbytes import gguf_bytes, model_kv, model_tensors

SYSTEM = {"role": "system", "content": "Answer in one word."}
CHATS = {
    "one user turn": [{"role": "user", "content": "Capital of France?"}],
    "system + user": [SYSTEM, {"role": "user", "content": "Capital of France?"}],
    "multi-turn": [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Hello!"},
                   {"role": "user", "content": "Capital of France?"}],
    "system + multi-turn": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                            {"role": "user", "content": "Capital of Japan?\n東京 or 京都"}],
    "ends with the model": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "model", "content": "Hello!"}],
    "system only": [SYSTEM],
}


def ollama_messages(messages):
    """What Ollama passes its template: .Messages with Role/Content, assistant for the model."""
    return [{"Role": "assistant" if m["role"] == "model" else m["role"], "Content": m["content"]} for m in messages]


def modelfile_template(text: str) -> str:
    m = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    assert m, "the Modelfile has no TEMPLATE"
    return m.group(1)


def test_definition_folds_the_system_prompt_into_the_first_user_turn():
    text, spans = render_text(CHATS["system + multi-turn"], add_generation_prompt=True)
    assert text == ("<start_of_turn>user\nAnswer in one word.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\nCapital of Japan?\n東京 or 京都<end_of_turn>\n"
                    "<start_of_turn>model\n")
    assert [text[a:b] for a, b in spans] == ["Hello!<end_of_turn>"]
    assert "system" not in text and gemma3.BOS not in text


@pytest.mark.parametrize("name", CHATS)
@pytest.mark.parametrize("generation", [False, True])
def test_jinja_templates_render_the_definition(name, generation):
    want = render_text(CHATS[name], generation)[0]
    assert render_chat(CHAT_TEMPLATE, CHATS[name], generation) == want
    assert render_chat(GGUF_CHAT_TEMPLATE, CHATS[name], generation) == gemma3.BOS + want


@pytest.mark.parametrize("name", CHATS)
def test_modelfile_template_renders_the_definition(name, tmp_path):
    """Ollama has no add_generation_prompt: the generation prompt follows a last message that is
    not the model's (a chat request ends with the user's turn)."""
    template = modelfile_template(modelfile_text("m.gguf"))
    assert template == OLLAMA_TEMPLATE
    messages = CHATS[name]
    generation = messages[-1]["role"] not in ("model", "assistant")
    got = gotemplate.render(template, {"Messages": ollama_messages(messages)})
    assert got == render_text(messages, generation)[0]


def test_the_check_fails_for_a_separate_system_turn():
    """The Modelfile template of the previous release rendered the system prompt as a turn of
    its own; the renderer and the comparison above tell it apart."""
    old = ('{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}'
           '{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n'
           '{{ if $last }}<start_of_turn>model\n{{ end }}'
           '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}'
           '{{ if not $last }}<end_of_turn>\n{{ end }}{{- end }}{{- end }}')
    messages = CHATS["system + user"]
    got = gotemplate.render(old, {"Messages": ollama_messages(messages)})
    assert got == ("<start_of_turn>user\nAnswer in one word.<end_of_turn>\n"
                   "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n")
    assert got != render_text(messages, True)[0]
    # without a system message the old template agreed: the difference is the system prompt alone
    one = CHATS["one user turn"]
    assert gotemplate.render(old, {"Messages": ollama_messages(one)}) == render_text(one, True)[0]
    with pytest.raises(ValueError, match="unsupported"):  # outside the subset: refused, not guessed
        gotemplate.render("{{ template \"x\" }}", {})


def test_modelfile_elsewhere_points_back_at_the_gguf(tmp_path, capsys):
    gguf = tmp_path / "variants" / "m-Q4_K_M.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(gguf_bytes(model_kv(), model_tensors()))
    for out in (tmp_path / "elsewhere" / "deep" / "Modelfile", tmp_path / "variants" / "m.Modelfile",
                tmp_path / "Modelfile"):
        out.parent.mkdir(parents=True, exist_ok=True)
        modelfile_cmd(str(gguf), out=str(out))
        source = re.search(r"^FROM (.+)$", out.read_text(), re.M).group(1)
        assert not os.path.isabs(source)
        assert (out.parent / source).resolve() == gguf.resolve(), (out, source)  # Ollama resolves FROM here
        assert modelfile_template(out.read_text()) == OLLAMA_TEMPLATE
    assert re.search(r"^FROM \./m-Q4_K_M\.gguf$", (tmp_path / "variants" / "m.Modelfile").read_text(), re.M)
    # run from another folder with a relative path: still resolved from the Modelfile's folder
    cwd = Path.cwd()
    os.chdir(tmp_path / "elsewhere")
    try:
        modelfile_cmd("../variants/m-Q4_K_M.gguf", out="deep/M2", force=True)
    finally:
        os.chdir(cwd)
    source = re.search(r"^FROM (.+)$", (tmp_path / "elsewhere" / "deep" / "M2").read_text(), re.M).group(1)
    assert source == "../../variants/m-Q4_K_M.gguf"


@pytest.mark.parametrize("generation", [False, True])
def test_transformers_renders_the_tokenizer_template_as_the_definition(tokenizer, generation):
    """What a checkpoint's tokenizer renders (transformers' own Jinja environment) for each chat."""
    for name, messages in CHATS.items():
        got = tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=False,
                                            add_generation_prompt=generation)
        assert got == render_text(messages, generation)[0], name
