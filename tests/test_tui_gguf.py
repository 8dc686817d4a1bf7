"""Tiny but well-formed Gemma 3 GGUF files for the TUI tests (written with gguf-py's GGUFWriter).

Two blocks, 64 wide, a 512-token vocabulary: the metadata keys are the ones llama.cpp's
converter writes for Gemma 3, the tensor names come from gguf-py's GEMMA3 table, and the
tensor types vary (F32 / F16 / Q8_0) so sizes and bits per weight differ per variant.
A file takes milliseconds to write.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, MODEL_ARCH, MODEL_TENSOR, TENSOR_NAMES, quants

N_LAYERS, WIDTH, FFN, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2, 64, 128, 512, 2, 1, 32
# The shape of a Gemma 3 4B (public config.json of google/gemma-3-4b-pt) for a sparse "big" file.
BIG = dict(n_layers=34, width=2560, ffn=10240, vocab=262144, heads=8, kv_heads=4, head_dim=256)
# A Gemma 3 1B (google/gemma-3-1b-pt's config.json) with 2 KV heads instead of 1: in F16 (2 GB)
# it fits the simulated Pixel 7 (edge/adbsim/fixtures/pixel_7) at n_ctx 4096, not at 32768.
ONE_B_KV2 = dict(n_layers=26, width=1152, ffn=6912, vocab=262144, heads=4, kv_heads=2, head_dim=256)


def _tensors(n_layers=N_LAYERS, width=WIDTH, ffn=FFN, vocab=VOCAB, heads=HEADS, kv_heads=KV_HEADS,
             head_dim=HEAD_DIM) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape, is_matrix) for every tensor of a Gemma 3 of this shape."""
    T = TENSOR_NAMES
    WIDTH, FFN, HEADS, KV_HEADS, HEAD_DIM = width, ffn, heads, kv_heads, head_dim
    out = [(T[MODEL_TENSOR.TOKEN_EMBD], (vocab, WIDTH), True),
           (T[MODEL_TENSOR.OUTPUT_NORM], (WIDTH,), False)]
    for i in range(n_layers):
        out += [(T[MODEL_TENSOR.ATTN_Q].format(bid=i), (HEADS * HEAD_DIM, WIDTH), True),
                (T[MODEL_TENSOR.ATTN_K].format(bid=i), (KV_HEADS * HEAD_DIM, WIDTH), True),
                (T[MODEL_TENSOR.ATTN_V].format(bid=i), (KV_HEADS * HEAD_DIM, WIDTH), True),
                (T[MODEL_TENSOR.ATTN_OUT].format(bid=i), (WIDTH, HEADS * HEAD_DIM), True),
                (T[MODEL_TENSOR.FFN_GATE].format(bid=i), (FFN, WIDTH), True),
                (T[MODEL_TENSOR.FFN_UP].format(bid=i), (FFN, WIDTH), True),
                (T[MODEL_TENSOR.FFN_DOWN].format(bid=i), (WIDTH, FFN), True),
                (T[MODEL_TENSOR.ATTN_NORM].format(bid=i), (WIDTH,), False),
                (T[MODEL_TENSOR.ATTN_Q_NORM].format(bid=i), (HEAD_DIM,), False),
                (T[MODEL_TENSOR.ATTN_K_NORM].format(bid=i), (HEAD_DIM,), False),
                (T[MODEL_TENSOR.ATTN_POST_NORM].format(bid=i), (WIDTH,), False),
                (T[MODEL_TENSOR.FFN_PRE_NORM].format(bid=i), (WIDTH,), False),
                (T[MODEL_TENSOR.FFN_POST_NORM].format(bid=i), (WIDTH,), False)]
    return out


def write_tiny_gguf(path: Path, qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
                    seed: int = 0) -> Path:
    """Write a tiny Gemma 3 GGUF whose matrices are stored as `qtype` (F32, F16 or Q8_0)."""
    rng = np.random.default_rng(seed)
    w = _writer(path, f"tiny-gemma3-{qtype.name}", qtype, n_layers=N_LAYERS, width=WIDTH, ffn=FFN,
                heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    for name, shape, matrix in _tensors():
        name += ".weight"
        data = rng.standard_normal(shape).astype(np.float32) * 0.02
        if matrix and qtype == GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        elif matrix and qtype == GGMLQuantizationType.Q8_0:
            w.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_sparse_gguf(path: Path, shape: dict = BIG) -> Path:
    """A well-formed F16 GGUF with the tensor table of a big Gemma 3 (default: 4B, about 7.8 GB)
    whose data is a hole: the file has its full size but takes no disk space (sparse). The
    budget reads only the header, so it sees a real 4B-sized model."""
    w = _writer(path, "sparse-gemma3-F16", GGMLQuantizationType.F16, **{k: v for k, v in shape.items() if k != "vocab"})
    total = 0
    for name, dims, matrix in _tensors(**shape):
        qtype = GGMLQuantizationType.F16 if matrix else GGMLQuantizationType.F32
        nbytes = int(np.prod(dims)) * (2 if matrix else 4)
        w.add_tensor_info(name + ".weight", dims, np.float16 if matrix else np.float32, nbytes, raw_dtype=qtype)
        total += GGUFWriter.ggml_pad(nbytes, w.data_alignment)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = GGUFWriter.ggml_pad(path.stat().st_size, w.data_alignment)
    with open(path, "r+b") as f:
        f.truncate(start + total)
    return path


def _writer(path: Path, name: str, qtype: GGMLQuantizationType, *, n_layers, width, ffn, heads, kv_heads,
            head_dim) -> GGUFWriter:
    """A GGUFWriter with the Gemma 3 metadata llama.cpp's converter writes (small vocabulary)."""
    w = GGUFWriter(str(path), MODEL_ARCH.GEMMA3.name.lower())
    w.add_name(name)
    w.add_context_length(32768)
    w.add_embedding_length(width)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(512)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>".encode() for i in range(VOCAB)])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([1] * VOCAB)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_file_type({GGMLQuantizationType.F32: 0, GGMLQuantizationType.F16: 1,
                     GGMLQuantizationType.Q8_0: 7}[qtype])
    return w


def tiny_variants(folder: Path, report: bool = True) -> list[Path]:
    """Three variants (Q8_0, F16, F32) in `folder`, plus a report.json for two of them
    in the format `edge quantize` writes (one entry per variant)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_tiny_gguf(folder / f"tiny-{q.name}.gguf", q, seed=i)
             for i, q in enumerate((GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16,
                                    GGMLQuantizationType.F32))]
    if report:
        entries = [
            {"name": "tiny-Q8_0", "recipe": "Q8_0", "path": str(paths[0]), "size_bytes": paths[0].stat().st_size,
             "bpw": 8.5, "kld_mean": 0.0123, "kld_p99": 0.0876, "top1": 0.981, "ppl": 21.5,
             "tok_s": 812.0, "task_accuracy": 0.75},
            {"name": "tiny-F16", "recipe": "F16", "path": str(paths[1]), "size_bytes": paths[1].stat().st_size,
             "bpw": 16.0, "kld_mean": 0.0004, "kld_p99": 0.0021, "top1": 0.999, "ppl": 21.3,
             "tok_s": 640.0, "task_accuracy": 0.8},
        ]
        (folder / "report.json").write_text(json.dumps({"variants": entries}, indent=2))
    return paths


def test_tiny_gguf_reads_back(tmp_path):
    """The helper's files are real GGUF: gguf-py reads back the Gemma 3 keys and tensor types."""
    from gguf import GGUFReader

    paths = tiny_variants(tmp_path / "v")
    sizes = [p.stat().st_size for p in paths]
    assert sizes == sorted(sizes), "Q8_0 < F16 < F32"
    r = GGUFReader(str(paths[0]))
    assert r.fields["general.architecture"].contents() == "gemma3"
    assert r.fields["gemma3.block_count"].contents() == N_LAYERS
    types = {t.tensor_type for t in r.tensors}
    assert GGMLQuantizationType.Q8_0 in types and GGMLQuantizationType.F32 in types
    assert json.loads((tmp_path / "v" / "report.json").read_text())["variants"][0]["recipe"] == "Q8_0"


def test_sparse_gguf_has_the_size_of_a_4b_and_no_blocks(tmp_path):
    from gguf import GGUFReader

    p = write_sparse_gguf(tmp_path / "big.gguf")
    r = GGUFReader(str(p))            # the reader checks every tensor lies inside the file
    params = sum(int(t.n_elements) for t in r.tensors)
    assert 3.8e9 < params < 4.0e9
    assert p.stat().st_size > 7.5e9
    assert p.stat().st_blocks * 512 < 1 << 20   # sparse: nothing written
