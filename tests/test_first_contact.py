"""What a newcomer sees on the terminal (issue 21): our own words for slow steps, and no library
noise (transformers' FutureWarnings and loading bars, llama.cpp's log lines).

Each check is paired with a control showing the library does make that noise when we do not
hide it, so the test fails when our filter stops working, and says so when the library changes.
"""

from __future__ import annotations

import os
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
def test_the_gguf_conversion_hides_transformers_dequantizing_bar(tiny_dir, tmp_path):
    """The first run converts the embedded GGUF (3-4 minutes); transformers drew its own
    "Converting and de-quantizing GGUF tensors" bar (plain tqdm, not silenced by
    HF_HUB_DISABLE_PROGRESS_BARS) under our line. `quiet_gguf_loading`, used by the conversion,
    hides it. Shown here on a GGUF of the tiny model, through the same transformers function."""
    from edge.export import export_gguf

    path = tmp_path / "t.gguf"
    export_gguf(tiny_dir, path)
    # in a process of its own: the suite's earlier in-process CLI calls and conversions change what
    # the libraries print (environment, log levels), and the control must see transformers' defaults
    code = ("import sys\n"
            "from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint\n"
            "from edge.models import quiet_gguf_loading\n"
            "from tests.tiny import tiny_model\n"
            "load_gguf_checkpoint(sys.argv[1], return_tensors=True, model_to_load=tiny_model())\n"
            "print('=== quiet ===', file=sys.stderr, flush=True)\n"
            "with quiet_gguf_loading():\n"
            "    load_gguf_checkpoint(sys.argv[1], return_tensors=True, model_to_load=tiny_model())\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TQDM_", "HF_HUB_DISABLE", "TRANSFORMERS_VERBOSITY"))}
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    control, quiet = r.stderr.split("=== quiet ===")
    assert "Converting and de-quantizing" in control          # the control
    assert "Converting and de-quantizing" not in quiet


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
