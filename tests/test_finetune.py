"""Fine-tune: chunked loss == plain loss, exact resume, non-finite guard, bad input.

Most tests use a tiny random Gemma 3 (2 layers, 64 wide, real vocab and tokenizer);
one checks the chunked loss on the real 270M.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from edge import gemma3
from edge.chunked_loss import chunked_cross_entropy
from edge.errors import EdgeError
from edge.finetune import (IGNORE, LoraSettings, NonFiniteError, TrainSettings, add_lora,
                           collate, epoch_batches, finetune_cmd, latest_checkpoint, plain_loss, prepare_examples,
                           causal_lm, reply_loss, train)
from edge.task import TRAIN


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def _fast(**kw) -> TrainSettings:
    base = dict(steps=6, batch_size=4, lr=5e-3, save_every=3, eval_every=6, chunk_rows=16)
    return TrainSettings(**{**base, **kw})


def test_chunked_loss_equals_plain_loss_and_gradient(tokenizer):
    from tests.tiny import tiny_model

    torch.manual_seed(0)
    model = tiny_model(norm_noise=0.1)
    from edge.data import load_chats

    examples = prepare_examples(tokenizer, load_chats(TRAIN)[:5], 512)
    ids, att, lab = collate(examples)
    net = add_lora(model, LoraSettings(r=4))
    with torch.no_grad():  # make the adapter non-zero so gradients flow everywhere
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ref, n_ref = plain_loss(net, ids, att, lab)
    ref.backward()
    g_ref = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad()
    ours, n_ours = reply_loss(net, ids, att, lab, chunk_rows=7)  # several chunks, ragged last one
    ours.backward()
    assert n_ours == n_ref > 7
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4), (float(ours), float(ref))
    for n, p in net.named_parameters():
        if p.requires_grad:
            rel = float((p.grad - g_ref[n]).norm() / g_ref[n].norm())
            assert rel < 1e-4, (n, rel)


def test_chunked_cross_entropy_softcap_matches_reference():
    torch.manual_seed(1)
    h = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64)
    y = torch.randint(0, 50, (13,))
    ours = chunked_cross_entropy(h, w, y, chunk_rows=4, softcap=3.0)
    (g_ours,) = torch.autograd.grad(ours, h)
    z = 3.0 * torch.tanh((h @ w.t()) / 3.0)
    ref = torch.nn.functional.cross_entropy(z, y, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, h)
    assert torch.allclose(ours, ref) and torch.allclose(g_ours, g_ref)


def test_render_trains_on_replies_only_with_one_bos(tokenizer):
    from edge.data import load_chats

    ex = prepare_examples(tokenizer, load_chats(TRAIN)[:1], 512)[0]
    assert ex.ids[0] == gemma3.BOS_ID and ex.ids.count(gemma3.BOS_ID) == 1
    reply = [i for i in ex.labels if i != IGNORE]
    assert reply[-1] == gemma3.END_OF_TURN_ID
    assert tokenizer.decode(reply[:-1]).strip() == json.loads(TRAIN.read_text().splitlines()[0])["messages"][1]["content"]


def test_buckets_are_deterministic_and_cover_the_data():
    lengths = [5, 40, 7, 33, 12, 9, 50, 3, 21, 18]
    a = epoch_batches(lengths, 3, seed=1, epoch=2)
    assert a == epoch_batches(lengths, 3, seed=1, epoch=2)
    assert a != epoch_batches(lengths, 3, seed=1, epoch=3)
    assert sorted(i for b in a for i in b) == list(range(10))


@pytest.mark.slow
def test_resume_continues_exactly(tiny_dir, small_data, tmp_path):
    """Uninterrupted 6 steps == 3 steps, stop (as Ctrl-C does), --resume to 6. Dropout on,
    so the RNG state matters; two epochs pass, so the data position matters."""
    lora = LoraSettings(r=4, dropout=0.1)
    full = train(model=str(tiny_dir), data=small_data, out=tmp_path / "full", lora=lora, settings=_fast(),
                 precision="fp32", progress=False)

    def interrupt_at_3(step, model, record):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag: stop at the step boundary

    part = train(model=str(tiny_dir), data=small_data, out=tmp_path / "part", lora=lora, settings=_fast(save_every=100),
                 precision="fp32", progress=False, callback=interrupt_at_3)
    assert part.stopped == "interrupted" and part.steps == 3
    assert latest_checkpoint(tmp_path / "part").name == "step-000003"
    assert not (tmp_path / "part" / "adapter_model.safetensors").exists()  # no final adapter yet
    rest = train(model=str(tiny_dir), data=small_data, out=tmp_path / "part", settings=_fast(save_every=100),
                 precision="fp32", resume=True, progress=False)
    assert rest.start_step == 3 and rest.steps == 6
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    assert len(set(_losses(tmp_path / "full"))) == 6


@pytest.mark.slow
def test_fp16_loss_scaling_skips_overflows_and_resumes_exactly(tiny_dir, small_data, tmp_path):
    """fp16 on the CPU (GradScaler works there too). At an initial loss scale of 2**18 the tiny
    model's first fp16 gradients overflow: that step is skipped, the scale halves, and training
    goes on. Interrupted after step 2, the resumed run must restore the scaler's state: started
    afresh at 2**18, step 3's gradients overflow (measured) and its losses would differ."""
    settings = _fast(steps=4, save_every=100, loss_scale=2.0**18)

    def rows(out):
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    train(model=str(tiny_dir), data=small_data, out=tmp_path / "full", settings=settings, precision="fp16",
          progress=False)
    full = rows(tmp_path / "full")
    assert full[0]["skipped"] and full[0]["loss_scale"] == 2.0**17  # overflowed, halved, no failure
    assert not full[-1]["skipped"] and all(math.isfinite(r["loss"]) for r in full)

    def interrupt_at_2(step, model, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    part = train(model=str(tiny_dir), data=small_data, out=tmp_path / "part", settings=settings, precision="fp16",
                 progress=False, callback=interrupt_at_2)
    assert part.steps == 2
    state = torch.load(latest_checkpoint(tmp_path / "part") / "trainer_state.pt", weights_only=True)
    assert state["scaler"]["scale"] == full[1]["loss_scale"] < 2.0**18
    train(model=str(tiny_dir), data=small_data, out=tmp_path / "part", settings=settings, precision="fp16",
          resume=True, progress=False)
    assert rows(tmp_path / "part") == [{**r, "tok_s": p["tok_s"], "elapsed": p["elapsed"], "step_tok_s": p["step_tok_s"]}
                                       for r, p in zip(full, rows(tmp_path / "part"))]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_dir, small_data, tmp_path, precision):
    """fp16 too: loss scaling skips overflowing gradients, but a NaN loss is a failure."""
    def poison(step, model, record):  # runs after step 4's update, before any step-4 checkpoint
        if step == 4:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))

    out = tmp_path / "ft"
    with pytest.raises(NonFiniteError, match="loss became non-finite at step 5.*step-000003"):
        train(model=str(tiny_dir), data=small_data, out=out, settings=_fast(), precision=precision, progress=False,
              callback=poison)
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step-000003"
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "adapter_model.safetensors").values())
    assert not (out / "adapter_model.safetensors").exists()


def test_a_step_that_reaches_no_adapter_weight_stops(tiny_dir, small_data, tmp_path, monkeypatch):
    """A loss with no path to the LoRA weights (their gradients stay None) must stop training,
    not train nothing for hours."""
    import edge.finetune as ft

    real = ft.reply_loss

    def cut(*args, **kwargs):
        loss, n = real(*args, **kwargs)
        return loss.detach().requires_grad_(True), n

    monkeypatch.setattr(ft, "reply_loss", cut)
    with pytest.raises(EdgeError, match=r"no gradient reached \d+ of \d+ adapter weights at step 1 \(e.g. .*lora_"):
        train(model=str(tiny_dir), data=small_data, out=tmp_path / "ft", settings=_fast(), precision="fp32",
              progress=False)


def test_a_step_whose_adapter_gradients_are_all_zero_stops(tiny_dir, small_data, tmp_path, monkeypatch):
    """What torch 2.11 made of the compiled fp16-fixed layers (edge.precision): every LoRA weight
    got a gradient, all zeros. The loss keeps its value; its gradient is cut to zero."""
    import edge.finetune as ft

    real = ft.reply_loss

    def zero_grad_loss(*args, **kwargs):
        loss, n = real(*args, **kwargs)
        return loss.detach() + 0.0 * loss, n

    monkeypatch.setattr(ft, "reply_loss", zero_grad_loss)
    with pytest.raises(EdgeError, match=r"every adapter weight got an all-zero gradient at step 1 \(loss [0-9.]+\)"):
        train(model=str(tiny_dir), data=small_data, out=tmp_path / "ft", settings=_fast(), precision="fp32",
              progress=False)


def test_outputs_log_and_plot(tiny_dir, small_data, tmp_path):
    out = tmp_path / "ft"
    r = train(model=str(tiny_dir), data=small_data, out=out, settings=_fast(steps=4, save_every=2, keep=1),
              precision="fp32", progress=False)
    assert r.stopped == "done" and math.isfinite(r.eval_loss)
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [1, 2, 3, 4] and "eval_loss" in rows[-1] and rows[0]["tok_s"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000004"]  # keep=1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    meta = json.loads((out / "edge_adapter.json").read_text())
    assert meta["base"]["path"] == str(Path(tiny_dir).resolve()) and meta["step"] == 4


def test_bad_input(tiny_dir, small_data, tmp_path):
    no_reply = tmp_path / "noreply.jsonl"
    no_reply.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(EdgeError, match="no assistant"):
        train(model=str(tiny_dir), data=no_reply, out=tmp_path / "a", precision="fp32", progress=False)
    with pytest.raises(EdgeError, match=r"train.jsonl:1: chat is \d+ tokens, longer than the 5-token limit"):
        train(model=str(tiny_dir), data=small_data, out=tmp_path / "b", settings=_fast(max_len=5), precision="fp32",
              progress=False)
    (tmp_path / "notckpt").mkdir()
    with pytest.raises(EdgeError, match="holds no checkpoint"):
        train(model=str(tiny_dir), data=small_data, out=tmp_path / "notckpt", resume=True, progress=False)
    with pytest.raises(EdgeError, match="--rank must be >= 1"):
        LoraSettings(r=0)
    with pytest.raises(EdgeError, match=r"--memory-budget must be in \[0, 1\], got 1.5"):
        TrainSettings(memory_budget=1.5)
    # a checkpoint from another model: same config, different weights
    from tests.tiny import save_tiny

    other = save_tiny(tmp_path / "other", seed=1)
    train(model=str(tiny_dir), data=small_data, out=tmp_path / "c", settings=_fast(steps=2, save_every=1),
          precision="fp32", progress=False)
    with pytest.raises(EdgeError, match="was trained on .* the weights differ"):
        train(model=str(other), data=small_data, out=tmp_path / "c", settings=_fast(steps=4), resume=True,
              progress=False)
    with pytest.raises(EdgeError, match="already exists"):  # never overwrite without --force
        train(model=str(tiny_dir), data=small_data, out=tmp_path / "c", precision="fp32", progress=False)


def test_cli_exit_codes(tiny_dir, small_data, tmp_path, capsys):
    from edge.cli import main

    assert main(["finetune", "--model", str(tiny_dir), "--data", str(small_data), "--out", str(tmp_path / "o"),
                 "--steps", "2", "--precision", "fp32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["stopped"] == "done"
    assert main(["finetune", "--model", str(tiny_dir), "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "p")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("field, bad", [("steps", 0), ("batch_size", 0), ("grad_accum", 0), ("chunk_rows", 0),
                                        ("keep", 0), ("max_len", -1), ("memory_budget", 2.0), ("loss_scale", 0.5)])
def test_settings_errors_name_a_real_flag_or_the_setting(field, bad, capsys):
    """A bad setting's error names a flag `edge finetune --help` lists, or the TrainSettings field."""
    import re

    from edge.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    flags = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
    with pytest.raises(EdgeError) as e:
        TrainSettings(**{field: bad})
    named = re.match(r"(--[a-z-]+|TrainSettings\.\w+) ", str(e.value))
    assert named, str(e.value)
    assert named[1] in flags or named[1] == f"TrainSettings.{field}", str(e.value)
    if named[1].startswith("--"):
        assert named[1] == "--" + field.replace("_", "-")


@pytest.mark.real
def test_chunked_loss_equals_plain_loss_on_real_270m(real_model):
    model, tok = real_model
    from edge.data import load_chats

    ids, att, lab = collate(prepare_examples(tok, load_chats(TRAIN)[:4], 512))
    with torch.no_grad():
        ref, n = plain_loss(model, ids, att, lab)
        ours, m = reply_loss(model, ids, att, lab, chunk_rows=16)
    assert n == m and torch.allclose(ours / m, ref / n, rtol=1e-5), (float(ours / m), float(ref / n))


def test_disk_full_while_checkpointing_keeps_earlier_checkpoints(tiny_dir, small_data, tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: the disk is full
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "ft"
    with pytest.raises(EdgeError, match="cannot write checkpoint .*step-000004.*No space left.*latest: .*step-000002"):
        train(model=str(tiny_dir), data=small_data, out=out, settings=_fast(steps=4, save_every=2), precision="fp32",
              progress=False)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]  # no half-written step-000004


def test_memory_budget_default_follows_model_size():
    """1B-class models recompute half their saved activations by default (42% -> 23% of plain
    peft's peak on an H100); the 270M keeps them all (its GPU steps are CPU-bound)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from edge import gemma3
    from edge.finetune import auto_memory_budget

    def budget(cfg):
        cfg = dict(cfg, layer_types=gemma3.layer_types(cfg["num_hidden_layers"]))
        with torch.device("meta"):
            return auto_memory_budget(Gemma3ForCausalLM(Gemma3TextConfig(**cfg)))

    assert budget(gemma3.CONFIG_270M) == 1.0 and budget(gemma3.CONFIG_1B) == 0.5
    assert TrainSettings().memory_budget is None


# ---------------------------------------------------------------------------------------------
# Packing: several chats per row


def _mixed_chats(n: int = 9):
    """Chats of 15-70 tokens, many longer than the tiny model's 16-token sliding window."""
    from edge.data import parse_chat

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    chats = []
    for i in range(n):
        q = " ".join(words[j % len(words)] for j in range(i, i + 3 + 5 * i))
        a = " ".join(words[(j * 7) % len(words)] for j in range(2 + 3 * (i % 4)))
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 3 == 2:  # a second exchange: two replies in one chat
            msgs += [{"role": "user", "content": "again"}, {"role": "assistant", "content": a.upper()}]
        chats.append(parse_chat({"messages": msgs}, f"chat {i}"))
    return chats


def _packing_net(n_layers=6):
    """Tiny model with a 16-token sliding window and one global layer (layer 5), LoRA with
    non-zero B so every adapter weight gets a gradient."""
    from tests.tiny import tiny_model

    net = add_lora(tiny_model(n_layers=n_layers, sliding_window=16), LoraSettings(r=4))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return net


def test_packed_loss_and_gradient_equal_one_chat_per_row(tokenizer):
    """The same chats, packed several to a row vs padded one to a row: the same loss, label
    count and LoRA gradients. Most chats are longer than the 16-token sliding window, so a
    packed mask that lost the window (or let a chat see its neighbours) would change the loss."""
    from edge.finetune import make_batch, pack

    examples = prepare_examples(tokenizer, _mixed_chats(), 512)
    assert sum(len(e.ids) > 16 for e in examples) >= 6
    ids, pos, lab, n_real = pack(examples)
    assert ids.shape[0] < len(examples)  # some rows really hold several chats
    assert n_real == sum(len(e.ids) for e in examples) < ids.numel()  # real tokens only
    assert int((pos == 0).sum()) >= len(examples)  # positions restart at every chat

    net = _packing_net()
    grads, results = [], []
    for packed in (True, False):
        net.zero_grad()
        ids, att, lab, pos, _ = make_batch(examples, packed=packed)
        loss, n = reply_loss(net, ids, att, lab, chunk_rows=16, position_ids=pos)
        loss.backward()
        results.append((float(loss.detach()), n))
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.requires_grad})
    (packed_loss, n_p), (plain, n_u) = results
    assert n_p == n_u and math.isclose(packed_loss, plain, rel_tol=1e-5), results
    for k, g in grads[1].items():
        assert float((grads[0][k] - g).norm() / g.norm()) < 1e-4, k


def test_no_attention_crosses_a_chat_boundary(tokenizer):
    """In a packed row, a chat's hidden states do not move when its neighbours' tokens change,
    and the gradient of its loss is exactly zero at every other chat's positions. The same
    probe on a plain causal row (no restarting positions) does see leakage, so the probe works."""
    from edge.finetune import pack

    net = _packing_net()
    examples = prepare_examples(tokenizer, _mixed_chats(3), 512)  # 3 chats fit in one 2x-wide row
    ids, pos, lab, _ = pack(examples, multiple=256)
    assert ids.shape[0] == 1
    starts = (pos[0] == 0).nonzero().flatten().tolist()
    a, b = starts[0], starts[1]  # chat 1 = [a, b), chat 2 starts at b
    body = causal_lm(net).model

    def hidden(row_ids, positions):
        return body(input_ids=row_ids, position_ids=positions, use_cache=False).last_hidden_state

    changed = ids.clone()
    changed[0, a + 1:b] = torch.randint(1000, 2000, (b - a - 1,))  # all of chat 1 but its <bos>
    with torch.no_grad():
        same = hidden(ids, pos)[0, b:], hidden(changed, pos)[0, b:]
        causal = torch.arange(ids.shape[1])[None]
        leak = hidden(ids, causal)[0, b:], hidden(changed, causal)[0, b:]
    assert torch.equal(*same)
    assert not torch.allclose(*leak)  # without the boundaries, chat 2 sees chat 1

    emb = {}

    def keep(module, args, out):  # the embeddings as a leaf whose gradient we read
        emb["x"] = out.detach().requires_grad_(True)
        return emb["x"]

    handle = body.embed_tokens.register_forward_hook(keep)
    try:
        only_later = lab.clone()
        only_later[0, :b] = IGNORE  # the loss of the chats after chat 1
        loss, n = reply_loss(net, ids, None, only_later, position_ids=pos)
        loss.backward()
    finally:
        handle.remove()
    g = emb["x"].grad[0]
    assert n > 0 and g[b:].abs().sum() > 0
    assert torch.count_nonzero(g[a:b]) == 0


@pytest.mark.slow
def test_packed_training_matches_unpacked(tiny_dir, small_data, tmp_path):
    """The trainer with and without packing: the same losses step by step."""
    runs = [train(model=str(tiny_dir), data=small_data, out=tmp_path / f"p{int(p)}", precision="fp32",
                  settings=_fast(steps=3, pack=p, eval_every=3), progress=False) for p in (True, False)]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(runs[0].losses, runs[1].losses)), \
        (runs[0].losses, runs[1].losses)
    assert math.isclose(runs[0].eval_loss, runs[1].eval_loss, rel_tol=1e-4)


# ---------------------------------------------------------------------------------------------
# Full fine-tuning


def test_chunked_cross_entropy_gradient_to_a_trained_head():
    """Full fine-tuning trains the tied head: d(loss)/d(weight) as well as d(loss)/d(hidden)."""
    torch.manual_seed(2)
    h = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (13,))
    ours = chunked_cross_entropy(h, w, y, chunk_rows=4, softcap=3.0)
    g_ours = torch.autograd.grad(ours, (h, w))
    ref = torch.nn.functional.cross_entropy(3.0 * torch.tanh((h @ w.t()) / 3.0), y, reduction="sum")
    g_ref = torch.autograd.grad(ref, (h, w))
    assert torch.allclose(ours, ref) and all(torch.allclose(a, b) for a, b in zip(g_ours, g_ref))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(Path(path) / "model.safetensors")


def test_full_finetune_trains_every_weight_and_exports(tiny_dir, small_data, tmp_path):
    """--full in fp32: every tensor moves, OUT is a model folder that `edge export` takes as it
    is (nothing to merge), and the exported GGUF's logits follow the trained weights."""
    from edge.export import export_gguf
    from edge.models import load

    out = tmp_path / "full"
    r = train(model=str(tiny_dir), data=small_data, out=out, precision="fp32", progress=False,
              settings=_fast(steps=4, full=True, lr=1e-3, save_every=100))
    assert r.stopped == "done" and r.losses[-1] < r.losses[0]
    before, after = _weights(tiny_dir), _weights(out)
    assert set(after) == set(before)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged
    assert all(t.dtype == torch.float32 for t in after.values())
    assert json.loads((out / "edge_adapter.json").read_text())["full"] is True
    assert not (out / "adapter_model.safetensors").exists()
    gguf = export_gguf(out, tmp_path / "full.gguf", "f32")
    assert Path(gguf.path).is_file() and gguf.n_params > 0
    model, _ = load(str(out))
    ids = torch.tensor([[gemma3.BOS_ID, 105, 2364, 107]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, r.model(ids).logits, atol=1e-5)


def test_full_fp16_master_weights_loss_scaling_and_exact_resume(tiny_dir, small_data, tmp_path):
    """--full in fp16: the model computes in float16 with Gemma 3's fixes while float32 master
    weights take the updates; an overflowing first step (loss scale 2**18) is skipped, and an
    interrupted run resumes from its float32 masters to the same losses."""
    from edge.precision import fixes_applied

    settings = _fast(steps=4, full=True, lr=1e-3, save_every=100, loss_scale=2.0**18)
    full = train(model=str(tiny_dir), data=small_data, out=tmp_path / "a", precision="fp16", progress=False,
                 settings=settings)
    rows = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["skipped"] and not rows[-1]["skipped"] and all(math.isfinite(x["loss"]) for x in rows)
    assert fixes_applied(full.model)
    assert all(q.dtype == torch.float16 for q in full.model.parameters())
    saved = _weights(tmp_path / "a")
    assert all(t.dtype == torch.float32 for t in saved.values())
    emb = full.model.model.embed_tokens.weight
    assert torch.equal(saved["model.embed_tokens.weight"].half(), emb)  # the model holds the masters, rounded
    assert not torch.equal(saved["model.embed_tokens.weight"], emb.float())  # ... which keep more than fp16 does

    def interrupt_at_2(step, model, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    part = train(model=str(tiny_dir), data=small_data, out=tmp_path / "b", precision="fp16", progress=False,
                 settings=settings, callback=interrupt_at_2)
    assert part.steps == 2
    train(model=str(tiny_dir), data=small_data, out=tmp_path / "b", precision="fp16", progress=False,
          settings=settings, resume=True)
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    assert all(torch.equal(saved[k], v) for k, v in _weights(tmp_path / "b").items())


def test_full_rejects_lora_flags_and_steps_with_epochs(tiny_dir, small_data, tmp_path, capsys):
    from edge.cli import main

    base = ["finetune", "--model", str(tiny_dir), "--data", str(small_data), "--out", str(tmp_path / "o")]
    assert main(base + ["--full", "--rank", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--rank is a LoRA setting; --full trains every weight" in err
    assert main(base + ["--full", "--alpha", "8", "--targets", "q_proj"]) == 2
    assert "--alpha, --targets are LoRA settings" in capsys.readouterr().err
    assert main(base + ["--steps", "5", "--epochs", "1"]) == 2
    assert "give --steps (5) or --epochs (1.0), not both" in capsys.readouterr().err
    assert main(base + ["--epochs", "0"]) == 2
    assert not (tmp_path / "o").exists()


def test_epochs_become_steps(tiny_dir, small_data, tmp_path):
    """40 chats, 10% held out: 36 train; 2 epochs at 12 chats per step = 6 steps."""
    lines = []
    r = train(model=str(tiny_dir), data=small_data, out=tmp_path / "e", precision="fp32", progress=False,
              settings=_fast(epochs=2, batch_size=12, save_every=100), say=lines.append)
    assert r.steps == 6
    assert "data: 36 training chats, 4 held out; 6 steps of 12 chats = 2.00 epochs" in lines


@pytest.mark.real
def test_full_finetune_real_270m_loss_falls(small_data, tmp_path):
    """The real 270M, every weight trained in float32 on this CPU: a few steps of the demo task
    take the replies' loss down."""
    r = train(model="embedded", data=small_data, out=tmp_path / "real", precision="fp32", progress=False,
              settings=TrainSettings(steps=6, batch_size=4, lr=5e-5, full=True, eval_fraction=0.0,
                                     save_every=100, keep=1, warmup=1))
    assert r.stopped == "done"
    first, last = r.losses[0], sum(r.losses[-2:]) / 2
    assert last < 0.7 * first, r.losses


# ---------------------------------------------------------------------------------------------
# Short jobs: compile or not, and which tokens/s


def test_compile_is_chosen_by_job_length_and_warm_caches(tmp_path, monkeypatch):
    from edge.finetune import COMPILE_MIN_TOKENS, decide_compile, remember_compiled

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path))
    key = "torch x|GPU|18x640x2048|bf16|fast|lora"
    assert decide_compile(False, "cuda", 1e9, key)[0] is False  # --compile off wins
    assert decide_compile(True, "cpu", 10, key)[0] is True      # --compile on wins
    assert decide_compile(None, "cpu", 1e9, key) == (False, "auto: not a GPU")
    on, why = decide_compile(None, "cuda", COMPILE_MIN_TOKENS, key)
    assert on and "pays for a first compile" in why
    on, why = decide_compile(None, "cuda", 680_000, key)
    assert not on and "0.68M tokens is too short" in why and "--compile on forces it" in why
    remember_compiled(key)
    remember_compiled(key)  # once is enough
    assert json.loads((tmp_path / "compiled.json").read_text()) == [key]
    assert decide_compile(None, "cuda", 680_000, key) == (True, "auto: compiled here before, torch's compile caches are warm")
    assert decide_compile(None, "cuda", 680_000, key.replace("lora", "full"))[0] is False  # another model's graphs


def test_steady_rate_leaves_the_warm_up_out():
    from edge.finetune import steady_rate

    marks = [(30.0, 100)]  # the first step compiled for 30 s
    for i in range(1, 8):
        marks.append((30.0 + i, 100))  # then 100 tokens a second
    assert steady_rate(marks) == 100.0
    assert steady_rate(marks[:3]) is None


def test_log_says_compile_memory_mode_and_both_rates(tiny_dir, small_data, tmp_path):
    lines = []
    r = train(model=str(tiny_dir), data=small_data, out=tmp_path / "m", precision="fp32", progress=False,
              settings=_fast(steps=4, save_every=100), say=lines.append)
    assert "compile: off (auto: not a GPU)" in lines and "memory mode: fast (auto: not a GPU)" in lines
    assert r.memory_mode == "fast" and r.steady_tokens_per_s > 0 and r.tokens_per_s > 0
    rows = [json.loads(x) for x in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step_tok_s"] is None and all(x["step_tok_s"] > 0 for x in rows[1:])
    with pytest.raises(EdgeError, match="--memory must be one of auto, fast, lean, got 'small'"):
        TrainSettings(memory="small")
