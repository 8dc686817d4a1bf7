"""Merge: merged logits == adapter logits, non-finite refused, other base refused, outputs complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edge import gemma3
from edge.errors import EdgeError
from edge.finetune import LoraSettings, TrainSettings, train
from edge.merge import merge
from edge.task import TRAIN


@pytest.fixture(scope="module")
def adapter(tiny_dir, tmp_path_factory) -> Path:
    """A real (trained, 3 steps at a high lr) adapter on the tiny model, with a non-zero update."""
    root = tmp_path_factory.mktemp("merge")
    data = root / "train.jsonl"
    data.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:24]))
    out = root / "adapter"
    train(model=str(tiny_dir), data=data, out=out, lora=LoraSettings(r=8, alpha=16),
          settings=TrainSettings(steps=3, batch_size=8, lr=3e-2, warmup=0, eval_fraction=0.0, chunk_rows=64),
          precision="fp32", progress=False)
    return out


@pytest.fixture(scope="module")
def merged32(adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "fp32"
    return out, merge(adapter, out, dtype="fp32")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_merged_logits_equal_adapter_logits(tiny_dir, adapter, merged32):
    from peft import PeftModel

    from edge.models import load

    out, result = merged32
    ids = torch.randint(4, 1000, (2, 24))
    base, _ = load(str(tiny_dir))
    base_logits = _logits(base, ids)
    with_adapter = _logits(PeftModel.from_pretrained(base, adapter).eval(), ids)
    merged, tok = load(str(out))
    merged_logits = _logits(merged, ids)
    assert (with_adapter - base_logits).abs().max() > 1e-3  # the adapter changes something
    assert torch.allclose(merged_logits, with_adapter, atol=1e-4, rtol=1e-4), (merged_logits - with_adapter).abs().max()
    assert result.parameters == sum(p.numel() for p in merged.parameters())

    gen = json.loads((out / "generation_config.json").read_text())
    assert {k: gen[k] for k in gemma3.SAMPLING} == gemma3.SAMPLING
    assert gen["eos_token_id"] == [gemma3.EOS_ID, gemma3.END_OF_TURN_ID]
    assert tok.chat_template and tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                          add_generation_prompt=True).count("<bos>") == 0


def test_bf16_output_is_close(adapter, merged32, tmp_path):
    from edge.models import load

    merge(adapter, tmp_path / "bf16", dtype="bf16")
    a, _ = load(str(merged32[0]))
    b, _ = load(str(tmp_path / "bf16"))
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    ids = torch.randint(4, 1000, (1, 16))
    assert (_logits(a, ids) - _logits(b.float(), ids)).abs().max() < 0.1


def test_non_finite_adapter_is_refused(adapter, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("inf")
    save_file(tensors, bad / "adapter_model.safetensors")
    with pytest.raises(EdgeError, match="not finite"):
        merge(bad, tmp_path / "m", dtype="fp32")
    assert not (tmp_path / "m").exists()


def test_other_base_and_bad_input_refused(adapter, tmp_path):
    from tests.tiny import save_tiny

    other = save_tiny(tmp_path / "other", seed=3)
    with pytest.raises(EdgeError, match="the weights differ"):
        merge(adapter, tmp_path / "m", model=str(other))
    with pytest.raises(EdgeError, match="--dtype"):
        merge(adapter, tmp_path / "m", dtype="int4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeError, match="no finished adapter"):
        merge(tmp_path / "empty", tmp_path / "m")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(EdgeError, match="already exists"):
        merge(adapter, tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def test_merge_cli(adapter, tmp_path, capsys):
    from edge.cli import main

    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "m"), "--dtype", "fp16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "fp16"
    assert main(["merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "n")]) == 2
