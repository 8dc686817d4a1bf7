"""`edge run`: data formats, the run folder's keys and roles, resume after a kill, reruns that redo
exactly what changed, the model card, publishing to a stand-in Hub, and bad input.

Most tests share one pipeline run on the tiny Gemma 3 (tests/tiny.py); the last test runs the
real chain on the embedded 270M."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edge.cli import main
from edge.data import read_chats
from edge.template import render_text
from edge.errors import EdgeError
from edge.pipeline import RunSettings, STAGE_NAMES, build_settings, run_pipeline
from edge.stages import train_settings
from edge.runfolder import Run
from tests.conftest import EDGE, ROOT, snapshot


CHATS = [
    [("system", "Answer in one word."), ("user", "Capital of France?"), ("model", "Paris")],
    [("user", "Two plus two?"), ("model", "Four")],
    [("user", "Colour of the sky?"), ("model", "Blue")],
]


def _messages(chat):
    return [{"role": "assistant" if r == "model" else r, "content": c} for r, c in chat]


def _write_formats(d: Path) -> dict[str, Path]:
    """The same three chats in every format `edge run` reads."""
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    files["messages.jsonl"] = d / "messages.jsonl"
    files["messages.jsonl"].write_text("".join(json.dumps({"messages": _messages(c)}) + "\n" for c in CHATS))
    sharegpt = [{"conversations": [{"from": {"user": "human", "model": "gpt", "system": "system"}[r], "value": c}
                                   for r, c in chat]} for chat in CHATS]
    files["sharegpt.json"] = d / "sharegpt.json"
    files["sharegpt.json"].write_text(json.dumps(sharegpt))
    alpaca = [{"instruction": chat[-2][1], "input": "", "output": chat[-1][1],
               "system": chat[0][1] if chat[0][0] == "system" else ""} for chat in CHATS]
    files["alpaca.csv"] = d / "alpaca.csv"
    with open(files["alpaca.csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output", "system"])
        w.writeheader()
        w.writerows(alpaca)
    text = []
    for chat in CHATS:
        sys_ = chat[0][1] + "\n\n" if chat[0][0] == "system" else ""
        turns = [t for t in chat if t[0] != "system"]
        text.append({"text": "".join(f"<start_of_turn>{r}\n{(sys_ if i == 0 else '') + c}<end_of_turn>\n"
                                     for i, (r, c) in enumerate(turns))})
    files["text.jsonl"] = d / "text.jsonl"
    files["text.jsonl"].write_text("".join(json.dumps(t) + "\n" for t in text))
    import pyarrow as pa
    import pyarrow.parquet as pq

    files["alpaca.parquet"] = d / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist(alpaca), files["alpaca.parquet"])
    import datasets

    files["datasets"] = d / "ds"
    datasets.Dataset.from_list([{"messages": _messages(c)} for c in CHATS]).save_to_disk(str(files["datasets"]))
    return files


def test_every_format_gives_the_same_rendered_chats(tmp_path):
    files = _write_formats(tmp_path)
    rendered, detected = {}, {}
    for name, f in files.items():
        chats, detected[name] = read_chats(f)
        rendered[name] = [render_text(c)[0] for c in chats]
    first = rendered["messages.jsonl"]
    assert first[0].startswith("<start_of_turn>user\nAnswer in one word.\n\nCapital of France?<end_of_turn>")
    assert all(r == first for r in rendered.values()), {k: v[0] for k, v in rendered.items()}
    assert "ShareGPT" in detected["sharegpt.json"] and "Alpaca" in detected["alpaca.csv"]
    assert detected["alpaca.parquet"].startswith("parquet") and detected["datasets"].startswith("datasets folder")
    assert "text" in detected["text.jsonl"] and all(d.endswith(": 3 records") for d in detected.values())


def test_plain_text_is_one_model_turn(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"text": "Once upon a time."}) + "\n")
    (chat,), _ = read_chats(f)
    assert chat.messages == ({"role": "model", "content": "Once upon a time."},)


@pytest.mark.parametrize("content, match", [
    ('{"prompt": "x", "completion": "y"}\n', r"d.jsonl:1: unknown chat format \(fields: completion, prompt\)"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
     '{"conversations": [{"from": "human", "value": "x"}]}\n', r"d.jsonl:2: this record is sharegpt"),
    ('{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt"}]}\n',
     r"d.jsonl:1: conversations\[1\] has no string 'value'"),
    ('{"instruction": "x", "output": 5}\n', r"d.jsonl:1: field 'output' must be a string"),
    ("\n\n", r"d.jsonl has no examples"),
    ('[' * 100 + ']' * 100 + "\n", r"d.jsonl:1: JSON nested deeper than"),
])
def test_format_errors_name_file_line_and_field(tmp_path, content, match):
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    with pytest.raises(EdgeError, match=match):
        read_chats(f)


def test_invalid_utf8_is_one_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes(b"instruction,output\n\xff\xfe,x\n")
    with pytest.raises(EdgeError, match="not UTF-8"):
        read_chats(f)


def test_steps_or_epochs_reach_the_fine_tune():
    ts = train_settings(RunSettings(data="x", out="y", batch_size=8))
    assert (ts.epochs, ts.warmup, ts.full) == (3.0, -1, False)     # default: 3 epochs, train() counts the steps
    ts = train_settings(RunSettings(data="x", out="y", steps=30, lr=1e-3, full=True))
    assert (ts.steps, ts.epochs, ts.warmup, ts.eval_every, ts.lr, ts.full) == (30, 0.0, 3, 30, 1e-3, True)
    assert ts.steps_for_epochs(20) == 1 and train_settings(RunSettings(data="x", out="y", epochs=0.5)).epochs == 0.5


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[run]\ndata = "a.jsonl"\nout = "runs/a"\nrecipes = "Q8_0, Q4_K_M"\nsteps = 7\nctx = 2048\n'
                   'keep-reference = true\n')
    s = build_settings(str(cfg), {"steps": 9, "ctx": None, "full": False, "keep_reference": False})
    assert (s.data, s.steps, s.ctx, s.recipes, s.keep_reference) == ("a.jsonl", 9, 2048, ("Q8_0", "Q4_K_M"), True)
    cfg.write_text('steps = 3\nwarp = 9\n')
    with pytest.raises(EdgeError, match="unknown setting 'warp'"):
        build_settings(str(cfg), {})
    with pytest.raises(EdgeError, match="--publish needs --private or --public"):
        build_settings("", {"data": "a", "out": "b", "publish": "me/x"})


# ---- one pipeline run on the tiny model ---------------------------------------------------------
def _settings(model: Path, out: Path, **kw) -> RunSettings:
    from edge.task import EVAL, TRAIN

    base = dict(data=str(TRAIN), eval=str(EVAL), out=str(out), model=str(model), steps=4, recipes=("Q8_0",),
                eval_tokens=48, eval_ctx=64, devices=("pixel_7",), name="t")
    return RunSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("run") / "t"
    lines = []
    run_pipeline(_settings(tiny_dir, out), say=lines.append)
    return out, lines


def _rows(lines: list[str]) -> dict[str, str]:
    """stage -> its summary line from the printed table."""
    table = lines[-1].split("-------\n", 1)[1].splitlines()
    return {ln.split()[0]: ln for ln in table if ln.split() and ln.split()[0] in STAGE_NAMES}


def test_a_run_records_every_output_by_role(tiny_run):
    out, lines = tiny_run
    run = Run.open(out, create=False)
    assert list(_rows(lines)) == ["data", "fine-tune", "merge", "export", "imatrix", "quantize", "evaluate",
                                  "budget", "card"]
    assert [p.name for p in run.variants()] == ["gemma-3-t-Q8_0.gguf"]
    assert run.adapter() == out / "adapter" and run.model_dir() == out / "merged"
    assert run.report() == out / "report.json" and run.budget() == out / "budget.json"
    assert run.card() == out / "README.md" and run.imatrix() == out / "imatrix.gguf"
    assert all(run.entry(s)["state"] == "done" and run.entry(s)["key"] for s in _rows(lines))
    # the F32 reference was dropped once scored, and run.json says so
    assert run.reference() is not None and not run.reference().exists()
    assert run.missing_outputs("export") == [run.reference(), run.reference().with_suffix(".Modelfile")]
    mf = out / "gguf" / "gemma-3-t-Q8_0.Modelfile"          # Ollama's file beside the file people run
    assert run.outputs("quantize", "modelfile") == [mf] and "FROM ./gemma-3-t-Q8_0.gguf" in mf.read_text()
    assert "dropped gemma-3-t-F32.gguf" in "\n".join(lines)


def test_no_local_path_reaches_a_shared_file(tiny_run):
    from edge.ggufinfo import read_gguf

    out, _ = tiny_run
    needles = [str(out.parent), str(Path.home()), "/tmp/"]
    meta = read_gguf(out / "gguf" / "gemma-3-t-Q8_0.gguf").metadata
    strings = [str(v) for k, v in meta.items() if k.startswith("general.")]
    assert meta["general.name"] == "gemma-3-t" and meta["general.basename"] == "gemma-3-t"
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    card = (out / "README.md").read_text()
    for text in strings + [adapter_cfg["base_model_name_or_path"], card]:
        assert not any(n in text for n in needles), text[:200]
    assert "gemma-3-t-Q8_0.gguf" in card and "## How to run it" in card and "top_k 64" in card
    assert card.startswith("---\n") and "license: gemma" in card


def test_reruns_skip_what_is_done_and_redo_what_changed(tiny_run, tiny_dir):
    out, _ = tiny_run
    lines = []
    t0 = time.time()
    run_pipeline(_settings(tiny_dir, out), say=lines.append)
    assert time.time() - t0 < 30                          # nothing ran (a generous bound; bench/pipeline.py times it)
    assert all("up to date" in r for r in _rows(lines).values())
    lines = []
    run_pipeline(_settings(tiny_dir, out, ctx=2048), say=lines.append)   # a budget setting
    rows = _rows(lines)
    assert [s for s, r in rows.items() if "up to date" not in r] == ["budget", "card"]
    assert json.loads((out / "budget.json").read_text())["ctx"] == 2048
    lines = []
    run_pipeline(_settings(tiny_dir, out, ctx=2048), from_stage="evaluate", say=lines.append)
    rows = _rows(lines)
    assert [s for s, r in rows.items() if "up to date" not in r] == ["evaluate", "budget", "card"]
    assert "== export (again: evaluate needs its files)" in "\n".join(lines)   # the dropped reference is remade


@pytest.mark.slow
def test_a_killed_run_resumes(tiny_dir, tmp_path):
    """kill -9 during the fine-tune, then during quantize: each next `edge run` finishes the job,
    the fine-tune from its checkpoint, and no final file is ever half-written."""
    from edge.task import EVAL, TRAIN

    out = tmp_path / "k"
    argv = EDGE + ["run", "--data", str(TRAIN), "--eval", str(EVAL), "--out", str(out), "--model", str(tiny_dir),
                   "--steps", "12", "--recipes", "Q8_0,Q4_0,IQ4_NL,Q6_K,Q4_K_M", "--device", "pixel_7",
                   "--name", "k"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def kill_when(ready, timeout=240):
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while not ready() and proc.poll() is None and time.time() - t0 < timeout:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def state(stage):
        try:
            return json.loads((out / "run.json").read_text())["stages"].get(stage, {}).get("state")
        except (OSError, ValueError):
            return None

    kill_when(lambda: any((out / "adapter" / "checkpoints").glob("step-*")))
    assert state("fine-tune") == "running"
    kill_when(lambda: state("quantize") == "running")
    assert state("fine-tune") == "done" and state("quantize") == "running"
    lines = []
    s = RunSettings(data=str(TRAIN), eval=str(EVAL), out=str(out), model=str(tiny_dir), steps=12,
                    recipes=("Q8_0", "Q4_0", "IQ4_NL", "Q6_K", "Q4_K_M"), devices=("pixel_7",), name="k")
    run_pipeline(s, say=lines.append)
    rows = _rows(lines)
    assert "up to date" in rows["fine-tune"] and "up to date" not in rows["quantize"]
    run = Run.open(out, create=False)
    assert len(run.variants()) == 5 and all(run.entry(n)["state"] == "done" for n in rows)
    from edge.ggufinfo import read_gguf

    for v in run.variants():                              # complete, readable files under the final names
        assert len(read_gguf(v).tensors) > 0


def test_the_fine_tune_resumes_from_its_checkpoint(tiny_dir, tmp_path, monkeypatch):
    """Ctrl-C in the fine-tune leaves it "running" with a checkpoint; the next run continues from it."""
    import edge.finetune

    out = tmp_path / "r"
    s = _settings(tiny_dir, out, steps=4)
    real_train = edge.finetune.train

    def interrupted_at_step_2(**kw):
        def stop(step, model, record):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)     # what Ctrl-C does: train() saves, then stops
        return real_train(**kw, callback=stop)

    monkeypatch.setattr(edge.finetune, "train", interrupted_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(s, say=lambda m: None)
    run = Run.open(out, create=False)
    assert run.entry("fine-tune")["state"] == "running" and run.entry("data")["state"] == "done"
    assert max(p.name for p in (out / "adapter" / "checkpoints").glob("step-*")) == "step-000002"
    monkeypatch.setattr(edge.finetune, "train", real_train)
    lines = []
    run_pipeline(s, say=lines.append)
    assert any("resuming the interrupted fine-tune" in ln for ln in lines)
    log = [json.loads(x) for x in (out / "adapter" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


# ---- bad input: one line, exit 2, nothing in the run folder lost ---------------------------------
@pytest.mark.parametrize("case", ["unknown format", "missing field", "empty", "no phone", "no visibility",
                                  "bad recipe", "bad device", "from what", "two gpus", "under torchrun"])
def test_bad_input_is_one_line_and_keeps_the_run(case, tiny_run, tiny_dir, tmp_path, capsys, adb_server,
                                                monkeypatch):
    out, _ = tiny_run
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")       # this machine's GPUs, if any, do not count
    if case == "under torchrun":
        monkeypatch.setenv("WORLD_SIZE", "2")
    before = snapshot(out)
    data = tmp_path / "d.jsonl"
    data.write_text({"unknown format": '{"q": "x", "a": "y"}\n',
                     "missing field": '{"messages": [{"role": "user", "content": "x"}]}\n'
                                      '{"messages": [{"role": "assistant"}]}\n',
                     "empty": ""}.get(case, '{"messages": [{"role": "user", "content": "x"}, '
                                              '{"role": "assistant", "content": "y"}]}\n'))
    extra = {"no phone": ["--push", "chatterui"], "no visibility": ["--publish", "me/x"],
             "bad recipe": ["--recipes", "Q4_K_XXL"], "bad device": ["--device", "nokia_3310"],
             "from what": ["--from", "deploy"], "two gpus": ["--gpus", "2"],
             "under torchrun": ["--gpus", "2"]}.get(case, [])
    code = main(["run", "--data", str(data), "--out", str(out), "--model", str(tiny_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert {"unknown format": "d.jsonl:1: unknown chat format", "missing field": "d.jsonl:2: message 0 has no string",
            "empty": "has no examples", "no phone": "no phone connected", "no visibility": "--private or --public",
            "bad recipe": "Q4_K_XXL", "bad device": "nokia_3310", "from what": "deploy",
            "two gpus": "--gpus 2: this machine has 0 CUDA GPUs", "under torchrun": "not under torchrun"}[case] in err
    assert snapshot(out) == before


# ---- several GPUs (here two CPU processes: the GPU count is pretended) --------------------------------
@pytest.mark.slow
def test_a_fine_tune_on_two_gpus_trains_what_one_does(tiny_run, tiny_dir, tmp_path, monkeypatch, capsys):
    """`edge run --gpus 2` fine-tunes in two processes (torchrun) to the adapter one process
    trains; the number of GPUs is in no stage's key, so a finished run stays up to date."""
    import shutil

    from safetensors.torch import load_file

    from edge import distributed

    out1, _ = tiny_run
    monkeypatch.setattr(distributed, "gpu_count", lambda: 2)
    for k, v in {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    out2 = tmp_path / "two"
    shutil.copytree(out1 / "data", out2 / "data")
    shutil.copy(out1 / "run.json", out2 / "run.json")      # data done: the next stage is the fine-tune
    run = Run.open(out2, create=False)
    for stage in [s for s in run.data["stages"] if s != "data"]:
        del run.data["stages"][stage]
    run.save()
    lines = []
    run_pipeline(_settings(tiny_dir, out2, gpus=2, accuracy=True), say=lines.append)
    assert "up to date" in _rows(lines)["data"] and "up to date" not in _rows(lines)["fine-tune"]
    assert "starting 2 processes, one per GPU, with torchrun" in capsys.readouterr().err
    assert any(ln.startswith("task accuracy after:") for ln in lines)  # the adapter the processes wrote, loaded
    one, two = (load_file(o / "adapter" / "adapter_model.safetensors") for o in (out1, out2))
    assert one.keys() == two.keys()
    for k in one:
        assert (one[k] - two[k]).abs().max() < 1e-4, k
    log1, log2 = ([json.loads(x)["loss"] for x in (o / "adapter" / "log.jsonl").read_text().splitlines()
                   if "loss" in json.loads(x)] for o in (out1, out2))
    assert log1 == pytest.approx(log2, rel=1e-4)
    assert not list(out2.glob("fine-tune-job*"))             # the job file and its result are gone
    lines = []
    run_pipeline(_settings(tiny_dir, out2, accuracy=True), say=lines.append)  # the same run on one device
    assert all("up to date" in r for r in _rows(lines).values())


# ---- publishing (a local stand-in for the Hub's HTTP API) ------------------------------------------
def test_publish_uploads_the_chosen_file_and_the_card(tiny_run, tiny_dir, monkeypatch):
    from huggingface_hub import HfApi

    import edge.publish
    from tests.hubsim import HubSim

    import huggingface_hub.constants

    out, _ = tiny_run
    hub = HubSim()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)   # the tests run offline
    monkeypatch.setattr(edge.publish, "hf_api", lambda: HfApi(endpoint=hub.url, token="hf_test"))
    try:
        lines = []
        run_pipeline(_settings(tiny_dir, out, ctx=2048, publish="me/gemma-3-t", private=True), say=lines.append)
    finally:
        hub.close()
    rows = _rows(lines)
    redone = [s for s, r in rows.items() if "up to date" not in r]
    assert redone[-2:] == ["card", "publish"] and set(redone) <= {"budget", "card", "publish"}   # budget: if ctx moved
    repo = hub.repos["me/gemma-3-t"]
    assert repo["private"] is True and sorted(repo["files"]) == ["README.md", "gemma-3-t-Q8_0.gguf"]
    assert repo["files"]["gemma-3-t-Q8_0.gguf"] == (out / "gguf" / "gemma-3-t-Q8_0.gguf").read_bytes()
    card = repo["files"]["README.md"].decode()
    assert "`me/gemma-3-t`" in card and str(out) not in card and hub.cards == [card]


# ---- the real chain on the embedded 270M --------------------------------------------------------
@pytest.mark.real
@pytest.mark.slow
def test_edge_run_on_the_embedded_model_with_sharegpt_chats(tmp_path, capsys):
    """A user's ShareGPT file (20 chats) through every stage with the real Gemma 3 270M and llama.cpp."""
    from edge.data import load_chats
    from edge.task import TRAIN

    chats = load_chats(TRAIN)[:20]
    data = tmp_path / "mine.json"
    data.write_text(json.dumps([{"conversations": [{"from": "human" if m["role"] == "user" else "gpt",
                                                    "value": m["content"]} for m in c.messages]} for c in chats]))
    out = tmp_path / "mine"
    assert main(["run", "--data", str(data), "--out", str(out), "--steps", "4", "--recipes", "Q8_0",
                 "--device", "pixel_7", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in result["stages"]] == ["data", "fine-tune", "merge", "export", "imatrix",
                                                      "quantize", "evaluate", "budget", "card"]
    run = Run.open(out, create=False)
    assert [p.name for p in run.variants()] == ["gemma-3-270m-mine-Q8_0.gguf"]
    assert result["recommendations"] == {"pixel_7": "gemma-3-270m-mine-Q8_0.gguf"}
    assert run.entry("data")["summary"]["eval_chats"] == 2 and "ShareGPT" in run.entry("data")["summary"]["detected"]
    report = json.loads(run.report().read_text())
    q8 = next(r for r in report["variants"] if r["recipe"] == "Q8_0")
    assert 0 <= q8["kld_mean"] < 0.05
    card = run.card().read_text()
    assert "base_model: google/gemma-3-270m" in card and "gemma-3-270m-mine-Q8_0.gguf" in card


def test_full_fine_tuning_has_nothing_to_merge(tiny_dir, tmp_path):
    lines = []
    run_pipeline(_settings(tiny_dir, tmp_path / "f", full=True, steps=2), say=lines.append)
    run = Run.open(tmp_path / "f", create=False)
    assert "merge" not in _rows(lines) and run.model_dir() == tmp_path / "f" / "model"
    assert run.adapter() is None and [p.name for p in run.variants()] == ["gemma-3-t-Q8_0.gguf"]
    assert "full" in (tmp_path / "f" / "README.md").read_text()


def test_push_sends_the_recommended_file_and_its_card(tiny_run, tiny_dir, sim):
    """--push through the real adb to the simulated phone: the variant recommended on the first
    device lands in Download/ with the model card beside it."""
    out, _ = tiny_run
    lines = []
    run_pipeline(_settings(tiny_dir, out, push="chatterui", serial=sim.serial), say=lines.append)
    rows = _rows(lines)
    assert "up to date" not in rows["push"] and "verified" in rows["push"]
    files = sim.phone.files("/sdcard/Download")
    assert files["gemma-3-t-Q8_0.gguf"] == (out / "gguf" / "gemma-3-t-Q8_0.gguf").read_bytes()
    assert files["gemma-3-t-Q8_0.README.md"] == (out / "README.md").read_bytes()
    assert any("Import Model" in ln for ln in lines)


def test_names_that_become_file_names_are_checked():
    with pytest.raises(EdgeError, match="cannot be part of a file name"):
        RunSettings(data="x", out="y", name="../../etc/x")
    from edge.stages import slug

    assert slug("My Chats (v2)") == "My-Chats-v2" and slug("../..") == ""
