"""Recipes resolve to the intended tensor types in real llama.cpp output; imatrix matches a direct
computation; bad recipes and corrupted imatrix files give one clear EdgeError.

The type tests quantize small synthetic Gemma 3 GGUFs written with gguf-py that have the real
row widths (640 for the 270M, 1152 for the 1B; ffn_down rows 256-aligned) and the 270M's 18
blocks, but narrow other dimensions and a 256-token vocabulary, so llama.cpp quantizes each in
well under a second. Files are read back with gguf.GGUFReader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.errors import EdgeError
from quantize import recipes as R

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


def write_gemma3_gguf(path, *, hidden: int, ffn: int, n_layers: int, n_heads: int = 4, head_dim: int = 64,
                      vocab: int = 256, seed: int = 0, tokenizer: bool = False):
    """A random F32 Gemma 3 GGUF with the given shapes (enough for llama_model_quantize; with
    `tokenizer`, a placeholder SentencePiece vocabulary, enough for llama.cpp to load it)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(1)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(512)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if tokenizer:
        w.add_tokenizer_model("llama")
        w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, vocab)])
        w.add_token_scores([0.0] * vocab)
        w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)

    def mat(rows, cols):  # numpy (rows, cols) -> GGUF ne = [cols, rows]
        return rng.normal(0, 0.02, (rows, cols)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(vocab, hidden))
    for i in range(n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "attn_q.weight", mat(n_heads * head_dim, hidden))
        w.add_tensor(p + "attn_k.weight", mat(head_dim, hidden))
        w.add_tensor(p + "attn_v.weight", mat(head_dim, hidden))
        w.add_tensor(p + "attn_q_norm.weight", np.ones(head_dim, np.float32))
        w.add_tensor(p + "attn_k_norm.weight", np.ones(head_dim, np.float32))
        w.add_tensor(p + "attn_output.weight", mat(hidden, n_heads * head_dim))
        w.add_tensor(p + "post_attention_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(ffn, hidden))
        w.add_tensor(p + "ffn_up.weight", mat(ffn, hidden))
        w.add_tensor(p + "ffn_down.weight", mat(hidden, ffn))
        w.add_tensor(p + "post_ffw_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# 270M: 640-wide rows, 18 blocks, attn_output rows 256 (4 x 64; the real 1024 is 256-aligned too),
# ffn_down rows 256 (the real 2048). 1B: 1152-wide rows, 8 blocks, ffn_down rows 256 (real: 6912 = 27 x 256).
SHAPES = {"270M": dict(hidden=640, ffn=256, n_layers=18), "1B": dict(hidden=1152, ffn=256, n_layers=8)}


@pytest.fixture(scope="module", params=list(SHAPES))
def shaped(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"shape{request.param}")
    return request.param, write_gemma3_gguf(d / f"gemma-{request.param}-F32.gguf", **SHAPES[request.param])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The 270M-shaped file, for the tests that need any Gemma 3 GGUF."""
    d = tmp_path_factory.mktemp("small")
    return "270M", write_gemma3_gguf(d / "gemma-270M-F32.gguf", **SHAPES["270M"])


def readback(path) -> dict:
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors if len(t.shape) > 1}


def unit_imatrix(tensors):
    """An importance matrix of ones (every column alike), for recipes refused without one."""
    from quantize.imatrix import Imatrix

    im = Imatrix(datasets=["unit"], chunk_count=1, chunk_size=8)
    for t in tensors:
        if t.quantizable:
            im.sums[t.name], im.counts[t.name] = np.ones(t.row, np.float32), 1.0
    return im


@pytest.mark.slow
def test_every_recipe_resolves_to_the_intended_types(shaped, tmp_path):
    """Our XL tables are applied exactly; llama.cpp's standard types give what `expect` says
    after its row-width fallbacks on 640/1152-wide rows; `general.file_type` of an XL file says
    what the file mostly is. IQ2_M needs an imatrix, so every recipe is made with one here."""
    from quantize.variants import quantize_variants, read_tensors

    label, src = shaped
    tensors, _ = read_tensors(src)
    recipes = [R.RECIPES[n] for n in R.RECIPES]
    made = quantize_variants(src, recipes, tmp_path, imatrix=unit_imatrix(tensors), force=True, progress=False)
    for m, recipe in zip(made, recipes):
        plan = R.resolve(recipe, tensors, imatrix=True)
        got = readback(m["path"])
        assert set(got) == set(plan.types), recipe.name
        wrong = {n: (plan.types[n].name, got[n].name) for n in got if got[n] != plan.types[n]}
        assert not wrong, f"{label} {recipe.name}: {dict(list(wrong.items())[:4])}"
        if not recipe.is_standard:
            assert m["n_fallback"] == 0, recipe.name  # ours never ask a type the rows can't hold
            weights = {}
            for t in tensors:
                if t.quantizable:
                    weights[got[t.name]] = weights.get(got[t.name], 0) + t.n_elements
            ft = gguf.GGUFReader(m["path"]).fields["general.file_type"].contents()
            weights = {k: v for k, v in weights.items() if k not in (T.F16, T.BF16, T.F32)}
            assert ft == R.FILE_TYPE[max(weights, key=weights.get)] == R.file_type(plan, tensors), recipe.name
    by = {m["recipe"]: m for m in made}
    assert by["Q4_K_M"]["n_fallback"] > 0  # the problem the XL recipes are designed around
    q6 = readback(by["XL6.2-Q8_0"]["path"])
    assert q6["blk.0.ffn_down.weight"] == T.Q6_K and q6["blk.5.attn_v.weight"] == T.Q8_0   # 2048/6912-wide rows
    assert q6["blk.0.attn_output.weight"] == q6["blk.0.ffn_up.weight"] == T.Q5_1
    q8 = readback(by["XL8.9-Q8_0"]["path"])
    assert q8["token_embd.weight"] == T.Q8_0 and q8["blk.0.attn_v.weight"] == q8["blk.0.attn_k.weight"] == T.F16
    assert readback(by["IQ2_M"]["path"])["token_embd.weight"] == T.Q8_0   # not Q5_K: rows of 640/1152


def test_recipe_names_are_case_insensitive_keep_their_old_names_and_suggest_on_a_typo():
    assert R.get("q4_k_m") is R.RECIPES["Q4_K_M"] and R.get("xl6.2-q8_0") is R.RECIPES["XL6.2-Q8_0"]
    assert R.get("Q4_K_XL") is R.RECIPES["XL6.2-Q8_0"]                     # the name before issue 20
    assert R.get("Q8_K_XL") is R.RECIPES["XL8.9-Q8_0"]                     # the 8-bit XL recipe, redesigned
    for gone in ("XL8.7-F16", "xl7.4-q8_0", "Q6_K_XL", "XL6.1-Q8_0"):                       # removed: the reason, not a guess
        with pytest.raises(EdgeError, match=r"was removed: .*; use "):
            R.get(gone)
    with pytest.raises(EdgeError, match=r"did you mean Q4_K_M"):
        R.get("Q4_KM")
    with pytest.raises(EdgeError, match=r"did you mean Q4_K_XL \(now XL6.2-Q8_0\)"):
        R.get("Q4_K_XXL")


def test_xl_names_give_the_body_bits_per_weight_and_the_head_type(small):
    """XL<body bpw>-<head type>: checked against the resolved 270M-shaped plan."""
    from gguf import GGML_QUANT_SIZES

    from edge.ggufinfo import read_gguf
    from edge.models import embedded_gguf

    tensors = [R.TensorInfo(t.name, tuple(int(d) for d in t.shape)) for t in read_gguf(embedded_gguf()).tensors]
    for r in R.DYNAMIC:
        plan = R.resolve(r, tensors)
        body = [t for t in tensors if t.quantizable and t.name != "token_embd.weight"]
        bits = 8 * sum(t.n_elements // GGML_QUANT_SIZES[plan.types[t.name]][0] * GGML_QUANT_SIZES[plan.types[t.name]][1]
                       for t in body) / sum(t.n_elements for t in body)
        bpw, head = r.name[2:].split("-")
        assert abs(float(bpw) - bits) < 0.05 and plan.types["token_embd.weight"].name == head, r.name


def test_sizes_follow_the_plan(small, tmp_path):
    from quantize.variants import quantize_variants, read_tensors

    _, src = small
    tensors, _ = read_tensors(src)
    made = quantize_variants(src, [R.RECIPES["XL5.4-Q4_0"], R.RECIPES["Q8_0"]], tmp_path, force=True, progress=False)
    for m in made:
        data_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(m["path"]).tensors)
        assert data_bytes == R.resolve(R.RECIPES[m["recipe"]], tensors).size_bytes(tensors)


def test_layer_sets_match_llama_cpp_rule():
    # llama.cpp use_more_bits: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2 (integer division)
    sets = R.layer_sets(18)
    assert sets["ends"] == "(?:0|1|15|16|17)" and sets["sixteenth"] == "(?:0)" and sets["first4"] == "(?:0|1|2|3)"
    assert sets["more"] == "(?:0|1|4|7|10|13|15|16|17)"
    assert R.layer_sets(26)["ends"] == "(?:0|1|2|22|23|24|25)"


def test_recipe_naming_unknown_tensor_is_a_clear_error(small, tmp_path):
    from quantize.variants import quantize_cmd

    _, src = small
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "typo", "ftype": "Q4_K_M",
                               "rows": [["ffn_dwon\\.weight$", "Q6_K", "typo"], ["\\.weight$", "Q8_0", "rest"]]}))
    with pytest.raises(EdgeError, match="matches no tensor"):
        quantize_cmd(gguf=str(src), recipe=[str(bad)], out=str(tmp_path / "o"), no_eval=True, json=True)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    with pytest.raises(EdgeError, match="unknown recipe"):
        quantize_cmd(gguf=str(src), recipe=["Q4_K_XXL"], out=str(tmp_path / "o"), no_eval=True, json=True)
    k_on_640 = tmp_path / "k.json"
    k_on_640.write_text(json.dumps({"rows": [["attn_q\\.weight$", "Q4_K", "no"], ["\\.weight$", "Q8_0", "rest"]]}))
    with pytest.raises(EdgeError, match="not a multiple of 256"):
        quantize_cmd(gguf=str(src), recipe=[str(k_on_640)], out=str(tmp_path / "o"), no_eval=True, json=True)


def test_custom_recipe_file_is_applied(small, tmp_path):
    from quantize.variants import quantize_cmd

    _, src = small
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"name": "MINE", "ftype": "Q8_0",
                             "rows": [["^token_embd\\.weight$", "Q4_0", "small head"], ["\\.weight$", "Q5_1", "rest"]]}))
    res = quantize_cmd(gguf=str(src), recipe=[str(f)], out=str(tmp_path / "o"), no_eval=True, json=True)
    got = readback(res["variants"][0]["path"])
    assert got.pop("token_embd.weight") == T.Q4_0 and set(got.values()) == {T.Q5_1}
    with pytest.raises(EdgeError, match="already exists"):  # never overwrite without --force
        quantize_cmd(gguf=str(src), recipe=[str(f)], out=str(tmp_path / "o"), no_eval=True, json=True)


# --- importance matrix ---------------------------------------------------------------------------
def test_imatrix_matches_direct_computation():
    import torch

    from quantize.imatrix import compute_imatrix
    from tests.tiny import tiny_model

    model = tiny_model(seed=3)
    chunks = [[2, 100, 2000, 30000, 7, 8, 9], [2, 5, 6]]
    im = compute_imatrix(model, chunks, ["test"], progress=False).values()
    with torch.no_grad():
        # direct: recompute each matrix's input from the layer's own modules, no hooks
        xs = {k: [] for k in ("q", "o", "gate", "down", "head")}
        for c in chunks:
            ids = torch.tensor([c])
            out = model.model(input_ids=ids, output_hidden_states=True)
            layer = model.model.layers[1]
            h_in = out.hidden_states[1]  # input of layer 1
            x = layer.input_layernorm(h_in)
            xs["q"].append(x[0])
            # attention output projection input = attention result before o_proj
            cap = {}
            hnd = layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: cap.setdefault("o", a[0]))
            model.model(input_ids=ids)
            hnd.remove()
            xs["o"].append(cap["o"][0])
            # the MLP input: residual + post-attention norm, then the pre-FFN norm (Gemma 3's block)
            attn = layer.post_attention_layernorm(cap["o"] @ layer.self_attn.o_proj.weight.T)
            ffn_in = layer.pre_feedforward_layernorm(h_in + attn)
            xs["gate"].append(ffn_in[0])
            act = layer.mlp.act_fn(layer.mlp.gate_proj(ffn_in)) * layer.mlp.up_proj(ffn_in)
            xs["down"].append(act[0])
            xs["head"].append(out.last_hidden_state[0])
    def msq(rows):
        x = torch.cat(rows).double()
        return (x * x).mean(0).numpy()
    for key, name in (("q", "blk.1.attn_q.weight"), ("o", "blk.1.attn_output.weight"),
                      ("gate", "blk.1.ffn_gate.weight"), ("down", "blk.1.ffn_down.weight"),
                      ("head", "token_embd.weight")):
        np.testing.assert_allclose(im[name], msq(xs[key]), rtol=1e-4, atol=1e-7, err_msg=name)
    assert np.array_equal(im["blk.1.attn_q.weight"], im["blk.1.attn_k.weight"])  # same input
    assert len(im) == 2 * 7 + 1


def test_imatrix_file_roundtrip_and_use(small, tmp_path):
    from quantize.variants import quantize_variants, read_tensors
    from quantize.imatrix import Imatrix, load_imatrix, save_imatrix

    _, src = small
    tensors, _ = read_tensors(src)
    rng = np.random.default_rng(0)
    im = Imatrix(datasets=["unit"], chunk_count=1, chunk_size=8)
    for t in tensors:
        if t.quantizable:
            im.sums[t.name] = rng.random(t.row).astype(np.float32) * 10
            im.counts[t.name] = 8.0
    save_imatrix(im, tmp_path / "im.gguf")
    back = load_imatrix(tmp_path / "im.gguf")
    assert back.datasets == ["unit"] and set(back.sums) == set(im.sums)
    for n in im.sums:
        np.testing.assert_allclose(back.values()[n], im.sums[n] / 8.0, rtol=1e-6)
    a = quantize_variants(src, [R.get("XL5.3-IQ4_NL")], tmp_path / "a", force=True, progress=False)[0]
    b = quantize_variants(src, [R.get("XL5.3-IQ4_NL")], tmp_path / "b", imatrix=back, force=True, progress=False)[0]
    assert readback(a["path"]) == readback(b["path"])
    assert open(a["path"], "rb").read() != open(b["path"], "rb").read()  # the imatrix changed the rounding


def test_corrupted_or_foreign_imatrix_is_a_clear_error(small, tmp_path):
    from quantize.variants import quantize_cmd, read_tensors
    from quantize.imatrix import Imatrix, save_imatrix

    label, src = small
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(EdgeError, match="not a valid llama.cpp GGUF imatrix"):
        quantize_cmd(gguf=str(src), recipe=["Q4_K_XL"], imatrix=str(junk), out=str(tmp_path / "o"), no_eval=True,
                     json=True)
    tensors, _ = read_tensors(src)
    t = next(t for t in tensors if t.name == "blk.0.attn_q.weight")
    neg = Imatrix(sums={t.name: -np.ones(t.row, np.float32)}, counts={t.name: 1.0}, datasets=["x"])
    save_imatrix(neg, tmp_path / "neg.gguf")
    with pytest.raises(EdgeError, match="negative or non-finite"):
        quantize_cmd(gguf=str(src), recipe=["Q4_K_XL"], imatrix=str(tmp_path / "neg.gguf"),
                     out=str(tmp_path / "o"), no_eval=True, json=True)
    other = 1152 if t.row == 640 else 640
    foreign = Imatrix(sums={t.name: np.ones(other, np.float32)}, counts={t.name: 1.0}, datasets=["x"])
    save_imatrix(foreign, tmp_path / "foreign.gguf")
    with pytest.raises(EdgeError, match="computed for another model"):
        quantize_cmd(gguf=str(src), recipe=["Q4_K_XL"], imatrix=str(tmp_path / "foreign.gguf"),
                     out=str(tmp_path / "o"), no_eval=True, json=True)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.gguf"))


def test_cli_map_and_help():
    from edge.cli import build_parser, load_command

    assert load_command("quantize").__name__ == "quantize_cmd"
    assert load_command("imatrix").__name__ == "imatrix_cmd"
    help_text = build_parser("quantize")._subparsers._group_actions[0].choices["quantize"].format_help()
    assert "--recipe" in help_text and "--imatrix" in help_text and "--calib" in help_text


def test_recipe_tables_have_reasons():
    for r in R.DYNAMIC:
        assert r.rows and all(row.reason for row in r.rows), r.name
        assert "{" not in R.table_markdown(r).split("\n")[0]
    for r in R.STANDARD:
        assert not r.rows and r.expect


def test_fine_tune_of_the_dequantized_base_warns_where_a_recipe_reuses_its_grid(small, tmp_path):
    """The embedded base is a dequantized Q4_K_M: re-quantizing its fine-tune with the same
    types snaps the weights back to the base (measured: docs/BENCHMARKS.md). Q4_K_M is flagged;
    our XL recipes and Q8_0 are not."""
    from edge.models import embedded_gguf
    from quantize.variants import base_grid_types, read_tensors, snap_back_warnings

    _, src = small
    tensors, meta = read_tensors(src)
    assert base_grid_types(meta) == {}                       # not a fine-tune: nothing to protect
    base = tmp_path / "base"
    base.mkdir()
    (base / "edge_source.json").write_text(json.dumps({"gguf": embedded_gguf().name}))
    types = base_grid_types({"adapter": "/runs/x", "base_model": str(base)})
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["blk.5.ffn_down.weight"] == "Q4_K"
    plans = [R.resolve(R.get(n), tensors) for n in ("Q4_K_M", "Q8_0", "Q4_K_XL", "XL5.4-IQ4_NL", "XL6.1-Q4_0")]
    warned = snap_back_warnings(plans, types)
    assert list(warned) == ["Q4_K_M"] and "erases much of the fine-tune" in warned["Q4_K_M"]


def test_eval_text_renders_chats(tmp_path):
    from edge.data import eval_text

    chats = tmp_path / "c.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "2037-06-23"}]}) + "\n")
    assert eval_text(chats) == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n2037-06-23<end_of_turn>\n"
    plain = tmp_path / "t.txt"
    plain.write_text("some text")
    assert eval_text(plain) == "some text"


def test_chat_text_is_scored_on_the_replies_with_their_special_tokens(tmp_path):
    """A rendered chat must reach llama.cpp as the token ids the model was trained on (spelled
    out, `<start_of_turn>` is several ordinary tokens no fine-tune has seen), and only the
    reply tokens are scored, as only they were trained."""
    from llama_cpp import Llama

    from edge import gemma3
    from edge.data import eval_text
    from edge.evaluate import chunk_tokens
    from edge.models import embedded_gguf

    chats = tmp_path / "c.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"When is {d} June 2037?"},
                                                      {"role": "assistant", "content": f"2037-06-{d}"}]}) + "\n"
                             for d in (23, 24)))
    llm = Llama(model_path=str(embedded_gguf()), vocab_only=True, verbose=False)
    try:
        [chat] = chunk_tokens(llm, eval_text(chats), 128, 128)
        [plain] = chunk_tokens(llm, str(eval_text(chats)), 128, 128)
        [first] = chunk_tokens(llm, eval_text(chats), 3, 128)    # stops after 3 scored tokens
        reply = llm.tokenize(b"2037-06-24", add_bos=False, special=False)
    finally:
        llm.close()
    assert chat.tokens[:2] == [gemma3.BOS_ID, gemma3.START_OF_TURN_ID] and chat.tokens.count(gemma3.END_OF_TURN_ID) == 4
    assert gemma3.START_OF_TURN_ID not in plain.tokens and len(plain.tokens) > len(chat.tokens) + 10
    # targets: each reply and its <end_of_turn>, nothing of the user turns or the markers before
    targets = list(chat.targets)
    assert targets[-len(reply) - 1:] == reply + [gemma3.END_OF_TURN_ID]
    assert targets.count(gemma3.END_OF_TURN_ID) == 2 and gemma3.START_OF_TURN_ID not in targets
    assert len(targets) == 2 * (len(reply) + 1)
    assert len(plain.rows) == len(plain.tokens) - 1              # plain text: every position
    assert len(first.rows) == 3 and len(first.tokens) == first.rows[-1] + 2


def test_quantize_help_names_every_standard_type_and_the_recipes_refused_without_an_imatrix():
    import re

    from quantize.variants import quantize_cmd

    doc = " ".join(quantize_cmd.__doc__.split())
    standard = re.search(r"Recipes \(any case\): (.*?) \(llama.cpp's own mixtures\)", doc).group(1).split()
    refused = re.search(r"Refused without an importance matrix \(.*?\): (.*?)\. ", doc).group(1).split(", ")
    assert standard == R.STANDARD_NAMES
    assert set(refused) == {r.name for r in R.RECIPES.values() if r.needs_imatrix}


def test_recipes_made_for_an_imatrix_say_so_without_one():
    from quantize.variants import imatrix_note

    assert imatrix_note([R.RECIPES["Q8_0"], R.RECIPES["XL8.9-Q8_0"], R.RECIPES["Q4_K_M"]]) == ""
    note = imatrix_note([R.get(n) for n in ("Q8_0", "XL6.2-Q8_0", "XL5.4-Q4_0", "XL5.4-IQ4_NL")])
    # XL6.2-Q8_0 is not made without one at all (tests/test_bad_input.py): no note for it
    assert note.startswith("XL5.4-Q4_0, XL5.4-IQ4_NL are made for an importance matrix") and "--calib" in note


@pytest.mark.real
def test_recipes_resolve_on_gemma3_1b_shapes_exported_and_quantized(tmp_path):
    """Gemma 3 1B's real widths (hidden 1152, ffn 6912, 4 heads of 256 = 1024, one KV head,
    the 262,144-token vocabulary), random weights, 2 layers instead of 26: saved as a Hugging Face
    model, exported with edge.export, quantized by llama.cpp; every tensor's type read back
    equals the plan's. No K-quant lands on a 1,152-wide row, our recipes need no fallback, and
    K-quants do land where the rows hold them (attn_output 1024, ffn_down 6912)."""
    from gguf import GGML_QUANT_SIZES

    from edge.export import export_gguf
    from quantize.variants import quantize_variants, read_tensors
    from tests.tiny import save_tiny

    hf = save_tiny(tmp_path / "hf", n_layers=2, hidden=1152, ffn=6912, n_heads=4, n_kv_heads=1, head_dim=256,
                   sliding_window=512)
    ref = tmp_path / "gemma-1b-shape-F16.gguf"
    export_gguf(hf, ref, "f16")
    tensors, _ = read_tensors(ref)
    rows = {t.name: t.row for t in tensors if t.quantizable}
    assert rows["blk.0.attn_q.weight"] == 1152 and rows["blk.0.ffn_down.weight"] == 6912
    assert rows["blk.0.attn_output.weight"] == 1024 and rows["token_embd.weight"] == 1152
    for recipe in R.RECIPES.values():     # every recipe resolves on these shapes, without a silent fallback
        plan = R.resolve(recipe, tensors, imatrix=recipe.needs_imatrix)
        assert not [n for n, t in plan.types.items() if rows[n] % GGML_QUANT_SIZES[t][0]], recipe.name
    recipes = [R.RECIPES[n] for n in ("Q4_K_M", "Q3_K_M", "XL8.9-Q8_0", "XL6.2-Q8_0", "XL5.4-Q4_0")]
    out = tmp_path / "q"
    for recipe in recipes:   # one at a time: each 1B-wide file is 300-600 MB
        [m] = quantize_variants(ref, [recipe], out, imatrix=unit_imatrix(tensors) if recipe.needs_imatrix else None,
                                force=True, progress=False)
        plan = R.resolve(recipe, tensors)
        got = readback(m["path"])
        assert got == plan.types, recipe.name
        k_quants = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS, T.IQ3_S, T.IQ2_S}
        assert not [n for n, t in got.items() if t in k_quants and rows[n] % 256], recipe.name
        if recipe.is_standard:
            assert m["n_fallback"] > 0 and any(t in k_quants for t in got.values()), recipe.name
        else:
            assert m["n_fallback"] == 0, recipe.name
        Path(m["path"]).unlink()


def test_arm_repack_follows_llama_cpp_rules():
    """quantize/repack.py mirrors ggml-cpu/repack.cpp's choice: Q4_0/Q8_0/IQ4_NL 4-row and
    Q4_K/Q5_K/Q6_K 8-row interleaves with dotprod or i8mm; nothing for Q5_0/Q5_1/Q2_K; nothing
    without the features; the tied head counts as the output head."""
    from quantize.repack import features_of, kernel, label, repacked, repacked_bytes

    assert kernel("Q4_0", 1024) == "Q4_0 4x8 (i8mm)" and kernel("Q4_0", 1024, {"dotprod"}) == "Q4_0 4x4 (dotprod)"
    assert kernel("Q4_K", 1028) is None and kernel("Q4_K", 1024, {"dotprod"}) == "Q4_K 8x4 (dotprod)"
    assert kernel("IQ4_NL", 640, {"i8mm"}) == "IQ4_NL 4x4 (dotprod)"          # i8mm cores have dotprod
    assert all(kernel(t, 1024) is None for t in ("Q5_0", "Q5_1", "Q4_1", "Q2_K", "Q3_K", "IQ4_XS", "F16", "F32"))
    assert kernel("Q8_0", 1024, set()) is None
    tensors = [("token_embd.weight", "Q4_0", (640, 262144)), ("blk.0.attn_q.weight", "Q5_1", (640, 1024)),
               ("blk.0.attn_v.weight", "Q8_0", (640, 256)), ("blk.0.attn_norm.weight", "F32", (640,))]
    assert set(repacked(tensors)) == {"token_embd.weight", "blk.0.attn_v.weight"}
    assert label(tensors).startswith("head + 1 of 2 other matrices repacked")
    assert label(tensors, set()).startswith("nothing repacked")
    # x86: Q4_0/Q4_K/IQ4_NL 8x8 with AVX2, Q2_K with AVX-512, never Q8_0/Q5_K/Q6_K; 8-row multiples
    avx512 = features_of(["avx2", "avx512f", "fma"])
    assert kernel("Q4_0", 1024, {"avx2"}) == "Q4_0 8x8 (avx2)" and kernel("Q4_0", 1028, {"avx2"}) is None
    assert kernel("Q2_K", 1024, {"avx2"}) is None and kernel("Q2_K", 1024, avx512) == "Q2_K 8x8 (avx512)"
    assert all(kernel(t, 1024, avx512) is None for t in ("Q8_0", "Q5_K", "Q6_K", "Q4_1", "Q3_K"))
    # an untied token_embd is only the input embedding (GET_ROWS): never repacked
    untied = tensors + [("output.weight", "Q5_1", (640, 262144))]
    assert set(repacked(untied)) == {"blk.0.attn_v.weight"}
    sized = [(n, t, s, 100) for n, t, s in tensors]
    assert repacked_bytes(sized) == 200 and repacked_bytes(sized, set()) == 0


@pytest.mark.parametrize("ftype", ["MOSTLY_Q4_0", "MOSTLY_Q4_K_M", "MOSTLY_Q2_K", "MOSTLY_IQ4_NL", "MOSTLY_Q8_0",
                                   "MOSTLY_Q6_K"])
def test_repack_rule_equals_llama_cpps_logged_buffer_on_this_cpu(tmp_path_factory, ftype):
    """This machine's llama.cpp loads a quantized Gemma 3 file and logs its CPU_REPACK buffer; the
    rule (quantize/repack.py, with this CPU's /proc/cpuinfo flags) predicts it to the logged 0.01 MiB."""
    from edge import llamacpp
    from edge.budget import host_features
    from edge.modelinfo import model_info
    from quantize.llama import quantize_file
    from quantize.repack import features_of, logged_buffers, repacked_bytes

    d = tmp_path_factory.getbasetemp() / "repack_x86"
    d.mkdir(exist_ok=True)
    src = d / "gemma-F32.gguf"
    if not src.exists():
        write_gemma3_gguf(src, hidden=512, ffn=512, n_layers=2, vocab=1024, tokenizer=True)
    dst = tmp_path_factory.mktemp("q") / f"gemma-{ftype}.gguf"
    quantize_file(src, dst, ftype=int(getattr(gguf.LlamaFileType, ftype)))
    with llamacpp.Model(dst) as m:
        logged = logged_buffers(m.load_log)
    predicted = repacked_bytes(model_info(dst).tensors, features_of(host_features())) / (1 << 20)
    assert "CPU_Mapped" in logged
    assert logged.get("CPU_REPACK", 0.0) == pytest.approx(predicted, abs=0.006)


def test_a_recipe_mostly_in_f16_still_gets_its_quantized_tensors(small, tmp_path):
    """llama.cpp applies per-tensor types only under a quantized file type: a recipe whose most
    weights are F16 must not hand it MOSTLY_F16 (that made a whole XL8.7-F16 file F16, 543 MB)."""
    from quantize.variants import quantize_cmd

    _, src = small
    f = tmp_path / "f16.json"
    f.write_text(json.dumps({"name": "MOSTLY16", "rows": [["attn_q\\.weight$", "Q8_0", "q"], ["\\.weight$", "F16", "rest"]]}))
    res = quantize_cmd(gguf=str(src), recipe=[str(f)], out=str(tmp_path / "o"), no_eval=True, json=True)
    got = readback(res["variants"][0]["path"])
    assert {t for n, t in got.items() if "attn_q." in n} == {T.Q8_0} and got["blk.0.ffn_up.weight"] == T.F16
    assert res["variants"][0]["file_type"] == "MOSTLY_Q8_0"
