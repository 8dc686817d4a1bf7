"""What a newcomer sees on the terminal (issue 21): our own words for slow steps, and no library
noise (transformers' FutureWarnings and loading bars, llama.cpp's log lines).

Each check is paired with a control showing the library does make that noise when we do not
hide it, so the test fails when our filter stops working, and says so when the library changes.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from tests.conftest import EDGE, ROOT

NOISE = ("FutureWarning", "is_gradient_checkpointing", "gradient_checkpointing_enable", "Loading weights",
         "Writing model shards")


def test_lora_with_checkpointing_makes_transformers_warn(tiny_dir):
    """The control: without `edge.cli.quiet_libraries`, transformers 5 warns (FutureWarning) when
    gradient checkpointing is switched on, which the fine-tune does with --grad-checkpointing."""
    from edge.finetune import LoraSettings, add_lora
    from edge.models import load

    model, _ = load(str(tiny_dir), device="cpu")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        add_lora(model, LoraSettings(), grad_checkpointing=True)
    future = [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]
    assert any("gradient_checkpointing" in m for m in future), [str(w.message) for w in seen]


@pytest.mark.slow
def test_finetune_says_loading_and_first_step_and_hides_library_noise(tiny_dir, small_data, tmp_path):
    """`edge finetune` on the CPU: it says it is loading before the model loads, and the bar says
    the first step is the slow one; transformers' FutureWarnings and bars do not reach the user."""
    r = subprocess.run(EDGE + ["finetune", "--model", str(tiny_dir), "--data", str(small_data), "--out",
                               str(tmp_path / "ft"), "--steps", "1", "--batch-size", "2", "--grad-checkpointing"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith(f"loading the base model ({tiny_dir})"), out       # the first word, before any wait
    assert "first step: the slowest (warm-up)" in r.stderr                        # on the bar while it waits
    for noise in NOISE:
        assert noise not in r.stdout + r.stderr, noise


def test_compiling_is_said_before_the_compile_starts(tiny_dir, small_data, tmp_path, monkeypatch):
    """With --compile on, "compiling ..." is said before the layers are compiled, and the bar says
    the first step waits for it. (torch.compile itself takes minutes on this CPU for the tiny
    model, so the compile call is recorded here instead of run; what it does is tested elsewhere.)"""
    from edge import finetune

    said: list[str] = []
    monkeypatch.setattr(finetune, "compile_layers", lambda *a, **k: said.append("<compile_layers called>"))
    monkeypatch.setattr(finetune, "use_compile_cache", lambda: None)
    finetune.train(model=str(tiny_dir), data=small_data, out=tmp_path / "ft", progress=False, say=said.append,
                   settings=finetune.TrainSettings(steps=1, batch_size=2, compile=True))
    i = said.index("<compile_layers called>")
    assert said[i - 1].startswith("compiling the layers with torch.compile"), said
    assert any(s.startswith("loading the base model") for s in said[:i]), said


@pytest.mark.slow
def test_the_gguf_conversion_hides_transformers_dequantizing_bar(tiny_dir, tmp_path, capfd):
    """The first run converts the embedded GGUF (3-4 minutes); transformers drew its own
    "Converting and de-quantizing GGUF tensors" bar (plain tqdm, not silenced by
    HF_HUB_DISABLE_PROGRESS_BARS) under our line. `quiet_gguf_loading`, used by the conversion,
    hides it. Shown here on a GGUF of the tiny model, through the same transformers function."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from edge.export import export_gguf
    from edge.models import quiet_gguf_loading
    from tests.tiny import tiny_model

    path = tmp_path / "t.gguf"
    export_gguf(tiny_dir, path)
    model = tiny_model()
    capfd.readouterr()
    load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    assert "Converting and de-quantizing" in capfd.readouterr().err          # the control
    with quiet_gguf_loading():
        load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    assert "Converting and de-quantizing" not in capfd.readouterr().err


def test_merge_defaults_to_fp32_as_the_readme_pipeline_does():
    """Issue 21: `merge` defaulted to bf16 while the README's pipeline merges in fp32; the default and
    its help must say fp32, and the README's merge line must agree."""
    out = subprocess.run(EDGE + ["merge", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    dtype_help = " ".join(out.stdout.split("--dtype", 1)[1].split())
    assert "default: fp32" in dtype_help, dtype_help
    readme = (ROOT / "README.md").read_text()
    merge_lines = [ln for ln in readme.splitlines() if ln.startswith("edge merge ")]
    assert merge_lines and all("--dtype bf16" not in ln and "--dtype fp16" not in ln for ln in merge_lines)


def test_the_first_conversion_says_what_the_default_model_is(tmp_path, monkeypatch, capsys):
    """Issue 21: the default model is the pretrained 270M dequantized from Q4_K_M; the first
    conversion says so (and the README too), with what it means for quality. The conversion itself
    is replaced here (it takes minutes); what is printed around it is the real code's."""
    from edge import models

    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(models, "embedded_gguf", lambda: tmp_path / "gemma-3-270m-Q4_K_M.gguf")

    def fake_convert(gguf, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    models.ensure_embedded(verbose=True)
    said = " ".join(capsys.readouterr().out.split())
    for fact in ("pretrained (not instruction-tuned)", "Q4_K_M", "weaker", "google/gemma-3-270m", "3-4 minutes"):
        assert fact in said, fact
    models.ensure_embedded(verbose=True)                     # converted once: nothing more to say
    assert capsys.readouterr().out == ""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "*pretrained* 270M (not the instruction-tuned `-it`)" in readme and "dequantized" in readme


# ---- llama.cpp's "using full-size SWA cache" line ----------------------------------------------
SWA_LINE = "full-size SWA cache"


@pytest.mark.real
def test_llama_cpp_prints_the_swa_line_by_itself():
    """The control: llama-cpp-python's Llama, even with verbose=False, prints the line on fd 2
    for Gemma 3 (sliding-window layers, swa_full by default)."""
    from edge.models import embedded_gguf

    code = f"from llama_cpp import Llama; Llama(model_path={str(embedded_gguf())!r}, n_ctx=256, verbose=False)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert SWA_LINE in r.stderr


@pytest.mark.real
@pytest.mark.parametrize("how", ["prompt", "json", "interactive"])
def test_edge_chat_does_not_print_the_swa_line(how):
    from edge.models import embedded_gguf

    argv = EDGE + ["chat", str(embedded_gguf()), "--max-tokens", "2", "--greedy", "--n-ctx", "256"]
    argv += {"prompt": ["--prompt", "hi"], "json": ["--prompt", "hi", "--json"], "interactive": []}[how]
    r = subprocess.run(argv, input="hi\n" if how == "interactive" else None, capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert SWA_LINE not in r.stdout + r.stderr
    assert "llama_" not in r.stdout + r.stderr, r.stderr       # no other llama.cpp log line either


@pytest.mark.real
def test_scoring_contexts_keep_llama_cpp_quiet(capfd):
    """edge evaluate / quantize's scoring open llama.cpp through edge.llamacpp.Model: its log
    goes to a list, nothing to the terminal's file descriptors."""
    from edge.llamacpp import Model
    from edge.models import embedded_gguf

    capfd.readouterr()
    with Model(embedded_gguf()) as m, m.context(n_ctx=256) as ctx:
        ids = m.tokenize(b"Hello", add_bos=True)
        ctx.decode([(0, ids, [len(ids) - 1])])
    out, err = capfd.readouterr()
    assert SWA_LINE not in out + err and "llama_" not in out + err, err
