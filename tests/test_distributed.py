"""More than one process: `edge finetune` under torchrun on this CPU (gloo backend), tiny Gemma 3.

Two processes must train exactly what one does with the same global batch; a two-process run
stopped by SIGTERM on one process and resumed must equal an uninterrupted one; a process that
dies must end `edge finetune --gpus 2` in one line naming it; `--gpus 2` on a machine without
two GPUs is one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.errors import EdgeError
from edge.finetune import TrainSettings
from tests.conftest import ROOT

STEPS = 24


def _args(tiny_dir, small_data, out, *extra) -> list[str]:
    return ["finetune", "--model", str(tiny_dir), "--data", str(small_data), "--out", str(out), "--batch-size", "4",
            "--lr", "5e-3", "--precision", "fp32", "--steps", str(STEPS), "--save-every", "100", "--json", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _torchrun(n: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "edge.cli", *args]


def _log(out: Path) -> list[dict]:
    f = out / "log.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def _workers(pid: int) -> dict[int, int]:
    """{rank: pid} of the processes torchrun (pid) started, read from /proc."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank:
            found[int(rank[0][5:])] = int(child)
    return found


@pytest.fixture(scope="module")
def two_rank(tiny_dir, small_data, tmp_path_factory) -> Path:
    """An uninterrupted two-process run, each process in micro-batches of 1 chat (accumulation)."""
    out = tmp_path_factory.mktemp("two") / "run"
    r = subprocess.run(_torchrun(2, _args(tiny_dir, small_data, out, "--micro-batch", "1")), env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_train_what_one_does(two_rank, tiny_dir, small_data, tmp_path):
    from safetensors.torch import load_file

    from edge.finetune import finetune_cmd

    finetune_cmd(model=str(tiny_dir), data=str(small_data), out=str(tmp_path / "one"), lr=5e-3,
                 precision="fp32", steps=STEPS, json=True,
                 training=TrainSettings(batch_size=4, save_every=100))
    one, two = _log(tmp_path / "one"), _log(two_rank)
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]  # the same chats per step, summed
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
        if "eval_loss" in a:
            assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
    assert one[-1]["loss"] < one[0]["loss"] - 0.2  # it trained something
    w1, w2 = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(two_rank / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert float((w1[k] - w2[k]).abs().max()) <= 1e-4 * max(1.0, float(w1[k].abs().max())), k
    meta = json.loads((two_rank / "edge_adapter.json").read_text())
    assert meta["train"]["micro_batch"] == 1


@pytest.mark.slow
def test_sigterm_on_one_process_then_resume_equals_uninterrupted(two_rank, tiny_dir, small_data, tmp_path):
    import torch

    from edge.finetune import STATE, finetune_cmd, latest_checkpoint

    out = tmp_path / "cut"
    job = subprocess.Popen(_torchrun(2, _args(tiny_dir, small_data, out, "--micro-batch", "1")), env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while len(_log(out)) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(_workers(job.pid)[1], signal.SIGTERM)  # one process only: rank 1
    _, err = job.communicate(timeout=300)
    ckpt = latest_checkpoint(out)
    assert ckpt is not None, err[-3000:]
    cut = int(ckpt.name.split("-")[1])
    assert 3 <= cut < STEPS, cut
    assert "interrupted at step" in err
    state = torch.load(ckpt / STATE, weights_only=True)
    assert state["dist"]["world"] == 2 and len(state["dist"]["rng"]) == 2

    # one process resumes the same checkpoint exactly too: the data position is global (no dropout)
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)
    finetune_cmd(model=str(tiny_dir), data=str(small_data), out=str(alone), resume=True, steps=STEPS, json=True)

    r = subprocess.run(_torchrun(2, _args(tiny_dir, small_data, out, "--resume")), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, straight = _log(out), _log(two_rank)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(straight, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), a["step"]
    assert [r["step"] for r in _log(alone)] == list(range(1, STEPS + 1))
    for a, b in zip(straight, _log(alone)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]


def test_resume_on_another_number_of_processes_with_dropout_is_refused():
    from edge.distributed import Dist

    state = {"dist": {"world": 2, "rng": [{}, {}]}}
    with pytest.raises(EdgeError, match="written by a run of 2 processes and this run has 1; with LoRA dropout 0.1"):
        Dist().check_resume(state, "ckpt", dropout=0.1)
    assert "carry over exactly" in Dist().check_resume(state, "ckpt", dropout=0.0)
    assert Dist(rank=1, world=2).check_resume(state, "ckpt", dropout=0.1) is None
    with pytest.raises(EdgeError, match="resume it with one process"):
        Dist(rank=0, world=2).check_resume({}, "ckpt", dropout=0.1)


@pytest.mark.slow
def test_gpus_launches_torchrun_and_a_dead_process_is_one_line(tiny_dir, small_data, tmp_path, monkeypatch, capsys):
    """`--gpus 2` starts two processes itself (here on the CPU: the GPU count is pretended);
    SIGKILL of process 1 ends it in one line that names process 1, not a hang."""
    from edge import distributed
    from edge.finetune import finetune_cmd

    monkeypatch.setattr(distributed, "gpu_count", lambda: 2)
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    killed = {}

    def kill_rank_1():
        deadline = time.time() + 400
        while len(_log(out)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        me = os.getpid()
        rank_1 = _workers(me).get(1)  # the launcher runs in this process: its workers are our children
        if rank_1:
            os.kill(rank_1, signal.SIGKILL)
            killed["pid"] = rank_1

    t = threading.Thread(target=kill_rank_1, daemon=True)
    t.start()
    t0 = time.time()
    with pytest.raises(distributed.RankError) as e:
        finetune_cmd(model=str(tiny_dir), data=str(small_data), out=str(out), precision="fp32",
                     steps=400, json=True, gpus=2,
                     training=TrainSettings(batch_size=4, save_every=1))
    t.join(5)
    assert killed, "no process of rank 1 found"
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("process 1 of 2 was killed by SIGKILL"), msg
    assert "last checkpoint:" in msg and "--resume" in msg
    assert time.time() - t0 < 400
    assert "starting 2 processes, one per GPU, with torchrun" in capsys.readouterr().err
    assert len(_log(out)) < 400


def test_gpus_without_gpus_is_one_line_exit_2(tmp_path, small_data):
    r = subprocess.run([sys.executable, "-m", "edge.cli", "finetune", "--gpus", "2", "--data", str(small_data),
                        "--out", str(tmp_path / "x")], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--gpus 2: this machine has 0 CUDA GPUs" in lines[0], r.stderr
    assert not (tmp_path / "x").exists()


def test_gpus_must_agree_with_the_launcher(monkeypatch):
    from edge import distributed

    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(EdgeError, match="--gpus 2, but the launcher started 4 processes"):
        distributed.needs_launch(2)
    assert distributed.needs_launch(0) is False and distributed.needs_launch(4) is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(distributed, "gpu_count", lambda: 2)
    assert distributed.needs_launch(2) is True and distributed.needs_launch(1) is False
    with pytest.raises(EdgeError, match="--gpus 3: this machine has 2 CUDA GPUs; use --gpus 2 or fewer"):
        distributed.needs_launch(3)
    monkeypatch.setattr(distributed, "gpu_count", lambda: 0)
    with pytest.raises(EdgeError, match="--gpus 1: this machine has 0 CUDA GPUs; leave --gpus out"):
        distributed.needs_launch(1)


def test_relaunch_command_line_round_trips():
    from edge.cli import argv_for, build_parser
    from edge.finetune import finetune_cmd

    kw = dict(data="d.jsonl", out="o", model="m", steps=7, resume=True, pack=False, targets=["q_proj", "v_proj"],
              memory_budget=0.5, gpus=2, micro_batch=3, lr=1e-3)
    argv = argv_for("finetune", finetune_cmd, kw)
    args = vars(build_parser("finetune").parse_args(argv))
    for k, v in kw.items():
        assert args[k] == v, k


def test_split_chats_is_even_and_balanced():
    from edge.distributed import split_chats
    from edge.finetune import Example

    chats = [Example(ids=[0] * n, labels=[0] * n, line=i) for i, n in enumerate([90, 10, 50, 40, 30, 70, 20, 60])]
    shares = split_chats(chats, 2)
    assert [len(s) for s in shares] == [4, 4]
    assert sorted(e.line for s in shares for e in s) == list(range(8))
    tokens = [sum(len(e.ids) for e in s) for s in shares]
    assert abs(tokens[0] - tokens[1]) <= 20, tokens
    assert split_chats(chats, 2)[0] == shares[0]  # deterministic: every process computes the same split


def test_batch_size_must_split_over_processes():
    from edge.distributed import Dist
    from edge.finetune import TrainSettings

    with pytest.raises(EdgeError, match="--batch-size 6 does not split over 4 processes"):
        Dist(rank=0, world=4).check_settings(TrainSettings(batch_size=6))
    with pytest.raises(EdgeError, match="--micro-batch 3 is more than the 2 chats"):
        Dist(rank=0, world=4).check_settings(TrainSettings(batch_size=8, micro_batch=3))
    with pytest.raises(EdgeError, match="--micro-batch must be >= 0"):
        TrainSettings(micro_batch=-1)


def _full_on_two_and_one(tiny_dir, data, tmp_path, precision: str, rel: float, *extra: str) -> list[str]:
    """--full for 4 steps on two processes (tmp_path/two) and on one (tmp_path/one); every step's
    loss must agree to `rel`. Returns the two-process command's arguments."""
    from edge.finetune import finetune_cmd

    args = ["finetune", "--model", str(tiny_dir), "--data", str(data), "--out", str(tmp_path / "two"), "--batch-size",
            "4", "--lr", "1e-3", "--precision", precision, "--steps", "4", "--json", "--full", *extra]
    r = subprocess.run(_torchrun(2, args), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    finetune_cmd(model=str(tiny_dir), data=str(data), out=str(tmp_path / "one"), lr=1e-3, precision=precision, steps=4,
                 json=True, training=TrainSettings(batch_size=4, save_every=100, full=True))
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert len(two) == 4 and two[-1]["loss"] < two[0]["loss"]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=rel), a["step"]
    return args


@pytest.mark.slow
def test_two_process_full_finetune_fsdp2_equals_one_resumes_and_exports(tiny_dir, small_data, tmp_path):
    """--full on two processes (FSDP2: weights, gradients and Adam moments sharded; gloo runs
    its collectives on this CPU): the same losses as one process; the checkpoint holds the
    full model and optimizer state, written by process 0; resumed from it on two processes or
    on one, the run equals the uninterrupted one; OUT loads and exports to GGUF."""
    import torch

    from edge.export import export_gguf
    from edge.finetune import STATE, finetune_cmd
    from edge.models import load

    args = _full_on_two_and_one(tiny_dir, small_data, tmp_path, "fp32", 1e-5, "--save-every", "2")
    two = _log(tmp_path / "two")

    # the step-2 checkpoint: full tensors (not one process's shards), resumed on 2 and on 1 process
    ckpt = tmp_path / "two" / "checkpoints" / "step-000002"
    state = torch.load(ckpt / STATE, weights_only=True)
    assert state["dist"]["world"] == 2
    m, _ = load(str(tmp_path / "two"))
    shapes = sorted(tuple(q.shape) for q in m.parameters())
    assert sorted(tuple(s["exp_avg"].shape) for s in state["optimizer"]["state"].values()) == shapes
    for n, where in ((2, "cut2"), (1, "cut1")):
        cut = tmp_path / where
        cut.mkdir()
        shutil.copytree(ckpt, cut / "checkpoints" / ckpt.name)
        resume = [a if a != str(tmp_path / "two") else str(cut) for a in args] + ["--resume"]
        if n == 2:
            r = subprocess.run(_torchrun(2, resume), env=_env(), capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
        else:
            finetune_cmd(model=str(tiny_dir), data=str(small_data), out=str(cut), resume=True, steps=4, json=True)
        resumed = _log(cut)
        assert [x["step"] for x in resumed] == [3, 4]
        for a, b in zip(two[2:], resumed):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), (where, a["step"])

    gguf = export_gguf(tmp_path / "two", tmp_path / "two.gguf", "f32")
    assert Path(gguf.path).is_file() and gguf.n_params > 0
    m1, _ = load(str(tmp_path / "one"))
    ids = torch.tensor([[2, 105, 2364, 107]])
    with torch.no_grad():
        assert torch.allclose(m1(ids).logits, m(ids).logits, atol=1e-4)


@pytest.mark.slow
def test_two_process_full_finetune_fsdp2_bf16_equals_one(tiny_dir, small_data, tmp_path):
    """bf16 --full: one process keeps float32 master weights beside the bf16 model; FSDP2 keeps
    float32 shards and gathers each layer in bf16. Both round the same way: the losses agree
    to bf16's noise, and the result is saved in float32."""
    _full_on_two_and_one(tiny_dir, small_data, tmp_path, "bf16", 1e-4, "--save-every", "100")
    assert json.loads((tmp_path / "two" / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.slow
def test_accelerate_launch_works_with_no_other_change(tiny_dir, small_data, tmp_path):
    """`accelerate launch --multi_gpu` starts torchrun's workers; here on the CPU (gloo)."""
    from edge.finetune import finetune_cmd

    args = [a if a != str(STEPS) else "3" for a in _args(tiny_dir, small_data, tmp_path / "acc")]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "edge.cli", *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["steps"] == 3  # one result: process 0's
    finetune_cmd(model=str(tiny_dir), data=str(small_data), out=str(tmp_path / "one"), lr=5e-3,
                 precision="fp32", steps=3, json=True,
                 training=TrainSettings(batch_size=4, save_every=100))
    for a, b in zip(_log(tmp_path / "one"), _log(tmp_path / "acc")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]


def test_visible_gpus_reads_nvidia_smi_and_the_mask(tmp_path, monkeypatch):
    """The TUI's GPU count, without torch: `nvidia-smi -L` (here a stand-in printing its format)
    narrowed by CUDA_VISIBLE_DEVICES as CUDA reads it."""
    from edge.distributed import visible_gpus

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i}abc)'\n" for i in range(4)))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == 4
    for mask, n in (("0,1", 2), ("", 0), ("2", 1), ("0,-1,1", 1), ("0,1,2,3,4,5", 4)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
        assert visible_gpus() == n, mask
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert visible_gpus() == 0
