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


def _tensors() -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape, is_matrix) for every tensor of the tiny model."""
    T = TENSOR_NAMES
    out = [(T[MODEL_TENSOR.TOKEN_EMBD], (VOCAB, WIDTH), True),
           (T[MODEL_TENSOR.OUTPUT_NORM], (WIDTH,), False)]
    for i in range(N_LAYERS):
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
    w = GGUFWriter(str(path), MODEL_ARCH.GEMMA3.name.lower())
    w.add_name(f"tiny-gemma3-{qtype.name}")
    w.add_context_length(32768)
    w.add_embedding_length(WIDTH)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
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
